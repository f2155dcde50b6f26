"""What the kernels ask of a device on every call, asked of CUDA once per device."""
import functools

import torch


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability (torch.cuda.get_device_capability costs a few µs a call)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def is_sm90(device: torch.device) -> bool:
    return device.type == "cuda" and capability(device) == (9, 0)
