"""What the kernels ask of a device on every call, asked of CUDA once per device."""
import functools

import torch


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)  # a few µs a call


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def is_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and _capability(_index(device)) == (9, 0)


def takes_pdl(device: torch.device) -> bool:
    """Whether kernels on this device can be programmatic dependent launches (griddepcontrol: sm_90 and later)."""
    return device.type == "cuda" and _capability(_index(device)) >= (9, 0)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device: the size of a persistent grid."""
    return _sm_count(_index(device))
