"""FP8 attention forward kernel: consumes the pre-pass's FP8QKV, writes bf16/fp16 out and fp32 LSE.

Per query tile and key tile (the key tile is exactly one K/V scale block):
  S = (Q8 K8ᵀ) · (q_scale · k_scale · softmax_scale · log2 e)   fp32 accumulate
  online softmax in the exp2 domain, P = exp2(S - m + 8) <= 256 cast to fp8
  (the row max is taken on Q8 K8ᵀ before scaling, which gives the same m, and the scale multiply joins
  the subtraction of m in one FMA per score)
  acc = acc · alpha · (u / v_scale) + P8 V8,  u := v_scale
The accumulator is kept in units of the latest V scale u, so V's per-block
scale costs one scalar per row-rescale instead of a multiply per element, and
is applied exactly in fp32 (folding it into P's columns before the cast would
push P out of fp8's normal range). O = acc · u / l, where l sums the fp32 P;
the 2**8 cancels there and in LSE = (m + log2 l - 8) · ln 2.
Each tile's P8 V8 starts from zero and joins acc in fp32: Hopper's FP8 MMAs add
into their accumulator with ~14-bit precision, which over many key tiles
would drift O. Q8 K8ᵀ (at most 8 MMA steps deep) keeps the fast path.
"""
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.device import is_sm90
from kernels.launch import Launcher, rebased
from kernels.quant import FP8QKV, LN2, LOG2E, P_LOG2_OFFSET
from kernels.triton.fp8_quant import FP8_TL_DTYPES, INTERPRET, cast_rne, from_wgmma_keys


@dataclass(frozen=True)
class FP8FwdTiles:
    """Launch shape of the FP8 forward; the key tile is always FP8Config.block_n."""
    block_m: int  # query rows per program (divides FP8Config.block_m)
    num_warps: int
    num_stages: int
    max_regs: int | None = None  # Triton's maxnreg: a cap that fits one more program per SM


# Keyed on head dim. H200 winners of experiments/tune_fp8.py (log in docs/fp8.md): one 64-row warpgroup
# per program beat 128 rows on two warpgroups (independent programs on one SM overlap one's softmax with
# another's MMAs), and more such programs per SM help: a register cap fitting 3 (head dim 128, 168
# registers) or 4 (head dim 64, 128) programs gave +18% and +4%. Head dim 256 needs two warpgroups to
# hold O and one tile's P·V in registers without spilling (one program per SM).
FWD_TILES_SM90 = {64: FP8FwdTiles(64, 4, 3, max_regs=128), 128: FP8FwdTiles(64, 4, 2, max_regs=168),
                  256: FP8FwdTiles(64, 8, 2)}
# Other GPUs: not measured; small tiles that fit less shared memory.
FWD_TILES_GENERIC = {64: FP8FwdTiles(64, 4, 2), 128: FP8FwdTiles(64, 4, 2), 256: FP8FwdTiles(64, 8, 1)}
# Interpreter: query tiles smaller than the scale block, so tests cover the block -> tile mapping.
FWD_TILES_INTERPRETER = FP8FwdTiles(32, 4, 1)
_P_OFFSET = tl.constexpr(P_LOG2_OFFSET)
_LN2 = tl.constexpr(LN2)


def fwd_tiles(head_dim: int, device: torch.device) -> FP8FwdTiles:
    if device.type != "cuda":
        return FWD_TILES_INTERPRETER
    table = FWD_TILES_SM90 if is_sm90(device) else FWD_TILES_GENERIC
    return table[head_dim]


@triton.jit
def _scores(q, desc_k, b, hk, n0, offs_m, seqlen_q, seqlen_k,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """Key tile n0's unscaled scores Q8·K8ᵀ, -inf where masked."""
    k = desc_k.load([b, n0, hk, 0]).reshape(BLOCK_N, HEAD_DIM)
    s = tl.dot(q, k.T)
    if MASK:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        visible = offs_n[None, :] < seqlen_k
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q))
        s = tl.where(visible, s, float("-inf"))
    return s


@triton.jit
def _softmax(s, scale, m_i, l_i, P_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Online softmax step on unscaled scores s and their log2-domain scale (> 0):
    (P = 2^8 · exp2(s·scale - m) in fp8, alpha = exp2(m_old - m), m, l).

    max(s)·scale rounds to exactly max(s·scale) (rounding is monotonic), so m is the reference's; the
    scale then joins the subtraction in one FMA per score (the reference rounds s·scale first: P moves
    by at most an ulp of its exponent, ~3e-7 relative).
    """
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale)
    # A row with no visible key yet keeps m = -inf; shift it by 0 so that P = 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * scale - (m_safe - _P_OFFSET)[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    return cast_rne(p, P_DTYPE, INTERPRET), alpha, m_new, l_i


@triton.jit
def _pv(p8, desc_v, b, hk, n0, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, V_WGMMA_KEYS: tl.constexpr):
    """One tile's P·V from zero: Hopper's FP8 MMA adds into its accumulator with ~14-bit precision, so the
    running sum is kept in fp32 outside it (one FMA per element, fused with the rescale).

    V_WGMMA_KEYS: V^T's keys are in wgmma order (kernels.quant.FP8QKV), put back in natural order here (a
    register shuffle per tile: this kernel gains nothing from that order, it only accepts it)."""
    v = desc_v.load([b, hk, 0, n0]).reshape(HEAD_DIM, BLOCK_N)
    if V_WGMMA_KEYS:
        v = from_wgmma_keys(v, HEAD_DIM, BLOCK_N)
    return tl.dot(p8, v.T)


@triton.jit
def _fp8_fwd_tiles(acc, l_i, m_i, v_unit, q, desc_k, desc_v, KS, VS,
                   b, hk, offs_m, row_qk_scale, n_start, n_end, seqlen_q, seqlen_k,
                   BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                   V_WGMMA_KEYS: tl.constexpr, P_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Key tiles [n_start, n_end) (multiples of BLOCK_N); MASK applies the causal and seqlen_k masks.

    acc is kept in units of the last added tile's V scale, v_unit: adding tile j rescales it by
    alpha_j · v_unit / v_scale_j, exactly in fp32.
    """
    for n0 in range(n_start, n_end, BLOCK_N):
        n0 = tl.multiple_of(n0, BLOCK_N)
        s = _scores(q, desc_k, b, hk, n0, offs_m, seqlen_q, seqlen_k, BLOCK_N, HEAD_DIM, MASK, CAUSAL)
        scale = row_qk_scale * tl.load(KS + n0 // BLOCK_N)
        p8, alpha, m_i, l_i = _softmax(s, scale, m_i, l_i, P_DTYPE, INTERPRET)
        v_scale = tl.load(VS + n0 // BLOCK_N)
        acc = acc * (alpha * (v_unit / v_scale))[:, None] + _pv(p8, desc_v, b, hk, n0, HEAD_DIM, BLOCK_N, V_WGMMA_KEYS)
        v_unit = v_scale
    return acc, l_i, m_i, v_unit


@triton.jit
def _fp8_fwd_kernel(desc_q, desc_k, desc_v, desc_o, QS, KS, VS, Lse,
                    nheads, group, seqlen_q, seqlen_k, nblocks_q, nblocks_k, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALE_BLOCK_M: tl.constexpr,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, V_WGMMA_KEYS: tl.constexpr,
                    P_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // nheads
    h = bh % nheads
    hk = h // group
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)

    q = desc_q.load([b, m0, h, 0]).reshape(BLOCK_M, HEAD_DIM)
    # The query tile lies inside one scale block (BLOCK_M divides SCALE_BLOCK_M).
    q_scale = tl.load(QS + bh * nblocks_q + m0 // SCALE_BLOCK_M)
    row_qk_scale = q_scale * qk_scale
    KS += (b * (nheads // group) + hk) * nblocks_k
    VS += (b * (nheads // group) + hk) * nblocks_k

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    v_unit = tl.full((), 1.0, tl.float32)

    # Key tiles every row of this query tile sees whole run unmasked; the rest
    # (causal diagonal, seqlen_k tail) are masked.
    full_end = (seqlen_k // BLOCK_N) * BLOCK_N
    end = seqlen_k
    if CAUSAL:
        first_row_last_key = m0 + seqlen_k - seqlen_q  # keys <= this are visible to every row
        full_end = tl.minimum(full_end, (tl.maximum(first_row_last_key + 1, 0) // BLOCK_N) * BLOCK_N)
        end = tl.minimum(end, tl.maximum(m0 + BLOCK_M + seqlen_k - seqlen_q, 0))
    acc, l_i, m_i, v_unit = _fp8_fwd_tiles(acc, l_i, m_i, v_unit, q, desc_k, desc_v, KS, VS,
                                           b, hk, offs_m, row_qk_scale, 0, full_end, seqlen_q, seqlen_k,
                                           BLOCK_N, HEAD_DIM, False, CAUSAL, V_WGMMA_KEYS, P_DTYPE, INTERPRET)
    acc, l_i, m_i, v_unit = _fp8_fwd_tiles(acc, l_i, m_i, v_unit, q, desc_k, desc_v, KS, VS,
                                           b, hk, offs_m, row_qk_scale, full_end, end, seqlen_q, seqlen_k,
                                           BLOCK_N, HEAD_DIM, True, CAUSAL, V_WGMMA_KEYS, P_DTYPE, INTERPRET)

    # Rows that see no key (causal, seqlen_q > seqlen_k) get out 0 and lse +inf; NaN rows stay NaN.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * tl.where(empty, 0.0, v_unit / l_safe)[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe) - _P_OFFSET) * _LN2)
    desc_o.store([b, m0, h, 0], out.to(desc_o.dtype).reshape(1, BLOCK_M, 1, HEAD_DIM))
    tl.store(Lse + bh * seqlen_q + offs_m, lse, mask=offs_m < seqlen_q)


launch_forward = Launcher(_fp8_fwd_kernel)


@dataclass(frozen=True, eq=False)  # compared by identity: part of a Launcher key
class FP8FwdPlan:
    """A forward's grid, descriptors (over meta tensors, `kernels.launch.rebased` per call), the sizes between
    the scale pointers and the softmax scale, constexprs and options, worked out once per pre-pass layout
    (`forward_plan`)."""
    grid: tuple
    descriptors: tuple  # of q, k, v_t, out
    sizes: tuple  # nheads, group, seqlen_q, seqlen_k, query and key scale blocks
    constexprs: dict
    options: dict


@functools.lru_cache(maxsize=256)
def forward_plan(shapes, strides, config, v_key_order, causal, out_dtype, tiles: FP8FwdTiles) -> FP8FwdPlan:
    """The plan of a forward over pre-pass outputs of these shapes and strides (q's, k's, v_t's, q_scale's,
    k_scale's), out allocated contiguous."""
    q_shape, k_shape, v_shape, q_scale_shape, k_scale_shape = shapes
    b, sq, h, d = q_shape
    sk, hk = k_shape[1], k_shape[2]
    block_m = min(tiles.block_m, config.block_m)
    block_n = config.block_n
    fp8 = config.dtype
    q, k, v_t = (torch.empty_strided(shape, stride, dtype=fp8, device="meta")
                 for shape, stride in zip((q_shape, k_shape, v_shape), strides))
    out = torch.empty(q_shape, dtype=out_dtype, device="meta")
    descriptors = (TensorDescriptor(q, list(q.shape), list(q.stride()), [1, block_m, 1, d]),
                   TensorDescriptor(k, list(k.shape), list(k.stride()), [1, block_n, 1, d]),
                   TensorDescriptor(v_t, list(v_t.shape), list(v_t.stride()), [1, 1, d, block_n]),
                   TensorDescriptor(out, list(out.shape), list(out.stride()), [1, block_m, 1, d]))
    return FP8FwdPlan((triton.cdiv(sq, block_m), b * h), descriptors,
                      (h, h // hk, sq, sk, q_scale_shape[2], k_scale_shape[2]),
                      dict(BLOCK_M=block_m, BLOCK_N=block_n, SCALE_BLOCK_M=config.block_m, HEAD_DIM=d,
                           CAUSAL=causal, V_WGMMA_KEYS=v_key_order == "wgmma", P_DTYPE=FP8_TL_DTYPES[fp8],
                           INTERPRET=INTERPRET),
                      dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages, maxnreg=tiles.max_regs))


def fp8_attention_forward_triton(x: FP8QKV, softmax_scale: float, causal: bool, out_dtype: torch.dtype,
                                 tiles=None):
    """The forward on pre-pass outputs (kernels.quant.check_fp8qkv's layouts: q, k, v_t 16-byte aligned):
    (out (batch, seqlen_q, nheads, headdim) in out_dtype, lse (batch, nheads, seqlen_q) fp32).

    tiles: an FP8FwdTiles to override the table (tuning).
    """
    b, sq, h, d = x.q.shape
    tiles = tiles or fwd_tiles(d, x.q.device)
    tensors = (x.q, x.k, x.v_t, x.q_scale, x.k_scale)
    plan = forward_plan(tuple(t.shape for t in tensors), tuple(t.stride() for t in tensors[:3]), x.config,
                        x.v_key_order, causal, out_dtype, tiles)
    out = torch.empty(b, sq, h, d, dtype=out_dtype, device=x.q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=x.q.device)
    descriptors = (rebased(desc, t) for desc, t in zip(plan.descriptors, (x.q, x.k, x.v_t, out)))
    launch_forward(plan.grid, (*descriptors, x.q_scale, x.k_scale, x.v_scale, lse, *plan.sizes,
                               softmax_scale * LOG2E),
                   plan.constexprs, plan.options,
                   # The plan fixes the specialization but for the scales' alignment (a caller's FP8QKV).
                   plan=(plan, tuple(t.data_ptr() % 16 == 0 for t in (x.q_scale, x.k_scale, x.v_scale))))
    return out, lse
