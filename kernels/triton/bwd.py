"""FlashAttention backward in Triton: delta preprocess, a dK/dV kernel over query blocks, a dQ kernel.

P is recomputed from the saved LSE, so `out` and `lse` may come from any
forward (the FP8 forward uses this as its straight-through backward).

- Preprocess: delta = rowsum(dO * O) and the LSE in log2 units, padded to a
  whole number of query blocks with +inf (padded rows then get P = 0 and need
  no mask).
- dK/dV: one program per (key block, batch, kv head) walks the query blocks of
  every query head in its GQA group, so the group's sum needs no atomics.
- dQ: one program per (query block, batch, head) walks the key blocks.
- Causal grids are 1-D and run the heaviest blocks first, in sections of heads
  that fit L2 (`causal_program`, FA3's backward order; the Gluon backward's
  too), or in sections of one head (`BwdTiles.causal_sections` off).

The dQ kernel reads only the inputs and the preprocess's output, so on sm_90+
it is launched as a programmatic dependent launch: its programs take the SMs
that the dK/dV kernel's last wave leaves idle (at 8k and 16k the 2048 dK/dV
programs fill 15.5 waves of an H200), and each waits for the dK/dV kernel
to finish before its store, so the backward ends when both kernels have.

No atomics anywhere: gradients are bitwise reproducible. (FA2-style dQ
accumulated with atomic adds in the dK/dV kernel saves two of the seven
matmuls, but measured 20-30% slower on an H200: docs/tuning-triton.md.)

Tiles past seqlen_k or seqlen_q load as zeros (see `head_view`): padded keys
only touch dK/dV rows that are never stored and add ds * 0 to dQ, and padded
queries get P = 0 from their +inf LSE, so sequence tails need no mask.
"""
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from kernels.triton.fwd import (LOG2E, exp2, head_view, interpreting, kv_block_range, query_tile_at,
                                set_descriptor_allocator, to_operand)
from kernels.device import takes_pdl
from kernels.launch import Launcher
from kernels.triton.tiles import BwdTiles, Tiles, bwd_tiles, padded_head_dim

PREPROCESS_BLOCK_M = 64
LOG2E_JIT = tl.constexpr(LOG2E)


# Run-time sizes are not specialized on (divisibility by 16, == 1), except the
# padded row stride of lse2/delta, a multiple of 64 that keeps their loads vectorized.
@triton.jit(do_not_specialize=["seqlen_q", "nheads", "head_dim"])
def _bwd_preprocess_kernel(o_ptr, do_ptr, lse_ptr, lse2_ptr, delta_ptr, dq_acc_ptr, o_strides, do_strides,
                           seqlen_q, seqlen_q_pad, nheads, head_dim, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch = bh // nheads
    head = bh % nheads
    offs_m = start_m + tl.arange(0, BLOCK_M)
    o_desc = head_view(o_ptr, o_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    do_desc = head_view(do_ptr, do_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    o = o_desc.load([start_m, 0]).to(tl.float32)
    do = do_desc.load([start_m, 0]).to(tl.float32)
    lse = tl.load(lse_ptr + bh * seqlen_q + offs_m, mask=offs_m < seqlen_q, other=float("inf"))
    tl.store(lse2_ptr + bh * seqlen_q_pad + offs_m, lse * LOG2E_JIT)
    tl.store(delta_ptr + bh * seqlen_q_pad + offs_m, tl.sum(o * do, 1))
    if dq_acc_ptr is not None:
        # The Gluon backward's float32 dQ accumulator ((batch, seqlen_q, nheads, head_dim), contiguous) is zeroed
        # here, as FA3's preprocess does, rather than by a memset launch of its own.
        cols = tl.arange(0, HEAD_DIM)
        rows = (batch * seqlen_q + offs_m).to(tl.int64) * nheads + head
        tl.store(dq_acc_ptr + rows[:, None] * head_dim + cols[None, :], tl.zeros([BLOCK_M, HEAD_DIM], tl.float32),
                 mask=(offs_m[:, None] < seqlen_q) & (cols[None, :] < head_dim))


# Bytes of L2 that the causal order's sections keep the rows their heads stream in (FA3's backward budget; the
# H200 has 50 MB of L2).
CAUSAL_SECTION_L2_BYTES = 40 * 2**20


def causal_section_heads(seqlen_q, head_dim, group, bytes_per_element, l2_bytes=CAUSAL_SECTION_L2_BYTES):
    """(batch, kv head)s per section of the causal program order (`causal_program`): the largest power of two
    whose query heads' streamed (seqlen_q, head_dim) tensors fit l2_bytes, at least 1. bytes_per_element sums
    the element sizes of those tensors: Q and dO, and the Gluon backward's float32 dQ accumulator."""
    per_kv_head = group * seqlen_q * head_dim * bytes_per_element
    fit = max(l2_bytes // per_kv_head, 1)
    return 1 << (fit.bit_length() - 1)


def program_grid(n_blocks, heads, causal):
    """The launch grid of a backward kernel with n_blocks blocks per head: (blocks, heads), or one dimension
    for a causal launch, which `causal_program` maps back in its order."""
    return (n_blocks * heads,) if causal else (n_blocks, heads)


@triton.jit
def causal_program(n_blocks, section_heads):
    """(rank, head) of this program of a causal launch's 1-D grid of n_blocks blocks times the heads, longest
    first (a Gluon kernel calls it too).

    A causal block's work falls with its rank (key block j sees the query
    blocks from about j on; query block i, counted from the last, sees the keys
    up to it), so programs go rank after rank over a section of section_heads
    heads: the heaviest start first and the lightest fill the last wave (FA3's
    backward LPT order). Sections, one after the other, keep the rows the heads
    in flight stream within L2 (causal_section_heads). A section of one head is
    the plain 2-D grid's order, block fastest."""
    pid = tl.program_id(0)
    num_heads = tl.num_programs(0) // n_blocks
    section_tiles = section_heads * n_blocks
    section = pid // section_tiles
    first_head = section * section_heads
    heads_here = tl.minimum(section_heads, num_heads - first_head)
    r = pid - section * section_tiles
    return r // heads_here, first_head + r % heads_here


@triton.jit
def q_block_range(start_n, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Query range for keys [start_n, start_n + BLOCK_N), whole blocks: [lo, full_start) needs the causal mask,
    [full_start, end) does not."""
    end = tl.cdiv(seqlen_q, BLOCK_M) * BLOCK_M
    lo = 0
    full_start = 0
    if CAUSAL:
        shift = seqlen_k - seqlen_q  # row i sees key j iff j <= i + shift
        lo = tl.minimum(tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M, end)
        full_start = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
        full_start = tl.minimum(tl.maximum(full_start, lo), end)
    return lo, full_start, end


@triton.jit
def _dkdv_steps(dk, dv, k, v, q_desc, do_desc, lse2_ptr, delta_ptr, row_base, offs_n, lo, hi, seqlen_q, seqlen_k,
                qk_scale, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
                EXP2_POLY: tl.constexpr):
    dtype = q_desc.dtype
    POLY: tl.constexpr = 0 if MASKED else EXP2_POLY  # the polynomial only where nothing is masked (as tuned)
    # Counting blocks rather than rows cut the registers of hd128 (32, 64) tiles
    # from 255 (spilling) to 229 (see docs/tuning-triton.md).
    for i in range(0, (hi - lo) // BLOCK_M):
        start_m = tl.multiple_of(lo + i * BLOCK_M, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = q_desc.load([start_m, 0])
        do = do_desc.load([start_m, 0])
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.load(lse2_ptr + row_base + offs_m)
        delta = tl.load(delta_ptr + row_base + offs_m)
        p_t = exp2(tl.dot(k, q.T) * qk_scale - lse2[None, :], POLY)  # (keys, rows)
        if MASKED and CAUSAL:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + (seqlen_k - seqlen_q), p_t, 0.0)
        dv = tl.dot(to_operand(p_t, dtype, UPCAST), do, dv)
        ds_t = to_operand(p_t * (tl.dot(v, do.T) - delta[None, :]), dtype, UPCAST)
        dk = tl.dot(ds_t, q, dk)
    return dk, dv


@triton.jit
def group_view(ptr, strides, batch, first_head, group, seqlen, head_dim, ROWS: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """Descriptor of (1, ROWS, HEAD_DIM) tiles over the `group` heads from `first_head` of one batch of a
    (batch, seqlen, heads, headdim) tensor: a GQA group's query heads under one descriptor, indexed [g, row, 0]."""
    base = ptr + batch.to(tl.int64) * strides[0] + first_head.to(tl.int64) * strides[2]
    return tl.make_tensor_descriptor(base, shape=[group, seqlen, head_dim], strides=[strides[2], strides[1], 1],
                                     block_shape=[1, ROWS, HEAD_DIM])


@triton.jit
def _dkdv_one_loop(dk, dv, k, v, q_ptr, do_ptr, q_strides, do_strides, lse2_ptr, delta_ptr, batch, first_head, group,
                   nheads, start_n, lo, full_start, end, seqlen_q, seqlen_k, seqlen_q_pad, head_dim, qk_scale,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr):
    """The dK/dV steps as ONE loop over (query head of the group, query block), for Triton 3.6's Hopper warp
    specialization (`Tiles.warp_specialize`): a TMA producer warpgroup and two consumer warpgroups that split
    the BLOCK_N keys (dK and dV rows) between them.

    The pass takes one loop per kernel and skips a loop with a branch in its body, so the GQA head loop is
    folded into the step index, the query tiles come through one 3-D descriptor over the group's heads, and
    the causal mask is a select on every step (in steps before full_start only). Same sums in the same order
    as the two-loop form (head-major, query blocks ascending): no atomics.
    """
    q_desc = group_view(q_ptr, q_strides, batch, first_head, group, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    do_desc = group_view(do_ptr, do_strides, batch, first_head, group, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    dtype = q_desc.dtype
    row_base = (batch * nheads + first_head) * seqlen_q_pad
    n_blocks = (end - lo) // BLOCK_M
    for i in tl.range(0, group * n_blocks, warp_specialize=not UPCAST):  # the interpreter has no warps
        g = i // n_blocks
        start_m = tl.multiple_of(lo + (i - g * n_blocks) * BLOCK_M, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = q_desc.load([g, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        do = do_desc.load([g, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse2 = tl.load(lse2_ptr + row_base + g * seqlen_q_pad + offs_m)
        delta = tl.load(delta_ptr + row_base + g * seqlen_q_pad + offs_m)
        p_t = exp2(tl.dot(k, q.T) * qk_scale - lse2[None, :], 0 if CAUSAL else EXP2_POLY)  # (keys, rows)
        if CAUSAL:  # a select, not a branch: a branch in the loop turns the warp specialization off
            # Key j = start_n + n sees row i iff n <= i + shift - start_n. The key index is the bare arange:
            # the pass offsets it for the second consumer (n in [64, 128)), but start_n + arange would get
            # the offset twice (in the arange and in the scalar), which the TTGIR showed.
            last_key = offs_m + (seqlen_k - seqlen_q - start_n)
            keep = (tl.arange(0, BLOCK_N)[:, None] <= last_key[None, :]) | (start_m >= full_start)
            p_t = tl.where(keep, p_t, 0.0)
        dv = tl.dot(to_operand(p_t, dtype, UPCAST), do, dv)
        ds_t = to_operand(p_t * (tl.dot(v, do.T) - delta[None, :]), dtype, UPCAST)
        dk = tl.dot(ds_t, q, dk)
    return dk, dv


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "nheads", "nheads_kv", "head_dim", "section_heads"])
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, lse2_ptr, delta_ptr,
                     q_strides, k_strides, v_strides, do_strides, dk_strides, dv_strides,
                     seqlen_q, seqlen_k, seqlen_q_pad, nheads, nheads_kv, head_dim, qk_scale, softmax_scale,
                     section_heads, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr,
                     WARP_SPECIALIZE: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # the dQ kernel may launch once every program of this one has started
        gdc_launch_dependents()
    if CAUSAL:  # key block 0 sees every query block: the heaviest
        key_block, bh = causal_program(tl.cdiv(seqlen_k, BLOCK_N), section_heads)
    else:
        key_block = tl.program_id(0)
        bh = tl.program_id(1)
    start_n = key_block * BLOCK_N
    batch = bh // nheads_kv
    kv_head = bh % nheads_kv
    group = nheads // nheads_kv
    k = head_view(k_ptr, k_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM).load([start_n, 0])
    v = head_view(v_ptr, v_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM).load([start_n, 0])
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo, full_start, end = q_block_range(start_n, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    if WARP_SPECIALIZE:
        dk, dv = _dkdv_one_loop(dk, dv, k, v, q_ptr, do_ptr, q_strides, do_strides, lse2_ptr, delta_ptr, batch,
                                kv_head * group, group, nheads, start_n, lo, full_start, end, seqlen_q, seqlen_k, seqlen_q_pad,
                                head_dim, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, UPCAST, EXP2_POLY)
    else:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        for g in range(group):  # the GQA group's query heads, summed in a fixed order
            head = kv_head * group + g
            q_desc = head_view(q_ptr, q_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
            do_desc = head_view(do_ptr, do_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
            row_base = (batch * nheads + head) * seqlen_q_pad
            dk, dv = _dkdv_steps(dk, dv, k, v, q_desc, do_desc, lse2_ptr, delta_ptr, row_base, offs_n, lo,
                                 full_start, seqlen_q, seqlen_k, qk_scale, BLOCK_M, CAUSAL, True, UPCAST, EXP2_POLY)
            dk, dv = _dkdv_steps(dk, dv, k, v, q_desc, do_desc, lse2_ptr, delta_ptr, row_base, offs_n, full_start,
                                 end, seqlen_q, seqlen_k, qk_scale, BLOCK_M, CAUSAL, False, UPCAST, EXP2_POLY)
    dk_desc = head_view(dk_ptr, dk_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    dv_desc = head_view(dv_ptr, dv_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    dk_desc.store([start_n, 0], to_operand(dk * softmax_scale, dk_desc.dtype, UPCAST).to(dk_desc.dtype))
    dv_desc.store([start_n, 0], to_operand(dv, dv_desc.dtype, UPCAST).to(dv_desc.dtype))


@triton.jit
def _dq_steps(dq, q, do, lse2, delta, k_desc, v_desc, offs_m, lo, hi, seqlen_q, seqlen_k, qk_scale,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
              EXP2_POLY: tl.constexpr):
    dtype = k_desc.dtype
    POLY: tl.constexpr = 0 if MASKED else EXP2_POLY
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = k_desc.load([start_n, 0])
        v = v_desc.load([start_n, 0])
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        p = exp2(tl.dot(q, k.T) * qk_scale - lse2[:, None], POLY)
        if MASKED and CAUSAL:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            p = tl.where(offs_n[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q), p, 0.0)
        ds = to_operand(p * (tl.dot(do, v.T) - delta[:, None]), dtype, UPCAST)
        dq = tl.dot(ds, k, dq)
    return dq


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "nheads", "nheads_kv", "head_dim", "section_heads"])
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, dq_ptr, lse2_ptr, delta_ptr,
                   q_strides, k_strides, v_strides, do_strides, dq_strides,
                   seqlen_q, seqlen_k, seqlen_q_pad, nheads, nheads_kv, head_dim, qk_scale, softmax_scale,
                   section_heads, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr, PDL: tl.constexpr):
    group = nheads // nheads_kv
    m_blocks = tl.cdiv(seqlen_q, BLOCK_M)
    if CAUSAL:  # sections of section_heads whole GQA groups, the kv heads of the dK/dV kernel's sections
        rank, bh = causal_program(m_blocks, section_heads * group)
    else:
        rank = tl.program_id(0)
        bh = tl.program_id(1)
    bh, batch, head, kv_head, start_m, offs_m = query_tile_at(rank, m_blocks, bh, nheads, group, BLOCK_M, CAUSAL)
    q = head_view(q_ptr, q_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM).load([start_m, 0])
    do = head_view(do_ptr, do_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM).load([start_m, 0])
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse2 = tl.load(lse2_ptr + bh * seqlen_q_pad + offs_m)
    delta = tl.load(delta_ptr + bh * seqlen_q_pad + offs_m)
    k_desc = head_view(k_ptr, k_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    v_desc = head_view(v_ptr, v_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    full_end, end = kv_block_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _dq_steps(dq, q, do, lse2, delta, k_desc, v_desc, offs_m, 0, full_end, seqlen_q, seqlen_k, qk_scale,
                   BLOCK_N, CAUSAL, False, UPCAST, EXP2_POLY)
    dq = _dq_steps(dq, q, do, lse2, delta, k_desc, v_desc, offs_m, full_end, end, seqlen_q, seqlen_k, qk_scale,
                   BLOCK_N, CAUSAL, True, UPCAST, EXP2_POLY)
    if PDL:  # launched before the dK/dV kernel ended: end after it, so that work after the backward sees dK/dV
        gdc_wait()
    dq_desc = head_view(dq_ptr, dq_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    dq_desc.store([start_m, 0], to_operand(dq * softmax_scale, dq_desc.dtype, UPCAST).to(dq_desc.dtype))


launch_preprocess = Launcher(_bwd_preprocess_kernel)
launch_dkdv = Launcher(_bwd_dkdv_kernel)
launch_dq = Launcher(_bwd_dq_kernel)


def dkdv_warp_specialized(tiles: Tiles, head_dim: int) -> bool:
    """Whether `tiles` run the one-loop dK/dV kernel: asked for, and a head dim whose dK and dV fit a
    consumer's registers (64 keys x 128 columns each); otherwise the two-loop kernel runs the same tiles.
    Causal masks and sequence tails are handled (see `_dkdv_one_loop`)."""
    return tiles.warp_specialize and padded_head_dim(head_dim) <= 128


def preprocess_launch(q_shape, out_strides, dout_strides, seqlen_q_pad):
    """The preprocess's grid, its arguments after the six tensors (out, dout, lse, lse2, delta, and the Gluon
    backward's dQ accumulator to zero or None) and its constexprs, for out and dout of q's shape and these strides,
    LSE2 and delta rows of seqlen_q_pad (both backwards' plans)."""
    batch, seqlen_q, nheads, head_dim = q_shape
    return ((seqlen_q_pad // PREPROCESS_BLOCK_M, batch * nheads),
            (out_strides[:3], dout_strides[:3], seqlen_q, seqlen_q_pad, nheads, head_dim),
            dict(HEAD_DIM=padded_head_dim(head_dim), BLOCK_M=PREPROCESS_BLOCK_M))


@dataclass(frozen=True, eq=False)  # compared by identity: part of a Launcher key
class BwdPlan:
    """Every launch argument of a backward but its tensors and the softmax scale, with the grids, constexprs and
    options, worked out once per shapes, strides, dtype, tiles and device (`backward_plan`): the three
    per-argument launch keys cost ~60 µs a call on our CPU."""
    seqlen_q_pad: int
    section: int  # causal_program's heads per section
    preprocess: tuple  # preprocess_launch's
    dkdv: tuple  # grid, strides and sizes (the arguments between the tensors and the scales), constexprs, options
    dq: tuple


@functools.lru_cache(maxsize=256)
def backward_plan(q_shape, k_shape, strides, dtype, causal, tiles: BwdTiles, device,
                  section_l2_bytes=CAUSAL_SECTION_L2_BYTES) -> BwdPlan:
    """The plan of a backward over dout, q, k, v, out of these shapes and strides (dout's, q's, k's, v's, out's),
    dq, dk and dv allocated contiguous."""
    batch, seqlen_q, nheads, head_dim = q_shape
    seqlen_k, nheads_kv = k_shape[1], k_shape[2]
    dkdv_t, dq_t = tiles.dkdv, tiles.dq
    d = padded_head_dim(head_dim)
    pad = max(dkdv_t.block_m, dq_t.block_m, PREPROCESS_BLOCK_M)
    seqlen_q_pad = triton.cdiv(seqlen_q, pad) * pad
    upcast = interpreting()
    pdl = tiles.dq_early and not upcast and takes_pdl(device)
    section = (causal_section_heads(seqlen_q, d, nheads // nheads_kv, 2 * dtype.itemsize, section_l2_bytes)
               if tiles.causal_sections else 1)
    dout, q, k, v = (s[:3] for s in strides[:4])  # (batch, seqlen, head) strides
    dq, dk = (torch.empty(shape, device="meta").stride()[:3] for shape in (q_shape, k_shape))
    sizes = (seqlen_q, seqlen_k, seqlen_q_pad, nheads, nheads_kv, head_dim)
    preprocess = preprocess_launch(q_shape, strides[4], strides[0], seqlen_q_pad)
    dkdv = (program_grid(triton.cdiv(seqlen_k, dkdv_t.block_n), batch * nheads_kv, causal),
            (q, k, v, dout, dk, dk, *sizes),
            dict(HEAD_DIM=d, BLOCK_M=dkdv_t.block_m, BLOCK_N=dkdv_t.block_n, CAUSAL=causal, UPCAST=upcast,
                 EXP2_POLY=0 if upcast else dkdv_t.exp2_poly, WARP_SPECIALIZE=dkdv_warp_specialized(dkdv_t, head_dim),
                 PDL=pdl),
            dict(num_warps=dkdv_t.num_warps, num_stages=dkdv_t.num_stages, maxnreg=dkdv_t.max_regs))
    dq = (program_grid(triton.cdiv(seqlen_q, dq_t.block_m), batch * nheads, causal),
          (q, k, v, dout, dq, *sizes),
          dict(HEAD_DIM=d, BLOCK_M=dq_t.block_m, BLOCK_N=dq_t.block_n, CAUSAL=causal, UPCAST=upcast,
               EXP2_POLY=0 if upcast else dq_t.exp2_poly, PDL=pdl),
          dict(num_warps=dq_t.num_warps, num_stages=dq_t.num_stages, maxnreg=dq_t.max_regs, launch_pdl=pdl))
    return BwdPlan(seqlen_q_pad, section, preprocess, dkdv, dq)


def attention_backward_triton(dout, q, k, v, out, lse, softmax_scale, causal, deterministic=False,
                              tiles: BwdTiles | None = None, section_l2_bytes: int = CAUSAL_SECTION_L2_BYTES):
    """(dq, dk, dv) for validated inputs; lse (b, h, sq) float32 natural log, contiguous.

    Always deterministic: no atomics, every sum in a fixed order, so
    `deterministic` (FlashAttention's flag) changes nothing here.
    `tiles` overrides the tuned tile table and `section_l2_bytes` the causal order's L2 budget (tuning).
    """
    batch, _, nheads, head_dim = q.shape
    tiles = tiles or bwd_tiles(head_dim, causal, q.device)
    plan = backward_plan(q.shape, k.shape, tuple(t.stride() for t in (dout, q, k, v, out)), q.dtype, causal, tiles,
                         q.device, section_l2_bytes)
    # The plan fixes each launch's specialization but for the alignment of the caller's tensors (the rest are
    # fresh allocations).
    key = (plan, tuple(t.data_ptr() % 16 == 0 for t in (dout, q, k, v, out, lse)))
    # dK/dV may still run when dQ starts: its descriptor buffers stay allocated until both are launched, so that
    # neither dQ's buffers nor dq reuse them (a crash in the GQA tests before this).
    scratch = []
    set_descriptor_allocator(q.device, keep=scratch)

    lse2 = torch.empty((batch, nheads, plan.seqlen_q_pad), dtype=torch.float32, device=q.device)
    delta = torch.empty_like(lse2)
    grid, rest, constexprs = plan.preprocess
    launch_preprocess(grid, (out, dout, lse, lse2, delta, None, *rest), constexprs, {}, plan=key)

    qk_scale = softmax_scale * LOG2E
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    grid, sizes, constexprs, options = plan.dkdv
    launch_dkdv(grid, (q, k, v, dout, dk, dv, lse2, delta, *sizes, qk_scale, softmax_scale, plan.section),
                constexprs, options, plan=key)
    grid, sizes, constexprs, options = plan.dq
    launch_dq(grid, (q, k, v, dout, dq, lse2, delta, *sizes, qk_scale, softmax_scale, plan.section),
              constexprs, options, plan=key)
    return dq, dk, dv
