"""FP8 pre-pass kernel: Hadamard rotation, block amax, scale and cast of Q, K and V in one launch.

The pre-pass is memory-bound (it reads 2 bytes and writes 1 per element), so
the kernel is built to read each element once and keep loads in flight:
  * one launch for Q, K and V: a persistent grid whose program ids are split
    among the three tensors in proportion to their blocks; each program loops
    over its tensor's blocks, software-pipelined (the next block's TMA load is
    in flight while the current one is rotated, reduced and stored);
  * one read per block: the whole scale block is rotated into registers, its
    amax taken and the same registers quantized (a 128 x 128 fp32 tile is 64
    registers a thread at 8 warps; head dim 256 takes 16 warps);
  * the rotation x·(D·H) is a tensor-core dot with the ±1 matrix D·H (exact
    products, fp32 sums), loaded once per program; 1/sqrt(d) is applied in
    fp32. At head dim 256 it runs as two 128-wide halves and one butterfly
    (H_256 = [[H, H], [H, -H]]), which halves the dot's work and keeps only
    256 x 128 of D·H in shared memory;
  * V^T (in either key order) at head dims 128/256 is also a tensor-core
    product: the block's transpose times a 0/1 key permutation matrix (exact),
    so it leaves the MMA in the layout it is stored in; a transpose in
    registers before the store cost V's blocks 1.6x a Q or K block;
  * few instructions per element between load and store (they were most of
    each block's chain): one NaN-keeping max per element for the amax, and
    no clamp before the cast (cvt.rn.satfinite saturates to ±fp8 max).
Blocks too large for registers (and the "head"/"tensor" granularities) take
two launches: per-chunk amax, then a quantization with the scales the host
reduces from it (kernels.quant.scales_from_amax). The layouts and the
arithmetic are kernels.quant's, which the tests hold this kernel to.
On an H200 its GPU time (CUDA graph) is 3.4-3.5 TB/s at head dims 64/128 and
2.2 TB/s at 256 (one 16-warp program per SM), against 4.2 TB/s for a copy;
docs/fp8.md has the numbers and what limits them.
"""
import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.checks import tma_ready
from kernels.device import is_sm90, sm_count, takes_pdl
from kernels.hadamard import signed_hadamard
from kernels.launch import Launcher, rebased
from kernels.quant import (FP8QKV, V_SEQ_ALIGN, WGMMA_KEY_GROUP, FP8Config, check_qkv, check_v_key_order,
                           fp8qkv_shapes, scales_from_amax)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

FP8_TL_DTYPES = {torch.float8_e4m3fn: tl.float8e4nv, torch.float8_e5m2: tl.float8e5}
# Columns per dot and per load (at most): head dim 256 is handled as two halves of this width.
HALF_WIDTH = 128
# A program holds one item (rows x head dim, fp32) in registers: at most this many values per thread.
VALUES_PER_THREAD = 64


@dataclass(frozen=True)
class PrepassTiles:
    """Launch shape of the pre-pass (H200 choices: experiments/tune_fp8.py, log in docs/fp8.md)."""
    num_warps: int  # 8 holds a 128 x 128 fp32 tile in 64 registers a thread; 128 x 256 needs 16
    num_stages: int  # blocks in flight per program (TMA loads issued ahead of their use)
    programs_per_sm: int  # persistent grid size, per multiprocessor
    heads_fastest: bool = False  # walk blocks (batch, block, head): concurrent reads share DRAM pages
    # Programs for V per program for K (Q's and K's go by their blocks): a V block skips the rotation but is
    # stored transposed, so its cost differs from a Q or K block's.
    v_share: float = 1.0
    # V^T by a tensor-core product with a key permutation matrix (exact), stored as it comes out of the MMA,
    # instead of a register transpose before the store.
    v_by_dot: bool = False
    # 2-D descriptors over (batch·seq, heads·dim) where every block lies inside one sequence (seq a multiple of
    # the block, heads·dim contiguous): the tile comes out of TMA as the dot's operand, with no reshape, so the
    # wgmma can read it from shared memory instead of a copy in registers.
    flat: bool = False


# H200, 16k tokens x hidden 2048 (docs/fp8.md): the tiles of session 2 (at 256 the third stage, a load in
# flight during each block's work, took 0.196 -> 0.173 ms), since session 6 more programs for V, whose
# blocks cost more than Q's and K's (GPU time, CUDA graph: 0.097 -> 0.087 / 0.104 -> 0.094 / 0.168 -> 0.153 ms
# at head dims 64 / 128 / 256), and since session 12 V transposed on the tensor cores at 128 and 256, where a V
# block then costs what a Q or K block does (0.0945 -> 0.0885, 0.148 -> 0.139 ms; at 64 it lost, 0.086 -> 0.092).
PREPASS_TILES_SM90 = {64: PrepassTiles(4, 3, 4, v_share=1.33), 128: PrepassTiles(8, 3, 2, v_by_dot=True),
                      256: PrepassTiles(16, 3, 1, heads_fastest=True, v_by_dot=True)}
# Other GPUs: not measured; one stage (less shared memory).
PREPASS_TILES_GENERIC = {64: PrepassTiles(4, 1, 3), 128: PrepassTiles(8, 1, 2), 256: PrepassTiles(16, 1, 1)}
# Interpreter: few programs, so that each loops over several blocks.
PREPASS_TILES_INTERPRETER = PrepassTiles(4, 1, 1, heads_fastest=True)
INTERPRETER_PROGRAMS_PER_TENSOR = 2
WGMMA_GROUP = tl.constexpr(WGMMA_KEY_GROUP)


@triton.jit
def to_wgmma_keys(x, ROWS: tl.constexpr, KEYS: tl.constexpr):
    """kernels.quant.to_wgmma_key_order on the last axis of a [ROWS, KEYS] tile (KEYS a multiple of the group)."""
    return x.reshape(ROWS, KEYS // WGMMA_GROUP, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(ROWS, KEYS)


@triton.jit
def from_wgmma_keys(x, ROWS: tl.constexpr, KEYS: tl.constexpr):
    """kernels.quant.from_wgmma_key_order on the last axis of a [ROWS, KEYS] tile."""
    return x.reshape(ROWS, KEYS // WGMMA_GROUP, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(ROWS, KEYS)


@triton.jit
def key_permutation(ROWS: tl.constexpr, WGMMA_KEYS: tl.constexpr, dtype: tl.constexpr):
    """[ROWS, ROWS] 0/1 matrix P with (x^T·P)[:, j] = x^T[:, key(j)]: key(j) = j, or in wgmma order position
    16a + 4t + 2h + b takes key 16a + 8h + 2t + b (kernels.quant.to_wgmma_key_order)."""
    j = tl.arange(0, ROWS)
    if WGMMA_KEYS:
        r = j % WGMMA_GROUP
        key = j - r + 8 * ((r // 2) % 2) + 2 * (r // 4) + r % 2
    else:
        key = j
    return (tl.arange(0, ROWS)[:, None] == key[None, :]).to(dtype)


def prepass_tiles(head_dim: int, device: torch.device) -> PrepassTiles:
    if device.type != "cuda":
        return PREPASS_TILES_INTERPRETER
    table = PREPASS_TILES_SM90 if is_sm90(device) else PREPASS_TILES_GENERIC
    return table[head_dim]


@triton.jit
def _round_on_grid(x, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr):
    """fp32 x rounded to nearest even onto the grid of a float with MANT_BITS mantissa bits and smallest normal
    exponent MIN_EXP, in fp32 (adding and removing 1.5 * 2**23 ulps of the target grid)."""
    exp = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    ulp_exp = tl.maximum(exp, MIN_EXP) - MANT_BITS
    magic = (((ulp_exp + 23 + 127) << 23) | (1 << 22)).to(tl.float32, bitcast=True)
    return (x + magic) - magic


@triton.jit
def cast_rne(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Cast fp32 x to DTYPE (fp8 within ±its max, bfloat16 or float16), rounding to nearest even as the GPU's cvt
    does.

    The interpreter's own casts do not all: to fp8 it rounds ties up and drops the carry into the exponent (1.97
    becomes 1.0), to bfloat16 it truncates (its float16 cast, NumPy's, rounds to nearest even). So there x is
    first rounded onto the target's grid in fp32 and the cast is exact.
    """
    if INTERPRET:
        if DTYPE == tl.float8e4nv:
            x = _round_on_grid(x, 3, -6)
        elif DTYPE == tl.float8e5:
            x = _round_on_grid(x, 2, -14)
        elif DTYPE == tl.bfloat16:
            x = _round_on_grid(x, 7, -126)
    return x.to(DTYPE)


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _abs_max(y):
    """max |y| of a 2-d tile; NaN if y holds inf or NaN (its block then gets a NaN scale, as in kernels.quant).

    One NaN-propagating max per element (max.NaN; tl.max's fmax drops NaN, and a NaN test per element
    cost five instructions of mask packing); inf - inf then turns an infinite amax into NaN.
    """
    amax = tl.reduce(tl.reduce(tl.abs(y), 1, _max_keep_nan), 0, _max_keep_nan)
    return amax + (amax - amax)


@triton.jit
def _store_fp8(desc_out, y, inv_scale, fp8_max, b, h, seq_rows, row0, col0, ROWS: tl.constexpr,
               COLS: tl.constexpr, HEAD_DIM: tl.constexpr, TRANSPOSE_OUT: tl.constexpr, WGMMA_KEYS: tl.constexpr,
               V_DOT: tl.constexpr, FLAT: tl.constexpr, FP8_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    y = y * inv_scale
    if INTERPRET:  # on the GPU, cvt.rn.satfinite clamps to ±fp8 max itself (and, by PTX's spec, keeps NaN)
        y = tl.clamp(y, -fp8_max, fp8_max)
    y8 = cast_rne(y, FP8_DTYPE, INTERPRET)
    if TRANSPOSE_OUT:
        if not V_DOT:  # else y is V^T in its key order already
            y8 = y8.T
            if WGMMA_KEYS:  # row0 is a multiple of the group
                y8 = to_wgmma_keys(y8, COLS, ROWS)
        desc_out.store([b, h, col0, row0], y8.reshape(1, 1, COLS, ROWS))
    elif FLAT:  # (batch·seq, heads·dim); V^T (TRANSPOSE_OUT) keeps its 4-D descriptor
        desc_out.store([b * seq_rows + row0, h * HEAD_DIM + col0], y8)
    else:
        desc_out.store([b, row0, h, col0], y8.reshape(1, ROWS, 1, COLS))


@triton.jit
def _quantize_items(desc_x, desc_out, desc_dh, Scale, first, step, n_items, nheads, nchunks, chunks_per_block,
                    inv_sqrt_d, fp8_max,
                    ROWS: tl.constexpr, COLS: tl.constexpr, HEAD_DIM: tl.constexpr, HADAMARD: tl.constexpr,
                    TRANSPOSE_OUT: tl.constexpr, WGMMA_KEYS: tl.constexpr, V_DOT: tl.constexpr, FLAT: tl.constexpr,
                    MODE: tl.constexpr, FP8_DTYPE: tl.constexpr, NUM_STAGES: tl.constexpr,
                    HEADS_FASTEST: tl.constexpr, INTERPRET: tl.constexpr):
    """Items first, first + step, ... of one tensor; an item is rows [c*ROWS, (c+1)*ROWS) of one (batch, head),
    ordered (batch, c, head) if HEADS_FASTEST else (batch, head, c). TRANSPOSE_OUT: stored as (d, rows), the
    rows (keys) in wgmma order if WGMMA_KEYS (kernels.quant.to_wgmma_key_order), by a product with a key
    permutation matrix if V_DOT (then the tile is in the stored layout from the start). MODE "block": the item
    is a whole scale block, quantized with its own scale (stored); "amax": store the item's amax at
    Scale[(batch, head), c]; "given": quantize with Scale[(batch, head), c // chunks_per_block]. FLAT: the
    descriptors are 2-D (PrepassTiles.flat), a sequence nchunks·ROWS rows of them."""
    TWO_HALVES: tl.constexpr = HEAD_DIM > COLS
    seq_rows = nchunks * ROWS
    if HADAMARD:
        # D·H's first COLS columns: rows [0, COLS) are D0·H_COLS and, at head dim 256, rows [COLS, 2·COLS)
        # are D1·H_COLS (D0, D1: the halves of D).
        dh0 = desc_dh.load([0, 0])
        if INTERPRET:  # numpy has no bf16 matmul
            dh0 = dh0.to(tl.float32)
        if TWO_HALVES:
            dh1 = desc_dh.load([COLS, 0])
            if INTERPRET:
                dh1 = dh1.to(tl.float32)
    if TRANSPOSE_OUT and V_DOT:
        perm = key_permutation(ROWS, WGMMA_KEYS, tl.float32 if INTERPRET else desc_x.dtype)
    for item in tl.range(first, n_items, step, num_stages=NUM_STAGES):
        if HEADS_FASTEST:  # concurrent programs read the same rows of every head: nearby addresses
            h = item % nheads
            chunk = (item // nheads) % nchunks
            b = item // (nheads * nchunks)
        else:
            chunk = item % nchunks
            b = item // (nchunks * nheads)
            h = (item // nchunks) % nheads
        bh = b * nheads + h
        row0 = chunk * ROWS
        if FLAT:
            x0 = desc_x.load([b * seq_rows + row0, h * HEAD_DIM])
            if TWO_HALVES:
                x1 = desc_x.load([b * seq_rows + row0, h * HEAD_DIM + COLS])
        else:
            x0 = desc_x.load([b, row0, h, 0]).reshape(ROWS, COLS)
            if TWO_HALVES:
                x1 = desc_x.load([b, row0, h, COLS]).reshape(ROWS, COLS)
        if INTERPRET:  # numpy has no bf16 matmul; every branch below works in fp32 anyway
            x0 = x0.to(tl.float32)
            if TWO_HALVES:
                x1 = x1.to(tl.float32)
        if HADAMARD:
            u0 = tl.dot(x0, dh0)
            if TWO_HALVES:
                # x·(D·H_256) = [u0 + u1, u0 - u1] with u0 = x0·D0·H, u1 = x1·D1·H.
                u1 = tl.dot(x1, dh1)
                y0 = (u0 + u1) * inv_sqrt_d
                y1 = (u0 - u1) * inv_sqrt_d
            else:
                y0 = u0 * inv_sqrt_d
        elif TRANSPOSE_OUT and V_DOT:  # exact: one product by 1 per entry, fp32 sums of zeros
            y0 = tl.dot(x0.T, perm)
            if TWO_HALVES:
                y1 = tl.dot(x1.T, perm)
        else:
            y0 = x0.to(tl.float32)
            if TWO_HALVES:
                y1 = x1.to(tl.float32)

        scale_ptr = Scale + bh * (nchunks // chunks_per_block) + chunk // chunks_per_block
        if MODE == "given":
            scale = tl.load(scale_ptr)
        else:
            if TWO_HALVES:  # one cross-warp reduction for both halves (each one is a shared-memory round trip)
                amax = _abs_max(_max_keep_nan(tl.abs(y0), tl.abs(y1)))
            else:
                amax = _abs_max(y0)
            if MODE == "amax":
                tl.store(Scale + bh * nchunks + chunk, amax)
            else:
                scale = tl.where(amax == 0.0, 1.0, tl.math.div_rn(amax, fp8_max))
                tl.store(scale_ptr, scale)
        if MODE != "amax":
            # Rows past seqlen read as 0 and are stored as 0 up to V's padded length (ROWS is a multiple of
            # V_SEQ_ALIGN); past the tensor, TMA drops them.
            inv_scale = tl.math.div_rn(1.0, scale)
            _store_fp8(desc_out, y0, inv_scale, fp8_max, b, h, seq_rows, row0, 0, ROWS, COLS, HEAD_DIM,
                       TRANSPOSE_OUT, WGMMA_KEYS, V_DOT, FLAT, FP8_DTYPE, INTERPRET)
            if TWO_HALVES:
                _store_fp8(desc_out, y1, inv_scale, fp8_max, b, h, seq_rows, row0, COLS, ROWS, COLS,
                           HEAD_DIM, TRANSPOSE_OUT, WGMMA_KEYS, V_DOT, FLAT, FP8_DTYPE, INTERPRET)


@triton.jit
def _prepass_kernel(desc_q, desc_k, desc_v, desc_q8, desc_k8, desc_vt, desc_dh, QS, KS, VS,
                    nheads, nheads_kv, nchunks_q, nchunks_k, cpb_q, cpb_k, items_q, items_k,
                    programs_q, programs_k, inv_sqrt_d, fp8_max,
                    ROWS_Q: tl.constexpr, ROWS_K: tl.constexpr, COLS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    HADAMARD: tl.constexpr, V_WGMMA_KEYS: tl.constexpr, V_DOT: tl.constexpr, FLAT: tl.constexpr,
                    MODE: tl.constexpr, FP8_DTYPE: tl.constexpr, NUM_STAGES: tl.constexpr,
                    HEADS_FASTEST: tl.constexpr, INTERPRET: tl.constexpr, EARLY_DEPENDENTS: tl.constexpr):
    """Programs [0, programs_q) quantize Q, the next programs_k K, the rest V (items_k blocks, like K).
    EARLY_DEPENDENTS: a programmatic dependent launch after this one (the Gluon FP8 forward) may start its programs
    as SMs free up, not only once the last program here has ended; it waits for this kernel before reading."""
    if EARLY_DEPENDENTS:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    if pid < programs_q:
        _quantize_items(desc_q, desc_q8, desc_dh, QS, pid, programs_q, items_q, nheads, nchunks_q, cpb_q,
                        inv_sqrt_d, fp8_max, ROWS_Q, COLS, HEAD_DIM, HADAMARD, False, False, False, FLAT, MODE,
                        FP8_DTYPE, NUM_STAGES, HEADS_FASTEST, INTERPRET)
    elif pid < programs_q + programs_k:
        _quantize_items(desc_k, desc_k8, desc_dh, KS, pid - programs_q, programs_k, items_k, nheads_kv, nchunks_k,
                        cpb_k, inv_sqrt_d, fp8_max, ROWS_K, COLS, HEAD_DIM, HADAMARD, False, False, False, FLAT,
                        MODE, FP8_DTYPE, NUM_STAGES, HEADS_FASTEST, INTERPRET)
    else:
        programs_v = tl.num_programs(0) - programs_q - programs_k
        _quantize_items(desc_v, desc_vt, desc_dh, VS, pid - programs_q - programs_k, programs_v, items_k,
                        nheads_kv, nchunks_k, cpb_k, inv_sqrt_d, fp8_max, ROWS_K, COLS, HEAD_DIM, False, True,
                        V_WGMMA_KEYS, V_DOT, False, MODE, FP8_DTYPE, NUM_STAGES, HEADS_FASTEST, INTERPRET)


def _item_rows(block: int, head_dim: int, num_warps: int) -> int:
    """Rows per item: the whole scale block if it fits VALUES_PER_THREAD registers a thread, else a chunk of it."""
    return min(block, VALUES_PER_THREAD * 32 * num_warps // head_dim)


def _flattens(t: torch.Tensor) -> bool:
    """Whether (batch, seq, heads, dim) tensor t is a 2-D (batch·seq, heads·dim) one with unit column stride."""
    return t.stride(3) == 1 and t.stride(2) == t.shape[3] and t.stride(0) == t.shape[1] * t.stride(1)


launch_prepass = Launcher(_prepass_kernel)


@dataclass(frozen=True, eq=False)  # compared by identity: a Launcher key
class PrepassPlan:
    """What a pre-pass launch needs but the tensors' addresses, worked out once per configuration (`prepass_plan`);
    a call then allocates, rebases the descriptors and launches (host time per call: docs/tuning-gluon.md entry 45)."""
    grid: tuple
    descriptors: tuple  # of q, k, v, q8, k8, v_t over meta tensors (kernels.launch.rebased), then D·H's (cached)
    v_t_shape: tuple
    scale_shapes: tuple  # of q's, k's and v's scales: per (batch, head), one per scale block
    scalars: tuple  # the kernel's integer and float arguments after the scale pointers
    launches: tuple  # (MODE, constexprs, options) per launch: ("block", ...), or ("amax", ...), ("given", ...)
    chunks_per_block: tuple  # of q, k, v: chunk amaxes reduced into one scale (> 1 only on the two-launch path)


@functools.lru_cache(maxsize=256)
def prepass_plan(q_shape, k_shape, strides, dtype, device, config: FP8Config, v_key_order: str,
                 tiles: PrepassTiles | None) -> PrepassPlan:
    """The plan of a pre-pass over tma_ready q, k, v of these shapes, strides (q's, k's, v's) and dtype."""
    check_v_key_order(v_key_order)
    tiles = tiles or prepass_tiles(q_shape[3], device)
    b, sq, h, d = q_shape
    sk, hk = k_shape[1], k_shape[2]
    rows_q = _item_rows(config.block_m, d, tiles.num_warps)
    rows_k = _item_rows(config.block_n, d, tiles.num_warps)
    if min(rows_q, rows_k) % V_SEQ_ALIGN or rows_k % WGMMA_KEY_GROUP:
        raise ValueError(f"pre-pass rows per item must be a multiple of {V_SEQ_ALIGN} and {WGMMA_KEY_GROUP}, "
                         f"got {rows_q}, {rows_k}")
    nblocks_q, nblocks_k = triton.cdiv(sq, config.block_m), triton.cdiv(sk, config.block_n)
    cpb_q, cpb_k = config.block_m // rows_q, config.block_n // rows_k
    nchunks_q, nchunks_k = nblocks_q * cpb_q, nblocks_k * cpb_k
    items_q, items_k = b * h * nchunks_q, b * hk * nchunks_k
    cols = min(d, HALF_WIDTH)
    shapes = fp8qkv_shapes(q_shape, k_shape, config)
    # The kernel also writes the zero padding (MMAs read it: garbage could be NaN, and 0 * NaN = NaN).
    v_t_shape = shapes["v_t"]
    inputs = [torch.empty_strided(shape, stride, dtype=dtype, device="meta")
              for shape, stride in zip((q_shape, k_shape, k_shape), strides)]
    outputs = [torch.empty(shape, dtype=config.dtype, device="meta") for shape in (q_shape, k_shape, v_t_shape)]
    flat = tiles.flat and sq % rows_q == 0 and sk % rows_k == 0 and all(map(_flattens, inputs[:2]))
    views = [(list(t.shape), list(t.stride())) for t in inputs + outputs]
    blocks = [[1, rows_q, 1, cols], [1, rows_k, 1, cols], [1, rows_k, 1, cols],
              [1, rows_q, 1, cols], [1, rows_k, 1, cols], [1, 1, cols, rows_k]]
    if flat:  # q, k, q8, k8 as (batch·seq, heads·dim)
        for i, t in ((0, inputs[0]), (1, inputs[1]), (3, outputs[0]), (4, outputs[1])):
            views[i] = ([t.shape[0] * t.shape[1], t.shape[2] * t.shape[3]], [t.stride(1), 1])
            blocks[i] = [blocks[i][1], cols]
    dh = signed_hadamard(d, config.seed, dtype, device)
    views.append((list(dh.shape), list(dh.stride())))
    descriptors = tuple(TensorDescriptor(t, shape, stride, block)
                        for t, (shape, stride), block in zip((*inputs, *outputs, dh), views, (*blocks, [cols, cols])))

    if INTERPRET or device.type != "cuda":
        programs = 3 * INTERPRETER_PROGRAMS_PER_TENSOR
    else:
        programs = tiles.programs_per_sm * sm_count(device)
    # Programs in proportion to each tensor's items (V's weighted by v_share), at least one each.
    programs = max(programs, 3)
    weight = items_q + (1 + tiles.v_share) * items_k
    programs_q = max(1, min(items_q, round(programs * items_q / weight)))
    programs_k = max(1, min(items_k, round(programs * items_k / weight)))
    programs_v = max(1, min(items_k, programs - programs_q - programs_k))

    def launch_config(mode, tiles):
        constexprs = dict(ROWS_Q=rows_q, ROWS_K=rows_k, COLS=cols, HEAD_DIM=d, HADAMARD=config.hadamard,
                          V_WGMMA_KEYS=v_key_order == "wgmma", V_DOT=tiles.v_by_dot, FLAT=flat, MODE=mode,
                          FP8_DTYPE=FP8_TL_DTYPES[config.dtype], NUM_STAGES=tiles.num_stages,
                          HEADS_FASTEST=tiles.heads_fastest, INTERPRET=INTERPRET,
                          EARLY_DEPENDENTS=not INTERPRET and takes_pdl(device))
        return mode, constexprs, dict(num_warps=tiles.num_warps)

    if config.granularity == "block" and cpb_q == cpb_k == 1:
        launches = (launch_config("block", tiles),)
    else:
        # This path's amax launch needs more shared memory per stage: at head dim 256 three stages asked for
        # 262 KB on the H200 (of 227), so it runs with two, as the one-launch path did before its 2026-11-24 retune.
        two_launch_tiles = replace(tiles, num_stages=min(tiles.num_stages, 2)) if d == 256 else tiles
        launches = (launch_config("amax", two_launch_tiles), launch_config("given", two_launch_tiles))
    scale_shapes = (shapes["q_scale"], shapes["k_scale"], shapes["v_scale"])
    scalars = (h, hk, nchunks_q, nchunks_k, cpb_q, cpb_k, items_q, items_k, programs_q, programs_k,
               1.0 / math.sqrt(d), config.fp8_max)
    return PrepassPlan((programs_q + programs_k + programs_v,), descriptors, v_t_shape, scale_shapes, scalars,
                       launches, (cpb_q, cpb_k, cpb_k))


def quantize_qkv_triton(q, k, v, config: FP8Config, tiles: PrepassTiles | None = None,
                        v_key_order: str = "natural") -> FP8QKV:
    """The pre-pass on the GPU (or the interpreter): one launch for block scales whose blocks fit registers,
    two otherwise (chunk amax, then quantization with the reduced scales).

    tiles: a PrepassTiles to override the table (tuning). v_key_order: of V^T's keys (kernels.quant.FP8QKV).
    """
    check_qkv(q, k, v, config)
    return quantize_checked(q, k, v, config, tiles, v_key_order)


def quantize_checked(q, k, v, config: FP8Config, tiles: PrepassTiles | None = None,
                     v_key_order: str = "natural") -> FP8QKV:
    """quantize_qkv_triton on inputs that passed kernels.quant.check_qkv (kernels.fp8's entry points check them
    before they dispatch)."""
    x, launch = prepare_quantize(q, k, v, config, tiles, v_key_order)
    launch()
    return x


def prepare_quantize(q, k, v, config: FP8Config, tiles: PrepassTiles | None = None,
                     v_key_order: str = "natural") -> tuple[FP8QKV, Callable[[], None]]:
    """The pre-pass's outputs, allocated, and the call that launches it to fill them (inputs checked as for
    quantize_checked). A caller can prepare the launch of a kernel that reads them before making that call: the
    FP8 op (kernels.fp8) launches the Gluon forward right behind the pre-pass that way."""
    q, k, v = (tma_ready(t) for t in (q, k, v))
    dev = q.device
    plan = prepass_plan(q.shape, k.shape, (q.stride(), k.stride(), v.stride()), q.dtype, dev, config, v_key_order,
                        tiles)
    q8 = torch.empty(q.shape, dtype=config.dtype, device=dev)
    k8 = torch.empty(k.shape, dtype=config.dtype, device=dev)
    v_t = torch.empty(plan.v_t_shape, dtype=config.dtype, device=dev)
    descs = (*(rebased(desc, t) for desc, t in zip(plan.descriptors, (q, k, v, q8, k8, v_t))), plan.descriptors[-1])
    scales = tuple(torch.empty(shape, dtype=torch.float32, device=dev) for shape in plan.scale_shapes)

    def launch_one(launch_index, scale_args):
        # Every tensor argument is a descriptor or a fresh (aligned) allocation: the plan fixes the specialization.
        mode, constexprs, options = plan.launches[launch_index]
        launch_prepass(plan.grid, (*descs, *scale_args, *plan.scalars), constexprs, options, plan=(plan, mode))

    def launch():
        if len(plan.launches) == 1:
            launch_one(0, scales)
            return
        amax = tuple(torch.empty(*s.shape[:2], s.shape[2] * cpb, dtype=torch.float32, device=dev)
                     for s, cpb in zip(scales, plan.chunks_per_block))
        launch_one(0, amax)
        for s, a, cpb in zip(scales, amax, plan.chunks_per_block):  # chunk amaxes -> the config's scales
            s.copy_(scales_from_amax(a.view(*s.shape, cpb).amax(dim=3), config))
        launch_one(1, scales)

    q_scale, k_scale, v_scale = scales
    return FP8QKV(q=q8, k=k8, v_t=v_t, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, config=config,
                  v_key_order=v_key_order), launch
