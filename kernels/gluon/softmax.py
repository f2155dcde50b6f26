"""Online softmax of the Hopper forward, in the base-2 domain with the softmax scale folded in.

Scores S stay unscaled in the wgmma accumulator; `qk_scale` = softmax_scale *
log2(e) is applied inside the exponent (one FMA per element), the row maximum
is kept already scaled. A row that has seen only masked keys keeps max = -inf;
the exponent then uses 0 as its offset so that every term is exp2(-inf) = 0
instead of NaN (FA3's Check_inf). FP8 follows kernels.quant's scheme: S is
scaled per row by the Q block scale and per key block by the K block scale,
and P carries a factor 2**8 that cancels in O and is taken out of LSE.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from kernels.quant import LN2, P_LOG2_OFFSET
# LAZY: a row's max moves only when a block's max exceeds it by more than this (log2 units), so P <= 2^8 (FA4),
# the same step as the Triton forward's.
from kernels.triton.fwd import LAZY_MAX_STEP

_LN2 = gl.constexpr(LN2)


@gluon.jit
def mask_scores(s, key0, row0, seqlen_q, seqlen_k, CAUSAL: gl.constexpr, ROW_BOUND: gl.constexpr = False):
    """Set S to -inf at keys >= seqlen_k and, if CAUSAL, at keys a row may not see (bottom-right aligned).
    ROW_BOUND (causal): one compare per score against the last key each row sees, min(row + seqlen_k - seqlen_q,
    seqlen_k - 1), instead of two compares and their AND; the same keys."""
    layout: gl.constexpr = s.type.layout
    cols = key0 + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, layout))
    if CAUSAL and ROW_BOUND:
        rows = row0 + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, layout))
        last = gl.minimum(rows + (seqlen_k - seqlen_q), seqlen_k - 1)
        keep = gl.expand_dims(cols, 0) <= gl.expand_dims(last, 1)
    else:
        keep = gl.expand_dims(cols < seqlen_k, 0)
        if CAUSAL:
            rows = row0 + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, layout))
            keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows + (seqlen_k - seqlen_q), 1))
    return gl.where(keep, s, -float("inf"))


@gluon.jit
def block_needs_mask(key0, row0, seqlen_q, seqlen_k, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Whether a key block starting at key0 has keys past seqlen_k or above the causal diagonal for row0.."""
    needs = key0 + BLOCK_N > seqlen_k
    if CAUSAL:
        needs = needs | (key0 + BLOCK_N - 1 > row0 + seqlen_k - seqlen_q)
    return needs


@gluon.jit
def causal_full_blocks(n_blocks, row0, seqlen_q, seqlen_k, BLOCK_N: gl.constexpr):
    """How many of a causal tile's n_blocks key blocks, counted from key 0, rows row0.. see whole: the blocks
    visited last (pipeline.kv_block_start), which need no mask and, since every row sees all their keys, give
    every row a finite max. (Block n_blocks - 1 may be counted while it ends past seqlen_k, for rows past
    seqlen_q: it is the block visited first, whose mask test always runs.)"""
    row0_keys = row0 + 1 + seqlen_k - seqlen_q  # keys the first row sees
    return gl.minimum(gl.maximum(row0_keys, 0) // BLOCK_N, n_blocks)


@gluon.constexpr_function
def p_log2_offset(dtype):
    """log2 of the factor P carries: 2**8 for fp8 P, so that P <= 256 uses fp8's normal range (FA3; kernels.quant)."""
    return P_LOG2_OFFSET if dtype.is_fp8() else 0.0


@gluon.jit
def thread_row_sums(x):
    """Each thread's share of the row sums of a wgmma accumulator tile, [rows, 4] (axis 1: the lane in the quad).

    Lane t of a quad holds columns 8j + 2t + b of its rows; splitting the columns as (j, t, b) leaves j and b in
    registers, so the sums are plain adds, no shuffles.
    """
    ROWS: gl.constexpr = x.shape[0]
    N: gl.constexpr = x.shape[1]
    return gl.sum(gl.sum(x.reshape([ROWS, N // 8, 4, 2]), axis=3), axis=1)


@gluon.jit
def row_sum_init(ROWS: gl.constexpr, N: gl.constexpr, s_layout: gl.constexpr, PER_THREAD: gl.constexpr):
    """Zero running row sums for [ROWS, N] score tiles in s_layout: [ROWS], or with PER_THREAD [ROWS, 4] partial
    sums (thread_row_sums)."""
    if PER_THREAD:
        return gl.zeros_like(thread_row_sums(gl.zeros([ROWS, N], gl.float32, s_layout)))
    else:
        return gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))


@gluon.jit
def total_row_sum(l, rows_layout: gl.constexpr):
    """Running row sums as [rows] in rows_layout: the per-thread partial sums (row_sum_init) reduced across the
    quad, once per tile."""
    if len(l.shape) == 2:
        l = gl.sum(l, axis=1)
    return gl.convert_layout(l, rows_layout, assert_trivial=True)


@gluon.jit
def softmax_update(s, m_prev, l_prev, row_scale, P_OFFSET: gl.constexpr, FINITE_MAX: gl.constexpr = False,
                   LAZY: gl.constexpr = False):
    """One online-softmax step on a score block; row_scale (> 0) takes S to the base-2 domain.

    Returns P = exp2(S * row_scale - m_new + P_OFFSET) (float32), the new
    scaled row max, the new row sum and alpha = exp2(m_prev - m_new), the
    factor by which the running output must be rescaled. l_prev of shape
    [rows, 4] holds per-thread partial sums (FA3): the quad's shuffles are left
    to total_row_sum. FINITE_MAX: the caller knows every row's new max is
    finite (a key it sees was in an earlier block), so the -inf guard goes.
    LAZY: the max stays where it was unless it grows by more than LAZY_MAX_STEP; alpha is then exactly 1, and O's
    rescale can be skipped (16-bit P only: P reaches 2^8, past fp8 P's range with its 2^8 offset).
    """
    m_new = gl.maximum(m_prev, gl.max(s, axis=1) * row_scale)
    if LAZY:
        m_new = gl.where(m_new > m_prev + LAZY_MAX_STEP, m_new, m_prev)  # from -inf any finite max moves
    if FINITE_MAX:
        m_use = m_new
    else:
        m_use = gl.where(m_new == -float("inf"), 0.0, m_new)
    alpha = gl.exp2(m_prev - m_use)
    p = gl.exp2(s * gl.expand_dims(row_scale, 1) - gl.expand_dims(m_use - P_OFFSET, 1))
    if len(l_prev.shape) == 2:
        l_rows: gl.constexpr = gl.SliceLayout(1, l_prev.type.layout)
        l_new = l_prev * gl.expand_dims(gl.convert_layout(alpha, l_rows, assert_trivial=True), 1) + thread_row_sums(p)
    else:
        l_new = l_prev * alpha + gl.sum(p, axis=1)
    return p, m_new, l_new, alpha


@gluon.jit
def softmax_finish(m, l, P_OFFSET: gl.constexpr):
    """(1 / rowsum, natural-log LSE), FA's convention for rows that saw no key: 0 and +inf. NaN rows stay NaN."""
    empty = l == 0.0
    inv_l = gl.where(empty, 0.0, 1.0 / l)
    lse = gl.where(empty, float("inf"), (m + gl.log2(l) - P_OFFSET) * _LN2)
    return inv_l, lse
