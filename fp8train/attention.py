"""Attention backends: the one interface through which the model runs attention.

A backend is a callable `(q, k, v, causal) -> out` on (batch, seq, heads, head_dim)
tensors (k and v may have fewer heads, GQA), returning q's layout and dtype. The
`attention` config group picks one by `name`; its `options` go to the backend's factory
as keywords. Adding a backend is a decorated factory:

    @register("mine")
    def _mine(block_size: int = 128):
        return lambda q, k, v, causal: my_kernel(q, k, v, causal=causal, block_size=block_size)
"""
import os
from typing import Callable, Dict, Mapping

import torch
import torch.nn.functional as F

from fp8train.errors import ConfigError

Backend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]

_FACTORIES: Dict[str, Callable[..., Backend]] = {}

# Backends over our kernels take bf16/fp16 only: precision=auto picks bf16 autocast for them on CPU too.
LOW_PRECISION_ONLY = frozenset({"flash", "fp8"})


def uses_bf16(precision: str, device_type: str, names) -> bool:
    """Whether attention backends `names` run under bf16 autocast at trainer.precision on this device type:
    bf16, auto on CUDA, and wherever one of them runs only bf16/fp16 kernels."""
    return (precision == "bf16" or (precision == "auto" and device_type == "cuda")
            or any(name in LOW_PRECISION_ONLY for name in names))


def register(name: str):
    """Decorator adding a backend factory under `name`."""

    def add(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        if name in _FACTORIES:
            raise ValueError(f"attention backend {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return add


def names() -> list[str]:
    return sorted(_FACTORIES)


def build(name: str, options: Mapping) -> Backend:
    if name not in _FACTORIES:
        raise ConfigError("attention.name", f"unknown backend {name!r}; registered: {', '.join(names())}")
    try:
        return _FACTORIES[name](**dict(options))
    except TypeError as e:  # an option the factory does not take
        raise ConfigError("attention.options", f"backend {name!r}: {e}") from None


def describe(cfg) -> str:
    """A backend config as one phrase, options included (attention=triton is `flash` with impl=triton)."""
    options = ", ".join(f"{k}={v}" for k, v in cfg.options.items())
    return f"{cfg.name} ({options})" if options else cfg.name


def run_once(name: str, backend: Backend, n_head: int, n_kv_head: int, head_dim: int, seq_len: int, device,
             dtype) -> None:
    """Run `backend` once, without gradients, on random input of the model's attention shape, so that what it
    cannot take (a head dim, the device, a forced kernel choice) is a ConfigError before data, model and
    loggers are built rather than a traceback at the first step."""
    q = torch.randn(1, seq_len, n_head, head_dim, device=device, dtype=dtype)
    kv = torch.randn(1, seq_len, n_kv_head, head_dim, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            backend(q, kv, kv, True)
    except (TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError("attention", f"{name} cannot run this model's attention (batch 1, seq_len {seq_len}, "
                                       f"{n_head} heads of dim {head_dim} over {n_kv_head} key/value heads, "
                                       f"{dtype} on {device}): "
                                       f"{type(e).__name__}: {first}") from None


@register("reference")
def _reference() -> Backend:
    from kernels import attention_ref

    # float32 math whatever the input dtype: the CPU oracle, differentiable through autograd.
    def reference(q, k, v, causal):
        out, _ = attention_ref(q, k, v, causal=causal, dtype=torch.float32)
        return out.to(q.dtype)

    return reference


@register("sdpa")
def _sdpa() -> Backend:
    # torch aligns the causal mask top-left, FlashAttention bottom-right: the same for self-attention.
    def sdpa(q, k, v, causal):
        gqa = k.shape[2] != q.shape[2]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=gqa
        )
        return out.transpose(1, 2)

    return sdpa


def _pin_kernel_impl(impl: str) -> None:
    # kernels reads KERNELS_IMPL on every call; a run has one backend, so the config value pins it process-wide.
    from kernels import IMPLS

    if impl not in IMPLS:
        raise ConfigError("attention.options.impl", f"must be one of {IMPLS}, got {impl!r}")
    os.environ["KERNELS_IMPL"] = impl


@register("flash")
def _flash(impl: str = "auto", deterministic: bool = False) -> Backend:
    from kernels import flash_attn_func

    _pin_kernel_impl(impl)

    def flash(q, k, v, causal):
        return flash_attn_func(q, k, v, causal=causal, deterministic=deterministic)

    return flash


@register("fp8")
def _fp8(impl: str = "auto", block_m: int = 128, block_n: int = 128, hadamard: bool = True,
         granularity: str = "block", fmt: str = "e4m3", seed: int = 0, backward: str = "fp8_operands") -> Backend:
    from kernels import FP8Config, flash_attn_fp8_func

    _pin_kernel_impl(impl)
    try:
        config = FP8Config(block_m=block_m, block_n=block_n, hadamard=hadamard,
                           granularity=granularity, fmt=fmt, seed=seed)
    except ValueError as e:
        raise ConfigError("attention.options", str(e)) from None

    from kernels import FP8_BACKWARDS

    if backward not in FP8_BACKWARDS:
        raise ConfigError("attention.options.backward", f"must be one of {FP8_BACKWARDS}, got {backward!r}")

    # FP8 forward, BF16 backward kernel straight-through the quantizer (kernels/fp8.py, docs/fp8.md).
    def fp8(q, k, v, causal):
        return flash_attn_fp8_func(q, k, v, causal=causal, config=config, backward=backward)

    return fp8
