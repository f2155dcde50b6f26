"""The pre-pass's outputs dequantized: (Q·M, K·M, V) as the FP8 forward computed with them, the FP8 op's backward
operands.

The FP8 op saves the pre-pass's fp8 tensors and scales for its backward (half the bytes of the bf16 q, k, v it
saved before) and this kernel turns them back: each fp8 value times its block's scale in fp32, rounded once to the
output dtype, bit for bit `kernels.quant.dequantize` cast to that dtype. One launch for the three tensors; V^T
(batch, heads, headdim, padded seqlen, keys in natural or wgmma order) comes back as V (batch, seqlen, heads,
headdim). It reads 1 byte and writes 2 per element and does no arithmetic worth the name: a streaming kernel.
"""
import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.launch import Launcher
from kernels.quant import FP8QKV
from kernels.triton.fp8_quant import cast_rne, from_wgmma_keys

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Values a program dequantizes (rows x head dim): 64 a thread at 4 warps, 128 bytes of stores each.
VALUES_PER_PROGRAM = 8192
NUM_WARPS = 4


@triton.jit
def _dequantize_rows(X, Scale, Out, item, seqlen, x_seqlen, nheads, chunks, nblocks, BLOCK: tl.constexpr,
                     HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, TRANSPOSED: tl.constexpr, WGMMA_KEYS: tl.constexpr,
                     INTERPRET: tl.constexpr):
    """Rows [c·ROWS, (c+1)·ROWS) of one (batch, head), item = (batch·nheads + head)·chunks + c, into the
    (batch, seqlen, nheads, HEAD_DIM) Out. X: the same layout, or if TRANSPOSED (batch, nheads, HEAD_DIM, x_seqlen)
    with the keys permuted inside each wgmma group if WGMMA_KEYS (ROWS is a multiple of the group, so the rows
    read are the rows written). Row r's scale is Scale[batch, head, r // BLOCK]."""
    bh = item // chunks
    b = bh // nheads
    rows = (item % chunks) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, HEAD_DIM)
    in_seq = rows < seqlen
    if TRANSPOSED:
        offs_t = (bh * HEAD_DIM + cols[:, None]).to(tl.int64) * x_seqlen + rows[None, :]
        x = tl.load(X + offs_t, mask=rows[None, :] < x_seqlen, other=0.0)
        if WGMMA_KEYS:
            x = from_wgmma_keys(x, HEAD_DIM, ROWS)
        x = x.T
    scale = tl.load(Scale + bh * nblocks + rows // BLOCK, mask=in_seq, other=1.0)
    offs = ((b * seqlen + rows[:, None]).to(tl.int64) * nheads + bh % nheads) * HEAD_DIM + cols[None, :]
    if not TRANSPOSED:
        x = tl.load(X + offs, mask=in_seq[:, None], other=0.0)
    y = cast_rne(x.to(tl.float32) * scale[:, None], Out.dtype.element_ty, INTERPRET)
    tl.store(Out + offs, y, mask=in_seq[:, None])


@triton.jit
def _dequantize_kernel(Q8, K8, VT, QS, KS, VS, Q, K, V, seqlen_q, seqlen_k, vt_seqlen, nheads, nheads_kv, chunks_q,
                       chunks_k, nblocks_q, nblocks_k, items_q, items_k, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, WGMMA_KEYS: tl.constexpr,
                       INTERPRET: tl.constexpr):
    """Programs [0, items_q) dequantize Q's chunks, the next items_k K's, the last items_k V's."""
    pid = tl.program_id(0)
    if pid < items_q:
        _dequantize_rows(Q8, QS, Q, pid, seqlen_q, seqlen_q, nheads, chunks_q, nblocks_q, BLOCK_M, HEAD_DIM, ROWS,
                         False, False, INTERPRET)
    elif pid < items_q + items_k:
        _dequantize_rows(K8, KS, K, pid - items_q, seqlen_k, seqlen_k, nheads_kv, chunks_k, nblocks_k, BLOCK_N,
                         HEAD_DIM, ROWS, False, False, INTERPRET)
    else:
        _dequantize_rows(VT, VS, V, pid - items_q - items_k, seqlen_k, vt_seqlen, nheads_kv, chunks_k, nblocks_k,
                         BLOCK_N, HEAD_DIM, ROWS, True, WGMMA_KEYS, INTERPRET)


launch_dequantize = Launcher(_dequantize_kernel)


@dataclass(frozen=True, eq=False)  # compared by identity: a Launcher key
class DequantizePlan:
    """A launch worked out once per configuration (`dequantize_plan`); every tensor it takes is a fresh allocation
    (the pre-pass's, this call's), so the plan also fixes what Triton specializes on."""
    grid: tuple
    scalars: tuple
    constexprs: dict


@functools.lru_cache(maxsize=256)
def dequantize_plan(q_shape, k_shape, vt_seqlen, block_m, block_n, v_key_order, fp8_dtype, dtype) -> DequantizePlan:
    """dequantize_checked's launch for these shapes and block sizes; the dtypes only key it (the kernel is
    specialized on them)."""
    b, sq, h, d = q_shape
    sk, hk = k_shape[1], k_shape[2]
    rows = VALUES_PER_PROGRAM // d
    chunks_q, chunks_k = triton.cdiv(sq, rows), triton.cdiv(sk, rows)
    items_q, items_k = b * h * chunks_q, b * hk * chunks_k
    scalars = (sq, sk, vt_seqlen, h, hk, chunks_q, chunks_k, triton.cdiv(sq, block_m), triton.cdiv(sk, block_n),
               items_q, items_k)
    constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=d, ROWS=rows, WGMMA_KEYS=v_key_order == "wgmma",
                      INTERPRET=INTERPRET)
    return DequantizePlan((items_q + 2 * items_k,), scalars, constexprs)


def dequantize_checked(x: FP8QKV, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q·M, K·M, V) in dtype (bfloat16 or float16), contiguous (batch, seqlen, heads, headdim), from the pre-pass's
    own outputs x (the FP8 op's, saved for its backward: contiguous, 16-byte aligned, kernels.quant.check_fp8qkv)."""
    cfg = x.config
    q_shape, k_shape = tuple(x.q.shape), tuple(x.k.shape)
    plan = dequantize_plan(q_shape, k_shape, x.v_t.shape[-1], cfg.block_m, cfg.block_n, x.v_key_order,
                           x.q.dtype, dtype)
    out = tuple(torch.empty(shape, dtype=dtype, device=x.q.device) for shape in (q_shape, k_shape, k_shape))
    launch_dequantize(plan.grid, (x.q, x.k, x.v_t, x.q_scale, x.k_scale, x.v_scale, *out, *plan.scalars),
                      plan.constexprs, dict(num_warps=NUM_WARPS), plan=plan)
    return out
