"""Portable FlashAttention kernels in Triton (any recent NVIDIA GPU; CPU through the Triton interpreter)."""
from kernels.triton import interpreter_fix  # noqa: F401  (must run before any interpreted launch)
from kernels.triton.bwd import attention_backward_triton
from kernels.triton.fwd import attention_forward_triton

__all__ = ["attention_forward_triton", "attention_backward_triton"]
