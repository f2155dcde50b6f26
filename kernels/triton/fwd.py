"""FlashAttention forward in Triton: a program per (query block, batch, head) or per SM, online softmax in exp2.

The jitted helpers here (`head_view`, `query_tile_at`, `kv_block_range`, `causal_keep`,
`online_softmax`, `softmax_epilogue`, `to_operand`) are shared with the backward and the FP8
forward; keep their names and signatures stable.

Tiles move through tensor descriptors (TMA on Hopper, plain loads elsewhere and
in the interpreter), one 2-D descriptor per (batch, head) slice: loads past the
sequence end or past headdim read zeros and stores there are dropped, so tails
need no pointer masks and any head dim that is a multiple of 8 runs on the
next power-of-two tile.

Scores stay in the log2 domain: the softmax scale times log2(e) is folded into
one multiply so that exp2 replaces exp. The key loop is split in two: key
blocks that every query row of the block sees in full (no mask), then the few
blocks on the causal diagonal or the sequence tail (masked).

With `Tiles.warp_specialize` the two loops become one over all key blocks,
with a per-row bound on the keys kept: Triton 3.6's Hopper warp
specialization takes one loop per kernel (two crash it, and a branch in the
loop body turns it off), and then gives the loads to a producer warpgroup and
each half of the query rows to a consumer warpgroup of its own. Row indices
there are built as a scalar start plus an arange (never a splat start_m added
to an arange, which the pass mis-slices).

With `Tiles.persistent` one program per SM walks the tiles round-robin
instead of one program per tile; with warp specialization the producer then
loads the next tile's Q and first K/V blocks under the current tile's last
blocks and epilogue, which a new program's start cannot overlap.

`Tiles.exp2_poly` moves one exp2 in every N of the unmasked blocks from the
MUFU unit to a polynomial on the FMA pipe (FA4's trick; see `exp2`). On an
H200 it gains 1-2% in the warp-specialized hd128 forward, where each
consumer's softmax is on its own critical path, and loses in the two-loop
kernels (docs/tuning-triton.md, steps 3 and 5).
"""
import functools
import struct
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from kernels.device import sm_count
from kernels.launch import Launcher
from kernels.triton.tiles import Tiles, fwd_tiles, padded_head_dim

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)

# 2^f on [0, 1) as 1 + f (c1 + f (c2 + f c3)): minimax in relative error with p(0) = 1, fitted by
# iteratively reweighted least squares; max relative error 8.6e-5 (float32), far under bf16's 2^-9 on P.
EXP2_POLY_COEFFS = (0.6951168179512024, 0.22764497995376587, 0.0770670548081398)
EXP2_POLY_CLAMP = -127.0  # at and below this the result is exactly 0, and the exponent field stays >= 0 above it
_ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: x + this, rounded down, holds floor(x) in its low mantissa bits


def _f32_hex(x: float) -> str:
    return "0f" + struct.pack(">f", x).hex().upper()


def exp2_asm(pack: int) -> str:
    """PTX for `pack` float32 elements: the last by the polynomial (Cody-Waite), the others by ex2.approx.

    For x <= 0: n = floor(max(x, -127)) through a round-down add of 1.5 * 2^23,
    f = x - n in [0, 1), 2^x = p(f) * 2^n with n added into p's exponent bits.
    A last NaN-propagating max with x keeps a NaN score NaN: without it the
    clamp (a plain max returns the non-NaN operand) made it 0, and a NaN key
    vanished from the rows whose element of it fell on the polynomial.
    """
    c1, c2, c3 = (_f32_hex(c) for c in EXP2_POLY_COEFFS)
    magic = _f32_hex(_ROUND_MAGIC)
    mufu = [f"ex2.approx.ftz.f32 ${i}, ${pack + i};" for i in range(pack - 1)]
    out, x = f"${pack - 1}", f"${2 * pack - 1}"
    poly = [
        f"max.ftz.f32 xc, {x}, {_f32_hex(EXP2_POLY_CLAMP)};",
        f"add.rm.ftz.f32 r, xc, {magic};",
        f"sub.ftz.f32 f, r, {magic};",
        "sub.ftz.f32 f, xc, f;",
        f"fma.rn.ftz.f32 p, f, {c3}, {c2};",
        f"fma.rn.ftz.f32 p, p, f, {c1};",
        "fma.rn.ftz.f32 p, p, f, 0f3F800000;",
        "shl.b32 r, r, 23;",
        f"add.s32 {out}, p, r;",
        # 2^x > x, so this changes nothing but a NaN x, which the integer steps above turn into a number.
        f"max.ftz.NaN.f32 {out}, {out}, {x};",
    ]
    return "{ .reg .b32 xc, r, f, p; " + " ".join(mufu + poly) + " }"


EXP2_ASM_2 = tl.constexpr(exp2_asm(2))
EXP2_ASM_4 = tl.constexpr(exp2_asm(4))
EXP2_ASM_8 = tl.constexpr(exp2_asm(8))


@triton.jit
def exp2(x, POLY: tl.constexpr):
    """exp2 of float32 `x` <= 0; one element in every POLY (0: none) by the polynomial, the rest on the MUFU.

    The polynomial maps every x <= -127, -inf included, to exactly 0 (f = 0,
    p = 1, and the exponent add cancels p's bits), and NaN to NaN, as the
    MUFU's ex2.approx does. The kernels use it on unmasked blocks only (where
    it was tuned).
    """
    if POLY == 0:
        return tl.math.exp2(x)
    elif POLY == 2:
        return tl.inline_asm_elementwise(EXP2_ASM_2, "=r,=r,r,r", [x], dtype=tl.float32, is_pure=True, pack=2)
    elif POLY == 4:
        return tl.inline_asm_elementwise(EXP2_ASM_4, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=4)
    else:
        tl.static_assert(POLY == 8, "exp2 POLY must be one of 0, 2, 4, 8")
        return tl.inline_asm_elementwise(EXP2_ASM_8, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=8)


@triton.jit
def head_view(ptr, strides, batch, head, seqlen, head_dim, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Descriptor of (ROWS, HEAD_DIM) tiles over one (batch, head) slice of a (batch, seqlen, heads, headdim) tensor.

    `strides` are the tensor's (batch, seqlen, heads) strides; headdim is contiguous.
    """
    base = ptr + batch.to(tl.int64) * strides[0] + head.to(tl.int64) * strides[2]
    return tl.make_tensor_descriptor(base, shape=[seqlen, head_dim], strides=[strides[1], 1],
                                     block_shape=[ROWS, HEAD_DIM])


@triton.jit
def to_operand(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """`x` rounded to `dtype` (bf16/fp16), round-to-nearest-even, as a tensor-core operand or for a store.

    Under the interpreter (UPCAST) the value stays float32, since its dot has no
    bf16/fp16, and the rounding is done here on the bits because the
    interpreter's own float32 -> bf16 cast truncates. (fp16 range limits are
    not emulated there.)
    """
    if UPCAST:
        DROP: tl.constexpr = 16 if dtype == tl.bfloat16 else 13  # float32 mantissa bits the target lacks
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + ((1 << (DROP - 1)) - 1) + ((bits >> DROP) & 1)
        return ((bits >> DROP) << DROP).to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def kv_block_range(start_m, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr):
    """Key range for query rows [start_m, start_m + BLOCK_M): [0, full_end) needs no mask, [full_end, end) does.

    Causal masks are bottom-right aligned: row i sees key j iff j <= i + seqlen_k - seqlen_q.
    """
    full_end = seqlen_k // BLOCK_N * BLOCK_N
    end = seqlen_k
    if CAUSAL:
        first_row_last_key = start_m + seqlen_k - seqlen_q  # last key the block's first row sees
        full_end = tl.minimum(full_end, tl.maximum(first_row_last_key + 1, 0) // BLOCK_N * BLOCK_N)
        end = tl.maximum(tl.minimum(end, first_row_last_key + BLOCK_M), full_end)
    return full_end, end


@triton.jit
def query_tile_at(pid_m, m_blocks, bh, nheads, group, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """Query tile pid_m (of m_blocks) of batch * head bh: (bh, batch, head, kv head, first row, row offsets).
    Causal tiles count from the last, so that the query blocks that see the most keys start first."""
    if CAUSAL:
        pid_m = m_blocks - 1 - pid_m
    batch = bh // nheads
    head = bh % nheads
    start_m = pid_m * BLOCK_M
    return bh, batch, head, head // group, start_m, start_m + tl.arange(0, BLOCK_M)


@triton.jit
def causal_keep(offs_m, offs_n, seqlen_q, seqlen_k, CAUSAL: tl.constexpr):
    """(rows, keys) mask of the scores to keep: keys inside the sequence and, if causal, not in the future."""
    keep = offs_n[None, :] < seqlen_k
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None] + (seqlen_k - seqlen_q))
    return keep


# Lazy rescale (Tiles.lazy_rescale; the Gluon forward imports the same step): a row's max moves only when a
# block's max exceeds it by more than this (log2 units), so P stays <= 2^8 and alpha is exactly 1 in most blocks
# (FA4's trick).
LAZY_MAX_STEP = tl.constexpr(8.0)


@triton.jit
def online_softmax(qk, m_i, l_i, qk_scale, MASKED: tl.constexpr, EXP2_POLY: tl.constexpr = 0,
                   LAZY: tl.constexpr = False):
    """One step of the online softmax on raw scores `qk` (masked entries -inf; then EXP2_POLY must be 0).

    Returns p = exp2(qk * qk_scale - m_new), the rescale factor alpha for the
    running output, and the new running max m (log2 domain) and row sum l.
    LAZY: m moves only past LAZY_MAX_STEP (from -inf, any finite max moves it).
    """
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if LAZY:
        m_new = tl.where(m_new > m_i + LAZY_MAX_STEP, m_new, m_i)
    if MASKED:
        # A row that has seen no key yet keeps m = -inf: subtract 0 so exp2 gives 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    p = exp2(qk * qk_scale - m_sub[:, None], EXP2_POLY)
    alpha = tl.math.exp2(m_i - m_sub)
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


def rescale_asm(n: int) -> str:
    """PTX for n accumulator registers of one thread: each times its row's alpha, skipped (a branch) when the
    thread's two rows both kept their max. Operands: n outputs, the n inputs tied to them ($n..), then the n
    alphas ($2n..); in the wgmma accumulator a thread's registers go (row r: 2 columns, row r + 8: 2 columns) per
    8 columns, so alphas 0 and 2 are its two rows."""
    muls = " ".join(f"mul.f32 ${i}, ${i}, ${2 * n + i};" for i in range(n))
    return ("{ .reg .pred moved; " + f"setp.neu.f32 moved, ${2 * n}, 0f3F800000; "
            f"setp.neu.or.f32 moved, ${2 * n + 2}, 0f3F800000, moved; @!moved bra done; {muls} done: }}")


def rescale_constraints(n: int) -> str:
    return ",".join(["=r"] * n + [str(i) for i in range(n)] + ["r"] * n)


# A consumer thread of the warp-specialized forward holds 64 rows x HEAD_DIM / 128 threads of O: HEAD_DIM / 2
# registers; one asm block takes 64 of them (two at hd256). Head dims below 128 are refused (not run on a GPU).
RESCALE_PACK = tl.constexpr(64)
RESCALE_ASM = tl.constexpr(rescale_asm(RESCALE_PACK.value))
RESCALE_CONSTRAINTS = tl.constexpr(rescale_constraints(RESCALE_PACK.value))


@triton.jit
def rescale(acc, alpha, LAZY: tl.constexpr):
    """acc times alpha per row; LAZY (warp-specialized tiles, on the GPU): a thread whose rows kept their max
    (alpha exactly 1) skips its multiplies."""
    if LAZY:
        alphas = tl.broadcast_to(alpha[:, None], acc.shape)
        return tl.inline_asm_elementwise(RESCALE_ASM, RESCALE_CONSTRAINTS, [acc, alphas], dtype=tl.float32,
                                         is_pure=True, pack=RESCALE_PACK)
    else:
        return acc * alpha[:, None]


@triton.jit
def softmax_epilogue(acc, m_i, l_i):
    """Normalized output and natural-log LSE; rows that saw no key get 0 and +inf (FlashAttention's convention)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    return out, lse


@triton.jit
def _attend(acc, m_i, l_i, q, k_desc, v_desc, offs_m, lo, hi, seqlen_q, seqlen_k, qk_scale,
            BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
            EXP2_POLY: tl.constexpr):
    """Key blocks [lo, hi) folded into the running (acc, m, l)."""
    dtype = k_desc.dtype
    POLY: tl.constexpr = 0 if MASKED else EXP2_POLY  # the polynomial only where nothing is masked (as tuned)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = k_desc.load([start_n, 0])
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, k.T)
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            qk = tl.where(causal_keep(offs_m, offs_n, seqlen_q, seqlen_k, CAUSAL), qk, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(qk, m_i, l_i, qk_scale, MASKED, POLY)
        v = v_desc.load([start_n, 0])
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(to_operand(p, dtype, UPCAST), v, acc * alpha[:, None])
    return acc, m_i, l_i


@triton.jit
def _attend_one_loop(acc, m_i, l_i, q, k_desc, v_desc, start_m, full_end, end, seqlen_q, seqlen_k, qk_scale,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK_KEYS: tl.constexpr,
                     UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr, LAZY: tl.constexpr):
    """Key blocks [0, end) in one loop, warp-specialized on the GPU; a row's keys past its last are masked
    in blocks from full_end on, and only if MASK_KEYS (causal, or a partial last key block)."""
    dtype = k_desc.dtype
    POLY: tl.constexpr = 0 if MASK_KEYS else EXP2_POLY  # the polynomial only where nothing is masked (as tuned)
    # Rows relative to start_m: the pass hands each consumer its slice of an arange, but in
    # `start_m + arange` it also moves start_m by the slice's offset, so the second half's rows were shifted twice.
    rows = tl.arange(0, BLOCK_M)
    if CAUSAL:
        row_last = tl.minimum(rows + (start_m + seqlen_k - seqlen_q), seqlen_k - 1)
    else:
        row_last = tl.zeros_like(rows) + (seqlen_k - 1)
    for start_n in tl.range(0, end, BLOCK_N, warp_specialize=not UPCAST):  # the interpreter has no warps
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = k_desc.load([start_n, 0])
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, k.T)
        if MASK_KEYS:
            # A select rather than a branch: a branch in the loop turns the warp specialization off.
            last = tl.where(start_n < full_end, BLOCK_N, row_last - start_n)
            qk = tl.where(tl.arange(0, BLOCK_N)[None, :] <= last[:, None], qk, float("-inf"))
        p, alpha, m_i, l_i = online_softmax(qk, m_i, l_i, qk_scale, MASK_KEYS, POLY, LAZY)
        v = v_desc.load([start_n, 0])
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(to_operand(p, dtype, UPCAST), v, rescale(acc, alpha, LAZY and not UPCAST))
    return acc, m_i, l_i


@triton.jit
def _forward_tile(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, q_strides, k_strides, v_strides, o_strides,
                  seqlen_q, seqlen_k, nheads, group, head_dim, qk_scale, pid_m, m_blocks, bh,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr,
                  WARP_SPECIALIZE: tl.constexpr, MASK_KEYS: tl.constexpr, LAZY: tl.constexpr):
    """Out and LSE of query block pid_m (of m_blocks) of batch * head bh."""
    bh, batch, head, kv_head, start_m, offs_m = query_tile_at(pid_m, m_blocks, bh, nheads, group, BLOCK_M, CAUSAL)

    q_desc = head_view(q_ptr, q_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    k_desc = head_view(k_ptr, k_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    v_desc = head_view(v_ptr, v_strides, batch, kv_head, seqlen_k, head_dim, BLOCK_N, HEAD_DIM)
    q = q_desc.load([start_m, 0])
    if UPCAST:
        q = q.to(tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    full_end, end = kv_block_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N, CAUSAL)
    if WARP_SPECIALIZE:
        acc, m_i, l_i = _attend_one_loop(acc, m_i, l_i, q, k_desc, v_desc, start_m, full_end, end, seqlen_q,
                                         seqlen_k, qk_scale, BLOCK_M, BLOCK_N, CAUSAL, MASK_KEYS, UPCAST, EXP2_POLY,
                                         LAZY)
    else:
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_desc, v_desc, offs_m, 0, full_end, seqlen_q, seqlen_k, qk_scale,
                                BLOCK_N, CAUSAL, False, UPCAST, EXP2_POLY)
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_desc, v_desc, offs_m, full_end, end, seqlen_q, seqlen_k,
                                qk_scale, BLOCK_N, CAUSAL, True, UPCAST, EXP2_POLY)

    out, lse = softmax_epilogue(acc, m_i, l_i)
    o_desc = head_view(o_ptr, o_strides, batch, head, seqlen_q, head_dim, BLOCK_M, HEAD_DIM)
    o_desc.store([start_m, 0], to_operand(out, o_desc.dtype, UPCAST).to(o_desc.dtype))
    if WARP_SPECIALIZE:
        rows = tl.arange(0, BLOCK_M)  # start_m stays in the scalar base (see _attend_one_loop)
        tl.store(lse_ptr + bh * seqlen_q + start_m + rows, lse, mask=rows < seqlen_q - start_m)
    else:
        tl.store(lse_ptr + bh * seqlen_q + offs_m, lse, mask=offs_m < seqlen_q)


# Run-time sizes are not specialized on (divisibility by 16, == 1): one compiled
# kernel serves every sequence length and head count.
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "nheads", "group", "head_dim", "batch_heads"])
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, q_strides, k_strides, v_strides, o_strides,
                     seqlen_q, seqlen_k, nheads, group, head_dim, qk_scale, batch_heads,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, UPCAST: tl.constexpr, EXP2_POLY: tl.constexpr,
                     WARP_SPECIALIZE: tl.constexpr, MASK_KEYS: tl.constexpr, PERSISTENT: tl.constexpr,
                     LAZY: tl.constexpr):
    args = (q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, q_strides, k_strides, v_strides, o_strides,
            seqlen_q, seqlen_k, nheads, group, head_dim, qk_scale)
    if PERSISTENT:
        # Tiles dealt round-robin, query blocks fastest: the programs running at once share a few K/V heads in
        # L2. Triton's pass warp-specializes across this loop too: the producer loads the next tile's Q and
        # first K/V blocks while the consumers finish the current tile.
        m_blocks = tl.cdiv(seqlen_q, BLOCK_M)
        for tile in tl.range(tl.program_id(0), m_blocks * batch_heads, tl.num_programs(0)):
            _forward_tile(*args, tile % m_blocks, m_blocks, tile // m_blocks, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL,
                          UPCAST, EXP2_POLY, WARP_SPECIALIZE, MASK_KEYS, LAZY)
    else:
        _forward_tile(*args, tl.program_id(0), tl.num_programs(0), tl.program_id(1), HEAD_DIM, BLOCK_M, BLOCK_N,
                      CAUSAL, UPCAST, EXP2_POLY, WARP_SPECIALIZE, MASK_KEYS, LAZY)


def interpreting() -> bool:
    """Whether these kernels run in Triton's numpy interpreter (TRITON_INTERPRET=1 when they were defined).

    Its dot has no bf16/fp16, so the kernels upcast their dot operands there.
    """
    return isinstance(_attn_fwd_kernel, InterpretedFunction)


def set_descriptor_allocator(device: torch.device, keep: list | None = None):
    """In-kernel descriptors need a small global scratch buffer from Triton's allocator.

    The allocator is per thread (autograd runs the backward on its own thread), so it is set before each launch.
    A buffer is freed when its launch returns, which PyTorch's caching allocator may hand to the next allocation
    on the stream at once: safe only if the next kernel starts after this one ends. Kernels that overlap (a
    programmatic dependent launch) pass `keep`, which holds their buffers until the caller drops it.
    """
    def allocate(size, alignment, stream):
        buffer = torch.empty(size, dtype=torch.int8, device=device)
        if keep is not None:
            keep.append(buffer)
        return buffer

    triton.set_allocator(allocate)


def bsh_strides(t: torch.Tensor):
    """(batch, seqlen, heads) strides of a (batch, seqlen, heads, headdim) tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


launch_forward = Launcher(_attn_fwd_kernel)
INTERPRETER_PROGRAMS = 3  # a persistent grid's size on the CPU: the tests' few tiles still come several per program


@dataclass(frozen=True, eq=False)  # compared by identity: part of a Launcher key
class FwdPlan:
    """A forward's grid, its launch arguments between the tensors and the scale, constexprs and options, worked
    out once per shapes, strides, tiles and device (`forward_plan`) rather than keyed argument by argument on
    every call."""
    grid: tuple
    sizes: tuple  # strides of q, k, v, out; seqlen_q, seqlen_k, nheads, group, head_dim
    batch_heads: int
    constexprs: dict
    options: dict


@functools.lru_cache(maxsize=256)
def forward_plan(q_shape, k_shape, strides, dtype, causal, tiles: Tiles, device) -> FwdPlan:
    """The plan of a forward over q, k, v of these shapes, (batch, seqlen, head) strides (q's, k's, v's) and dtype
    (a key only: the kernel compiled for it is told apart by the plan), out allocated contiguous. Checks the tiles
    against the shape."""
    batch, seqlen_q, nheads, head_dim = q_shape
    seqlen_k, nheads_kv = k_shape[1], k_shape[2]
    # The Hopper pass gives each of its two consumers 64 rows of a 128-row tile (docs/tuning-triton.md, step 4).
    if tiles.warp_specialize and tiles.block_m != 128:
        raise ValueError(f"a warp-specialized forward needs block_m 128, got {tiles}")
    if tiles.lazy_rescale and padded_head_dim(head_dim) < 128:
        raise ValueError(f"lazy_rescale skips 64 O registers a thread at once: head dim 128 or more, got {head_dim}")
    m_blocks = triton.cdiv(seqlen_q, tiles.block_m)
    if tiles.persistent:
        programs = INTERPRETER_PROGRAMS if interpreting() else sm_count(device)
        grid = (min(programs, m_blocks * batch * nheads), )
    else:
        grid = (m_blocks, batch * nheads)
    out_strides = torch.empty(q_shape, device="meta").stride()[:3]
    sizes = (*strides, out_strides, seqlen_q, seqlen_k, nheads, nheads // nheads_kv, head_dim)
    constexprs = dict(HEAD_DIM=padded_head_dim(head_dim), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                      CAUSAL=causal, UPCAST=interpreting(), EXP2_POLY=0 if interpreting() else tiles.exp2_poly,
                      WARP_SPECIALIZE=tiles.warp_specialize,
                      # Only the one-loop kernel reads this; False otherwise, so the two-loop kernel compiles once.
                      MASK_KEYS=tiles.warp_specialize and (causal or seqlen_k % tiles.block_n != 0),
                      PERSISTENT=tiles.persistent, LAZY=tiles.lazy_rescale)
    options = dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages, maxnreg=tiles.max_regs)
    return FwdPlan(grid, sizes, batch * nheads, constexprs, options)


def attention_forward_triton(q, k, v, softmax_scale, causal, tiles: Tiles | None = None):
    """(out, lse) for validated q (b, sq, h, d), k/v (b, sk, hkv, d); lse (b, h, sq) float32, natural log.

    `tiles` overrides the tuned tile table (used by the tuning script).
    """
    batch, seqlen_q, nheads, _ = q.shape
    tiles = tiles or fwd_tiles(q.shape[-1], causal, q.device)
    plan = forward_plan(q.shape, k.shape, tuple(bsh_strides(t) for t in (q, k, v)), q.dtype, causal, tiles,
                        q.device)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((batch, nheads, seqlen_q), dtype=torch.float32, device=q.device)
    set_descriptor_allocator(q.device)
    launch_forward(plan.grid, (q, k, v, out, lse, *plan.sizes, softmax_scale * LOG2E, plan.batch_heads),
                   plan.constexprs, plan.options,
                   # The plan fixes the specialization but for the alignment of the caller's tensors.
                   plan=(plan, tuple(t.data_ptr() % 16 == 0 for t in (q, k, v))))
    return out, lse
