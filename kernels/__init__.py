"""Attention kernels for fp8train: the public API.

`flash_attn_func` is shaped like FlashAttention-3's; the references are plain
PyTorch oracles; `attention_forward`/`attention_backward` are the checked
building blocks for other kernels: (out, lse), and gradients from a given out/lse.
`IMPLS` (KERNELS_IMPL's values) and `FP8_BACKWARDS` (flash_attn_fp8_func's `backward`) are the choices
a caller's configuration may name.
"""
from kernels.flops import attention_flops, tflops_per_s
from kernels.fp8 import BACKWARDS as FP8_BACKWARDS
from kernels.fp8 import flash_attn_fp8_func, fp8_attention_forward, quantize_qkv
from kernels.ops import IMPLS, attention_backward, attention_forward, flash_attn_func
from kernels.quant import FP8QKV, FP8Config, fp8_attention_ref
from kernels.reference import attention_backward_ref, attention_ref

__all__ = [
    "flash_attn_func",
    "attention_forward",
    "attention_backward",
    "attention_ref",
    "attention_backward_ref",
    "attention_flops",
    "tflops_per_s",
    "FP8Config",
    "FP8QKV",
    "quantize_qkv",
    "fp8_attention_forward",
    "flash_attn_fp8_func",
    "fp8_attention_ref",
    "IMPLS",
    "FP8_BACKWARDS",
]
