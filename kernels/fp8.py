"""FP8 attention, public API: the pre-pass, the FP8 forward, and a trainable op.

`flash_attn_fp8_func` quantizes bf16/fp16 q, k, v (block scales, random-sign
Hadamard on Q and K; kernels.quant has the scheme, docs/fp8.md the reasoning),
runs the FP8 forward, and returns out in the input dtype. Its backward is the
BF16 backward kernel (`kernels::flash_attn_bwd`) with the FP8 forward's out and
lse, straight-through the quantizer. `backward` picks the operands it
recomputes the scores from:
- "fp8_operands" (default): the dequantized FP8 Q·M, K·M and V, so that
  exp(S - lse) is the forward's own softmax; dQ and dK are rotated back by Mᵀ.
  The forward keeps its pre-pass's fp8 outputs for it (1 byte an element
  where q, k, v would take 2) and the backward dequantizes them
  (kernels.triton.fp8_dequant).
- "bf16_inputs": the original bf16 q, k, v. Their scores differ from the FP8
  ones by the quantization error, so exp(S - lse) no longer sums to 1 per row;
  once trained logits grow (std ~10), rows sum to 0.1-10 and the gradients
  explode (docs/fp8.md has the measurement). Kept for the comparison.
Both directions are torch.library custom ops, so torch.compile traces through them.

Backends follow KERNELS_IMPL like the BF16 path (kernels.ops.select_impl); auto
picks the Gluon FP8 forward on sm_90 where it measured faster than Triton's
(`fp8_backend`), KERNELS_IMPL=gluon runs it everywhere on sm_90. Under
TRITON_INTERPRET=1 Triton runs on CPU, else the PyTorch reference
(kernels.quant). The pre-pass is the Triton kernel for both GPU forwards.

V^T's key order (kernels.quant.FP8QKV.v_key_order) is the pre-pass's choice:
every forward and the backward read both; with GLUON_FP8_WGMMA_V_ORDER on, a call
that runs the Gluon forward (and quantize_qkv, by default, where the Gluon forward
will read its output) asks the pre-pass for the wgmma order, in which P goes from
the softmax to P·V without register shuffles.

Non-finite inputs are not checked on the host (that would synchronize): a
block holding inf or NaN gets a NaN scale, so every output row that reads it
(its own query block, or any key/value block it attends to) is NaN.
"""
import os

import torch

from kernels.device import is_sm90
# Importing kernels.ops also registers kernels::flash_attn_bwd, the straight-through backward.
from kernels.ops import dispatch_backward, eager_autograd, gluon_kernels, resolve_scale, select_impl
from kernels.quant import (FP8QKV, FP8Config, check_fp8qkv, check_qkv, dequantize, fp8_forward_ref, fp8qkv_shapes,
                           quantize_qkv_ref, rotate)
from kernels.triton.fp8_dequant import dequantize_checked
from kernels.triton.fp8_fwd import fp8_attention_forward_triton
from kernels.triton.fp8_quant import prepare_quantize, quantize_checked
from kernels.triton.rotate import rotate_back

BACKWARDS = ("fp8_operands", "bf16_inputs")
# Where auto runs the Gluon FP8 forward on sm_90, at any length: it beat the Triton FP8 forward 1.15-2.0x at head
# dims 128 and 256 (4k-16k keys) and lost at head dim 64 (370 vs 537 TFLOPs/s) on the H200; on an H100 from 128 to
# 1k keys 1.17-1.75x at 256, 0.97-1.86x at 128 (one cell below 1.0), 0.90-1.09x at 64 (docs/tuning-gluon.md B12).
GLUON_FP8_AUTO_HEAD_DIMS = (128, 256)
# Whether flash_attn_fp8_func's pre-pass stores V^T in wgmma key order when the Gluon FP8 forward runs (P's
# accumulator registers are then PV's A operand as they are: no SHFL/SEL/PRMT per key block). Alone it tied the
# natural order on the H200; with the consumer trims of the FP8 tiles it is the measured fastest (docs/tuning-gluon.md
# entries 17-18).
GLUON_FP8_WGMMA_V_ORDER = True


def fp8_backend(device: torch.device, head_dim: int | None = None) -> str:
    """Which FP8 forward a call on `device` runs: "gluon", "triton" or "reference" (KERNELS_IMPL, as for BF16).

    With auto the head dim (when given) picks Gluon on sm_90 (GLUON_FP8_AUTO_HEAD_DIMS).
    """
    impl = select_impl(device)
    if os.environ.get("KERNELS_IMPL", "auto") == "auto" and impl != "reference":
        gluon_wins = head_dim in GLUON_FP8_AUTO_HEAD_DIMS
        return "gluon" if gluon_wins and is_sm90(device) and gluon_kernels() is not None else "triton"
    return impl


def _check_config(config) -> FP8Config:
    if not isinstance(config, FP8Config):
        raise TypeError(f"config must be a kernels.FP8Config, got {type(config).__name__}")
    return config


def quantize_qkv(q, k, v, config: FP8Config = FP8Config(), v_key_order: str = "auto") -> FP8QKV:
    """The FP8 pre-pass: bf16/fp16 (batch, seqlen, heads, headdim) q, k, v -> FP8QKV (layouts in kernels.quant).

    v_key_order: the order of V^T's keys, "natural", "wgmma", or "auto": the order that the forward
    fp8_attention_forward will pick for these shapes reads fastest (what flash_attn_fp8_func uses)."""
    config = _check_config(config)
    check_qkv(q, k, v, config)
    if v_key_order == "auto":
        v_key_order = _fast_v_key_order(fp8_backend(q.device, q.shape[-1]))
    return _quantize_on(select_impl(q.device), q, k, v, config, v_key_order)


def _fast_v_key_order(impl: str) -> str:
    return "wgmma" if impl == "gluon" and GLUON_FP8_WGMMA_V_ORDER else "natural"


def _quantize_on(impl: str, q, k, v, config: FP8Config, v_key_order: str) -> FP8QKV:
    """The pre-pass on checked arguments: the PyTorch reference for the reference backend, else the Triton kernel
    (the GPU forwards' and the interpreter's)."""
    if impl == "reference":
        return quantize_qkv_ref(q, k, v, config, v_key_order)
    return quantize_checked(q, k, v, config, v_key_order=v_key_order)


def fp8_attention_forward(qkv: FP8QKV, softmax_scale=None, causal=False, out_dtype=torch.bfloat16):
    """The FP8 forward alone, on pre-pass outputs: (out (batch, seqlen_q, nheads, headdim) in out_dtype,
    lse (batch, nheads, seqlen_q) fp32 natural log, +inf for rows that see no key)."""
    if not isinstance(qkv, FP8QKV):
        raise TypeError(f"qkv must be a kernels.FP8QKV (from quantize_qkv), got {type(qkv).__name__}")
    check_fp8qkv(qkv)
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    scale = resolve_scale(softmax_scale, qkv.q.shape[-1])
    return _forward_on(fp8_backend(qkv.q.device, qkv.q.shape[-1]), qkv, scale, bool(causal), out_dtype)


def _forward_on(impl: str, qkv: FP8QKV, scale: float, causal: bool, out_dtype):
    """The FP8 forward on checked arguments, by the backend fp8_backend chose."""
    if impl == "reference":
        out, lse = fp8_forward_ref(qkv, scale, causal)
        return out.to(out_dtype), lse
    if impl == "gluon":
        return gluon_kernels().fp8_attention_forward(qkv, scale, causal, out_dtype)
    return fp8_attention_forward_triton(qkv, scale, causal, out_dtype)


def _fp8_fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, causal: bool,
                  block_m: int, block_n: int, hadamard: bool, granularity: str, fmt: str, seed: int, v_key_order: str,
                  deterministic: bool, backward: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse) and the pre-pass's outputs (q8, k8, v_t, q_scale, k_scale, v_scale: kernels.quant.FP8QKV), which
    the backward="fp8_operands" backward dequantizes: 1 byte an element kept for it instead of q, k, v's 2."""
    # FP8Config travels as its fields (custom op schemas take primitives); `deterministic` and `backward`
    # are for the backward.
    config = FP8Config(block_m, block_n, hadamard, granularity, fmt, seed)
    impl = fp8_backend(q.device, q.shape[-1])
    if impl == "gluon":
        # Both launches prepared first (every check passed before either), then made back to back: the forward's
        # programmatic dependent launch is queued while the pre-pass runs whatever the host's speed. Its host work
        # (30-100 µs on the H200's hosts) used to fall between them, under the pre-pass's ~80 µs of GPU time; the
        # hosts measured hid it either way (docs/tuning-gluon.md, entry 45).
        x, launch_prepass = prepare_quantize(q, k, v, config, v_key_order=v_key_order)
        out, lse, launch_forward = gluon_kernels().prepare_fp8_attention_forward(x, softmax_scale, causal, q.dtype)
        launch_prepass()
        launch_forward()
    else:
        x = _quantize_on(impl, q, k, v, config, v_key_order)
        out, lse = _forward_on(impl, x, softmax_scale, causal, q.dtype)
    return out, lse, x.q, x.k, x.v_t, x.q_scale, x.k_scale, x.v_scale


_flash_attn_fp8_fwd = torch.library.custom_op("kernels::flash_attn_fp8_fwd", mutates_args=())(_fp8_fwd_impl)


@_flash_attn_fp8_fwd.register_fake
def _(q, k, v, softmax_scale, causal, block_m, block_n, hadamard, granularity, fmt, seed, v_key_order, deterministic,
      backward):
    config = FP8Config(block_m, block_n, hadamard, granularity, fmt, seed)
    shapes = fp8qkv_shapes(q.shape, k.shape, config)
    batch, seqlen_q, nheads, _ = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32),
            q.new_empty(q.shape, dtype=config.dtype), k.new_empty(k.shape, dtype=config.dtype),
            q.new_empty(shapes["v_t"], dtype=config.dtype),
            *(q.new_empty(shapes[name], dtype=torch.float32) for name in ("q_scale", "k_scale", "v_scale")))


def _fp8_bwd_impl(dout: torch.Tensor, q8: torch.Tensor, k8: torch.Tensor, v_t: torch.Tensor, q_scale: torch.Tensor,
                  k_scale: torch.Tensor, v_scale: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  softmax_scale: float, causal: bool, block_m: int, block_n: int, hadamard: bool, granularity: str,
                  fmt: str, seed: int, v_key_order: str,
                  deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """backward="fp8_operands": the BF16 backward on the forward's dequantized Q·M, K·M, V (from its saved pre-pass
    outputs), so that exp(S - lse) is the forward's own softmax; dQ·Mᵀ, dK·Mᵀ map back to q, k."""
    x = FP8QKV(q8, k8, v_t, q_scale, k_scale, v_scale, FP8Config(block_m, block_n, hadamard, granularity, fmt, seed),
               v_key_order)
    on_kernels = select_impl(q8.device) != "reference"
    if on_kernels:
        operands = dequantize_checked(x, out.dtype)
    else:
        operands = (t.to(out.dtype) for t in dequantize(x))
    # With the rotation still to come, dQ' stays in fp32 where the backend accumulates it: one rounding, after it.
    dq, dk, dv = dispatch_backward(dout, *operands, out, lse, softmax_scale, causal, deterministic,
                                   dq_float32=hadamard)
    if hadamard:  # Q' = Q·M, so dQ = dQ'·Mᵀ (likewise K), straight-through the rounding
        if on_kernels:
            dq, dk = rotate_back(dq, dk, seed, out.dtype)
        else:
            dq, dk = (rotate(g, seed, inverse=True).to(out.dtype) for g in (dq, dk))
    return dq, dk, dv


_flash_attn_fp8_bwd = torch.library.custom_op("kernels::flash_attn_fp8_bwd", mutates_args=())(_fp8_bwd_impl)


@_flash_attn_fp8_bwd.register_fake
def _(dout, q8, k8, v_t, q_scale, k_scale, v_scale, out, lse, softmax_scale, causal, block_m, block_n, hadamard,
      granularity, fmt, seed, v_key_order, deterministic):
    return (torch.empty_like(out, memory_format=torch.contiguous_format),
            *(k8.new_empty(k8.shape, dtype=out.dtype) for _ in range(2)))


def _setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal, *fields, v_key_order, deterministic, backward = inputs
    out, lse, *prepassed = output
    ctx.mark_non_differentiable(lse, *prepassed)
    # What the backward recomputes the scores from: the fp8 operands (half of q, k, v's bytes), or q, k, v.
    ctx.save_for_backward(*(prepassed if backward == "fp8_operands" else (q, k, v)), out, lse)
    ctx.softmax_scale, ctx.causal, ctx.deterministic, ctx.backward = softmax_scale, causal, deterministic, backward
    ctx.fields, ctx.v_key_order = fields, v_key_order


def _backward_through(bf16_bwd, fp8_bwd):
    """The autograd backward, running the backward custom ops (traced by torch.compile) or, in eager calls,
    their implementations (kernels.ops.eager_autograd)."""
    def backward(ctx, dout, *_):  # no gradient flows into lse or the pre-pass's outputs
        *operands, out, lse = ctx.saved_tensors
        if ctx.backward == "fp8_operands":
            dq, dk, dv = fp8_bwd(dout, *operands, out, lse, ctx.softmax_scale, ctx.causal, *ctx.fields,
                                 ctx.v_key_order, ctx.deterministic)
        else:
            dq, dk, dv = bf16_bwd(dout, *operands, out, lse, ctx.softmax_scale, ctx.causal, ctx.deterministic)
        return dq, dk, dv, *([None] * 11)

    return backward


_flash_attn_fp8 = eager_autograd(_flash_attn_fp8_fwd, _fp8_fwd_impl, _setup_context,
                                 _backward_through(torch.ops.kernels.flash_attn_bwd, _flash_attn_fp8_bwd),
                                 _backward_through(dispatch_backward, _fp8_bwd_impl))


def flash_attn_fp8_func(q, k, v, softmax_scale=None, causal=False, *, config: FP8Config = FP8Config(),
                        return_attn_probs=False, deterministic=False, backward="fp8_operands"):
    """FP8 attention with `flash_attn_func`'s conventions, differentiable (straight-through backward).

    q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_kv, headdim),
    nheads_kv dividing nheads; bfloat16 or float16; headdim 64, 128 or 256.
    config: FP8Config (block sizes, Hadamard, scale granularity, fp8 format, sign seed).
    deterministic: bitwise-reproducible backward.
    backward: "fp8_operands" (default) or "bf16_inputs": the scores the backward recomputes (module doc).
    Returns out (q's shape and dtype), or (out, softmax_lse) when return_attn_probs.
    """
    config = _check_config(config)
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    check_qkv(q, k, v, config)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    # One backend choice for both halves: the pre-pass lays V^T out for the forward that will read it.
    v_key_order = _fast_v_key_order(fp8_backend(q.device, q.shape[-1]))
    out, lse, *_ = _flash_attn_fp8(q, k, v, scale, bool(causal), config.block_m, config.block_n, config.hadamard,
                                   config.granularity, config.fmt, config.seed, v_key_order, bool(deterministic),
                                   backward)
    return (out, lse) if return_attn_probs else out
