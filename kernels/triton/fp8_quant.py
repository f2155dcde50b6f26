"""FP8 pre-pass kernel: Hadamard rotation, block amax, scale and cast in one pass per tensor.

One program owns one scale block (`block` rows of one batch and head). It
reads the block twice in sub-tiles through TMA descriptors, once for the amax
and once to quantize (the second read hits L2), so that even 256-row blocks
at head dim 256 fit on chip. The layouts and the arithmetic are
kernels.quant's, which the tests hold this kernel to.
"""
import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.checks import tma_ready
from kernels.hadamard import signed_hadamard
from kernels.quant import FP8QKV, V_SEQ_ALIGN, FP8Config, check_qkv, scales_from_amax

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

FP8_TL_DTYPES = {torch.float8_e4m3fn: tl.float8e4nv, torch.float8_e5m2: tl.float8e5}
# (rows, columns, num_warps, num_stages): a block is walked in steps of `rows`
# rows and, for the rotation, `columns` output columns of D·H at a time. One
# stage: the loads are not multi-buffered (at head dim 256 two stages overflow
# shared memory). H200 winner at head dim 128 among tiles that run at every
# head dim (experiments/tune_fp8.py, docs/fp8.md).
QUANT_TILES = (128, 128, 8, 1)
QUANT_TILES_INTERPRETER = (32, 64, 4, 1)


@triton.jit
def to_fp8(x, FP8_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Cast fp32 x (within ±fp8 max) to fp8, rounding to nearest even as the GPU's cvt does.

    The interpreter's own cast rounds ties up and drops the carry into the
    exponent (1.97 becomes 1.0), so there x is first rounded onto the fp8
    grid in fp32 (adding and removing 1.5 * 2**23 ulps) and the cast is exact.
    """
    if INTERPRET:
        if FP8_DTYPE == tl.float8e4nv:
            mant_bits: tl.constexpr = 3
            min_exp: tl.constexpr = -6
        else:
            mant_bits: tl.constexpr = 2
            min_exp: tl.constexpr = -14
        exp = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        ulp_exp = tl.maximum(exp, min_exp) - mant_bits
        magic = (((ulp_exp + 23 + 127) << 23) | (1 << 22)).to(tl.float32, bitcast=True)
        x = (x + magic) - magic
    return x.to(FP8_DTYPE)


@triton.jit
def _sub_tile(desc_x, desc_dh, x, b, h, row0, col0, inv_sqrt_d,
              ROWS: tl.constexpr, COLS: tl.constexpr, HADAMARD: tl.constexpr, INTERPRET: tl.constexpr):
    """Columns [col0, col0+COLS) of rows [row0, row0+ROWS) of x·M (x: those rows, all columns), or of x, in fp32."""
    if HADAMARD:
        dh = desc_dh.load([0, col0])
        if INTERPRET:  # numpy has no bf16 matmul
            dh = dh.to(tl.float32)
        # ±1 entries: exact products, fp32 accumulation; 1/sqrt(d) applied in fp32.
        return tl.dot(x, dh) * inv_sqrt_d
    else:
        return desc_x.load([b, row0, h, col0]).reshape(ROWS, COLS).to(tl.float32)


@triton.jit
def _rows(desc_x, b, h, row0, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HADAMARD: tl.constexpr,
          INTERPRET: tl.constexpr):
    """Rows [row0, row0+ROWS) of x, all columns, when the rotation needs them (else a placeholder); 0 past seqlen."""
    if HADAMARD:
        x = desc_x.load([b, row0, h, 0]).reshape(ROWS, HEAD_DIM)
        if INTERPRET:
            x = x.to(tl.float32)
        return x
    else:
        return 0.0


@triton.jit
def _quantize_kernel(desc_x, desc_dh, desc_out, Scale, seqlen, nheads, nblocks, inv_sqrt_d, fp8_max,
                     BLOCK: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     HADAMARD: tl.constexpr, TRANSPOSE_OUT: tl.constexpr, MODE: tl.constexpr,
                     FP8_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """MODE "amax": store each block's amax (head/tensor scales are reduced from those on the host);
    "block": quantize with the block's own scale (and store it); "given": quantize with Scale's.
    TRANSPOSE_OUT writes out[b, h, d, s] (V), else out[b, s, h, d]."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // nheads
    h = bh % nheads
    scale_ptr = Scale + bh * nblocks + blk
    row_start = blk * BLOCK
    row_end = tl.minimum(row_start + BLOCK, seqlen)

    if MODE == "given":
        scale = tl.load(scale_ptr)
    else:
        amax = tl.zeros((), tl.float32)
        poison = tl.zeros((), tl.float32)
        for row0 in range(row_start, row_end, ROWS):
            x = _rows(desc_x, b, h, row0, ROWS, HEAD_DIM, HADAMARD, INTERPRET)
            for col0 in tl.static_range(0, HEAD_DIM, COLS):
                y = _sub_tile(desc_x, desc_dh, x, b, h, row0, col0, inv_sqrt_d, ROWS, COLS, HADAMARD, INTERPRET)
                amax = tl.maximum(amax, tl.max(tl.max(tl.abs(y), axis=1), axis=0))
                # y * 0 is NaN exactly where y is inf or NaN (a max may drop a NaN): it poisons the block.
                poison += tl.sum(tl.sum(y * 0.0, axis=1), axis=0)
        amax += poison
        if MODE == "amax":
            tl.store(scale_ptr, amax)
        else:
            scale = tl.where(amax == 0.0, 1.0, tl.math.div_rn(amax, fp8_max))
            tl.store(scale_ptr, scale)

    if MODE != "amax":
        inv_scale = tl.math.div_rn(1.0, scale)
        # Rows past seqlen read as 0 and are stored as 0 up to V's padded length (ROWS is a multiple of
        # V_SEQ_ALIGN, so the last sub-tile covers the padding); past the tensor, TMA drops them.
        for row0 in range(row_start, row_end, ROWS):
            x = _rows(desc_x, b, h, row0, ROWS, HEAD_DIM, HADAMARD, INTERPRET)
            for col0 in tl.static_range(0, HEAD_DIM, COLS):
                y = _sub_tile(desc_x, desc_dh, x, b, h, row0, col0, inv_sqrt_d, ROWS, COLS, HADAMARD, INTERPRET)
                y8 = to_fp8(tl.clamp(y * inv_scale, -fp8_max, fp8_max), FP8_DTYPE, INTERPRET)
                if TRANSPOSE_OUT:
                    desc_out.store([b, h, col0, row0], y8.T.reshape(1, 1, COLS, ROWS))
                else:
                    desc_out.store([b, row0, h, col0], y8.reshape(1, ROWS, 1, COLS))


def _quantize(x: torch.Tensor, out: torch.Tensor, block: int, rotate: bool, config: FP8Config, tiles,
              transpose_out=False):
    """Quantize x (batch, seqlen, heads, d) into `out` ((batch, heads, d, seqlen) if transpose_out); returns scales."""
    b, s, h, d = x.shape
    rows, cols, num_warps, num_stages = tiles
    rows, cols = min(rows, block), min(cols, d)
    if rows % V_SEQ_ALIGN:
        raise ValueError(f"pre-pass sub-tile rows must be a multiple of {V_SEQ_ALIGN}, got {rows}")
    nblocks = triton.cdiv(s, block)
    scale = torch.empty(b, h, nblocks, dtype=torch.float32, device=x.device)
    x = tma_ready(x)
    desc_x = TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, 1, d if rotate else cols])
    dh = signed_hadamard(d, config.seed, x.dtype, x.device)
    desc_dh = TensorDescriptor(dh, list(dh.shape), list(dh.stride()), [d, cols])
    out_block = [1, 1, cols, rows] if transpose_out else [1, rows, 1, cols]
    desc_out = TensorDescriptor(out, list(out.shape), list(out.stride()), out_block)

    def launch(mode):
        _quantize_kernel[(nblocks, b * h)](
            desc_x, desc_dh, desc_out, scale, s, h, nblocks, 1.0 / math.sqrt(d), config.fp8_max,
            BLOCK=block, ROWS=rows, COLS=cols, HEAD_DIM=d, HADAMARD=rotate, TRANSPOSE_OUT=transpose_out,
            MODE=mode, FP8_DTYPE=FP8_TL_DTYPES[config.dtype], INTERPRET=INTERPRET, num_warps=num_warps,
            num_stages=num_stages,
        )

    if config.granularity == "block":
        launch("block")
    else:
        launch("amax")
        scale.copy_(scales_from_amax(scale, config))
        launch("given")
    return scale


def quantize_qkv_triton(q, k, v, config: FP8Config, tiles=None) -> FP8QKV:
    """The pre-pass on the GPU (or the interpreter): three launches for block scales, six otherwise.

    tiles: (rows, columns, num_warps, num_stages) to override QUANT_TILES (tuning).
    """
    check_qkv(q, k, v, config)
    tiles = tiles or (QUANT_TILES_INTERPRETER if INTERPRET else QUANT_TILES)
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    q8 = torch.empty(q.shape, dtype=config.dtype, device=q.device)
    k8 = torch.empty(k.shape, dtype=config.dtype, device=q.device)
    # The kernel also writes the zero padding (MMAs read it: garbage could be NaN, and 0 * NaN = NaN).
    v_t = torch.empty(b, hk, d, triton.cdiv(sk, V_SEQ_ALIGN) * V_SEQ_ALIGN, dtype=config.dtype, device=q.device)
    q_scale = _quantize(q, q8, config.block_m, config.hadamard, config, tiles)
    k_scale = _quantize(k, k8, config.block_n, config.hadamard, config, tiles)
    v_scale = _quantize(v, v_t, config.block_n, False, config, tiles, transpose_out=True)
    return FP8QKV(q=q8, k=k8, v_t=v_t, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, config=config)
