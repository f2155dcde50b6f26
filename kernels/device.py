"""What the kernels ask of a device on every call, asked of CUDA once per device."""
import functools

import torch


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)  # a few µs a call


def is_sm90(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) == (9, 0)


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors: the size of a persistent grid."""
    return torch.cuda.get_device_properties(device).multi_processor_count
