"""The public attention op: input checks, backend dispatch, torch.library custom ops and autograd.

Backends, chosen per call by the KERNELS_IMPL environment variable:
- `auto` (default): on sm_90 the Gluon forward and backward at the head dims
  where they measured faster than Triton (GLUON_AUTO_HEAD_DIMS, any length),
  Triton elsewhere on CUDA and on CPU under TRITON_INTERPRET=1, the PyTorch
  reference otherwise. The backward is Triton's whenever `deterministic` is
  asked (Gluon adds dQ with atomics).
- `gluon`, `triton`, `reference`: forced; an unavailable choice is an error.
  Forced `gluon` runs the backward where Gluon has one, as `auto` does.

`attention_forward` and `attention_backward` are the checked building blocks
other kernels build on: (out, lse) and gradients from a given out/lse. Inside the
package, `dispatch_forward` / `dispatch_backward` do the same on inputs already
checked (the FP8 path calls `dispatch_backward` with its own out/lse and operands,
straight-through its quantizer). `flash_attn_func` wraps them in the custom ops
`kernels::flash_attn_fwd` / `kernels::flash_attn_bwd`, so that torch.compile
traces through without a graph break; eager calls take the same autograd without
the custom op's dispatch (`eager_autograd`).
"""
import functools
import math
import os

import torch

from kernels.checks import check_inputs, tma_ready
from kernels.device import is_sm90
from kernels.reference import attention_backward_ref, attention_ref
from kernels.triton import attention_backward_triton, attention_forward_triton
from kernels.triton.fwd import interpreting

IMPLS = ("auto", "gluon", "triton", "reference")
# Head dims at which `auto` runs the Gluon forward on sm_90, at any length: it beat our Triton forward on the H200
# at all 30 shapes from 1k to 16k keys, and on an H100 from 128 to 1k keys by 1.06-1.89x, causal or not (the same
# for the Gluon backward there, 1.08-1.56x: docs/tuning-gluon.md B12).
GLUON_AUTO_HEAD_DIMS = (64, 128, 256)


@functools.cache
def gluon_kernels():
    """The Gluon kernels module, or None where it cannot be imported (no Gluon kernels yet, or no sm_90 support)."""
    try:
        import kernels.gluon as gluon
    except ImportError:
        return None
    return gluon if hasattr(gluon, "attention_forward") else None


def select_impl(device: torch.device, head_dim: int | None = None) -> str:
    """The backend a call on `device` runs on, from KERNELS_IMPL (read on every call).

    With auto, the head dim (when given) picks between Gluon and Triton on sm_90 (GLUON_AUTO_HEAD_DIMS).
    """
    impl = os.environ.get("KERNELS_IMPL", "auto")
    if impl not in IMPLS:
        raise ValueError(f"KERNELS_IMPL must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        if device.type == "cuda":
            gluon_wins = head_dim in GLUON_AUTO_HEAD_DIMS
            return "gluon" if gluon_wins and is_sm90(device) and gluon_kernels() is not None else "triton"
        return "triton" if interpreting() else "reference"
    if impl == "gluon" and not (is_sm90(device) and gluon_kernels() is not None):
        raise RuntimeError("KERNELS_IMPL=gluon needs an sm_90 GPU and an importable kernels.gluon "
                           f"(device {device}, kernels.gluon {'found' if gluon_kernels() else 'unavailable'})")
    if impl == "triton" and device.type != "cuda" and not interpreting():
        raise RuntimeError("KERNELS_IMPL=triton on CPU needs TRITON_INTERPRET=1 set before `kernels` is imported")
    return impl


def select_backward_impl(q: torch.Tensor, deterministic: bool) -> str:
    """The backend of a backward on q's device: Gluon on sm_90 where it has tiles for the head dim and atomics
    are allowed (not deterministic), unless KERNELS_IMPL forces triton or reference."""
    forced = os.environ.get("KERNELS_IMPL", "auto")
    impl = select_impl(q.device)
    if impl == "reference" or forced == "triton":
        return impl
    gluon = gluon_kernels() if is_sm90(q.device) else None
    gluon_applies = gluon is not None and not deterministic and q.shape[-1] in gluon.BWD_TILES
    return "gluon" if gluon_applies else "triton"


def resolve_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    scale = float(softmax_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax_scale must be a positive finite number, got {softmax_scale}")
    return scale


def attention_forward(q, k, v, softmax_scale=None, causal=False):
    """(out, lse) of attention: out as q, lse (batch, nheads, seqlen_q) float32, natural log; inputs as
    `flash_attn_func` takes them. Not differentiable (see `flash_attn_func`)."""
    check_inputs(q, k, v)
    return dispatch_forward(q, k, v, resolve_scale(softmax_scale, q.shape[-1]), bool(causal))


def attention_backward(dout, q, k, v, out, lse, softmax_scale=None, causal=False, deterministic=False):
    """(dq, dk, dv) from the given out and lse (not assumed to come from `attention_forward`); q, k, v as
    `flash_attn_func` takes them, dout and out q's shape, dtype and device, lse (batch, nheads, seqlen_q)
    float32 natural log. `deterministic` gives bitwise-reproducible gradients (no atomics, fixed sum order)."""
    check_inputs(q, k, v)
    for name, t in (("dout", dout), ("out", out)):
        if not isinstance(t, torch.Tensor) or t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            what = (tuple(t.shape), t.dtype, str(t.device)) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have q's shape, dtype and device {(tuple(q.shape), q.dtype, str(q.device))}"
                             f", got {what}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (headdim), got strides {t.stride()}")
    want = (q.shape[0], q.shape[2], q.shape[1])
    if not isinstance(lse, torch.Tensor) or lse.shape != want or lse.dtype != torch.float32 or lse.device != q.device:
        what = (tuple(lse.shape), lse.dtype, str(lse.device)) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"lse must be float32 (batch, nheads, seqlen_q) = {want} on {q.device}, got {what}")
    return dispatch_backward(dout, q, k, v, out, lse, resolve_scale(softmax_scale, q.shape[-1]), bool(causal),
                             bool(deterministic))


def dispatch_forward(q, k, v, softmax_scale: float, causal: bool):
    """`attention_forward` on checked inputs and a resolved scale."""
    impl = select_impl(q.device, q.shape[-1])
    if impl == "reference":
        out, lse = attention_ref(q, k, v, causal, softmax_scale, dtype=torch.float32)
    elif impl == "gluon":
        out, lse = gluon_kernels().attention_forward(*(tma_ready(t) for t in (q, k, v)), softmax_scale, causal)
    else:
        out, lse = attention_forward_triton(*(tma_ready(t) for t in (q, k, v)), softmax_scale, causal)
    # Contiguous outputs whatever the backend: the fake implementation promises these layouts.
    return out.to(q.dtype).contiguous(), lse.contiguous()


def dispatch_backward(dout, q, k, v, out, lse, softmax_scale: float, causal: bool, deterministic: bool,
                      dq_float32: bool = False):
    """`attention_backward` on checked inputs and a resolved scale. dq_float32: dq in float32 where the backend
    accumulates it so (Gluon, the reference), unrounded; the Triton backend's is in q's dtype."""
    impl = select_backward_impl(q, deterministic)
    if impl == "reference":
        grads = attention_backward_ref(dout, q, k, v, out, lse, causal, softmax_scale, dtype=torch.float32)
    else:
        args = (*(tma_ready(t) for t in (dout, q, k, v, out)), lse.float().contiguous(), softmax_scale, causal,
                deterministic)
        if impl == "gluon":
            grads = gluon_kernels().attention_backward(*args, dq_float32=dq_float32)
        else:
            grads = attention_backward_triton(*args)
    dq, dk, dv = grads
    return (dq if dq_float32 else dq.to(q.dtype)).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


def _fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool,
              deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # `deterministic` only travels to the backward through the autograd context.
    return dispatch_forward(q, k, v, softmax_scale, causal)


_flash_attn_fwd = torch.library.custom_op("kernels::flash_attn_fwd", mutates_args=())(_fwd_impl)


@_flash_attn_fwd.register_fake
def _(q, k, v, softmax_scale, causal, deterministic):
    batch, seqlen_q, nheads, _ = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32))


@torch.library.custom_op("kernels::flash_attn_bwd", mutates_args=())
def _flash_attn_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, softmax_scale: float, causal: bool,
                    deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dispatch_backward(dout, q, k, v, out, lse, softmax_scale, causal, deterministic)


@_flash_attn_bwd.register_fake
def _(dout, q, k, v, out, lse, softmax_scale, causal, deterministic):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal, deterministic = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)  # FlashAttention returns the LSE for inspection only
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.softmax_scale, ctx.causal, ctx.deterministic = softmax_scale, causal, deterministic


def _backward_through(bwd):
    """The autograd backward, running `bwd`: the backward custom op (traced by torch.compile) or, in eager
    calls, its implementation."""
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = bwd(dout, q, k, v, out, lse, ctx.softmax_scale, ctx.causal, ctx.deterministic)
        return dq, dk, dv, None, None, None

    return backward


def eager_autograd(op, impl, setup_context, backward, eager_backward):
    """`op` with its autograd, where eager calls on plain CPU/CUDA tensors skip the custom ops' dispatch: an
    autograd.Function around `impl` whose backward is `eager_backward` (the same arithmetic as `backward`,
    without the backward custom op's dispatch). torch.compile, fake and meta tensors and tensor subclasses still
    go through `op`: no graph break, shapes without running."""
    op.register_autograd(backward, setup_context=setup_context)

    # The ctx-taking forward of old: with a separate setup_context, Function.apply binds its arguments
    # through inspect.signature on every call (30-45 µs a call with the FP8 op's 13 arguments, on our CPU).
    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup_context(ctx, inputs, output)
        return output

    function = type(f"{impl.__name__}_eager", (torch.autograd.Function, ),
                    dict(forward=staticmethod(forward), backward=staticmethod(eager_backward)))

    def call(q, *inputs):
        if torch.compiler.is_compiling() or type(q) is not torch.Tensor or q.device.type not in ("cpu", "cuda"):
            return op(q, *inputs)
        if not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, *inputs))):
            return impl(q, *inputs)  # nothing to differentiate: no autograd node (Function.apply costs ~10 µs)
        return function.apply(q, *inputs)

    return call


_flash_attn = eager_autograd(_flash_attn_fwd, _fwd_impl, _setup_context, _backward_through(_flash_attn_bwd),
                             _backward_through(dispatch_backward))


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, *, deterministic=False, return_attn_probs=False):
    """FlashAttention-3's `flash_attn_interface.flash_attn_func`, for the arguments it supports.

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim)
    with nheads_kv dividing nheads (GQA/MQA: query head i uses kv head i // (nheads // nheads_kv)).
    bfloat16 or float16, one device, headdim contiguous, headdim a multiple of 8 up to 256.
    softmax_scale defaults to 1/sqrt(headdim). causal masks are aligned bottom-right:
    query i sees key j iff j <= i + seqlen_k - seqlen_q; a row that sees no key outputs 0.
    deterministic: bitwise-reproducible backward (no atomics).
    The arguments after `causal` are keyword-only: FA3 puts other arguments
    (qv, descales, window_size, ...) at those positions.

    Returns out (q's shape and dtype), or (out, softmax_lse) when return_attn_probs,
    softmax_lse being (batch, nheads, seqlen_q) float32 natural-log (+inf for rows that see no key).
    """
    check_inputs(q, k, v)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    out, lse = _flash_attn(q, k, v, scale, bool(causal), bool(deterministic))
    return (out, lse) if return_attn_probs else out
