"""x·Mᵀ for two tensors in one launch: the FP8 op's backward maps its gradients with respect to Q·M and K·M back to
q and k.

`kernels.quant.rotate(x, seed, inverse=True)` cast to the gradients' dtype, as a kernel: in PyTorch it took a cast
to fp32, an fp32 matmul, a scaling and a cast back, each over the whole tensor. With M = D·H/sqrt(d)
(kernels.hadamard), x·Mᵀ = (x·H)·D/sqrt(d) since the Sylvester H is symmetric: tensor-core products with the ±1
matrix H (exact products, fp32 sums), the signs D and 1/sqrt(d) applied in fp32, one rounding to the output dtype.
An fp32 input (dQ', as the Gluon backward accumulates it) enters the products as two bf16 terms, hi + lo, which
carry 16 of its 24 mantissa bits: its one rounding comes after the rotation instead of before and after it, and
the cast pass before it goes away. At head dim 256 the product runs as two 128-wide halves and a butterfly
(H_256 = [[H, H], [H, -H]]), as in the pre-pass, so that a program holds 128 x 128 of H. A persistent grid split
between the two tensors by their bytes: each program loads H once and walks blocks of rows of one tensor.
"""
import functools
import math
import os

import torch
import triton
import triton.language as tl

from kernels.device import sm_count
from kernels.hadamard import hadamard_matrix, random_signs
from kernels.launch import Launcher
from kernels.triton.fp8_quant import cast_rne

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HALF_WIDTH = 128  # columns of H a program holds; head dim 256 is two halves
BLOCK_ROWS = 64  # rows per product
NUM_WARPS = 8  # at 4, head dim 256 (and 128 with an fp32 input) spilled registers
NUM_STAGES = 3  # row blocks whose loads are in flight
PROGRAMS_PER_SM = 4
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUTPUT_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def _times_h(x, h, ROWS: tl.constexpr, COLS: tl.constexpr, INTERPRET: tl.constexpr):
    """x·H: exact products, fp32 sums. An fp32 x enters as bf16 pairs (hi, lo) side by side along the sum, against
    H with each row twice (h: 2·COLS x COLS), so that hi·H + lo·H is one product."""
    if x.dtype == tl.float32:
        hi = x.to(tl.bfloat16)
        lo = (x - hi.to(tl.float32)).to(tl.bfloat16)  # exact difference; its rounding loses < 2^-16 of x
        x = tl.join(hi, lo).reshape(ROWS, 2 * COLS)
    if INTERPRET:  # numpy has no bf16 matmul
        x = x.to(tl.float32)
    return tl.dot(x, h)


@triton.jit
def _rotate_rows(X, Y, H, Signs, n_rows, first, step, inv_sqrt_d, HEAD_DIM: tl.constexpr, COLS: tl.constexpr,
                 BLOCK_ROWS: tl.constexpr, NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr):
    """Y = (X·H_d)·diag(Signs)·inv_sqrt_d for row blocks first, first + step, ... of the contiguous (n_rows,
    HEAD_DIM) X and Y; H: the COLS x COLS ±1 Sylvester matrix (COLS = HEAD_DIM, or its half at 256), each row
    twice if X is fp32 (_times_h)."""
    TWO_HALVES: tl.constexpr = HEAD_DIM > COLS
    H_ROWS: tl.constexpr = 2 * COLS if X.dtype.element_ty == tl.float32 else COLS
    cols = tl.arange(0, COLS)
    h = tl.load(H + tl.arange(0, H_ROWS)[:, None] * COLS + cols[None, :])
    if INTERPRET:
        h = h.to(tl.float32)
    s0 = tl.load(Signs + cols) * inv_sqrt_d
    if TWO_HALVES:
        s1 = tl.load(Signs + COLS + cols) * inv_sqrt_d
    for block in tl.range(first, tl.cdiv(n_rows, BLOCK_ROWS), step, num_stages=NUM_STAGES):
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        offs = rows[:, None].to(tl.int64) * HEAD_DIM + cols[None, :]
        mask = rows[:, None] < n_rows
        u0 = _times_h(tl.load(X + offs, mask=mask, other=0.0), h, BLOCK_ROWS, COLS, INTERPRET)
        if TWO_HALVES:
            # x·H_256 = [x0·H + x1·H, x0·H - x1·H]
            u1 = _times_h(tl.load(X + offs + COLS, mask=mask, other=0.0), h, BLOCK_ROWS, COLS, INTERPRET)
            tl.store(Y + offs, cast_rne((u0 + u1) * s0[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)
            tl.store(Y + offs + COLS, cast_rne((u0 - u1) * s1[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)
        else:
            tl.store(Y + offs, cast_rne(u0 * s0[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit
def _rotate_back_kernel(A, A_out, HA, B, B_out, HB, Signs, rows_a, rows_b, programs_a, inv_sqrt_d,
                        HEAD_DIM: tl.constexpr, COLS: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                        NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr):
    """Programs [0, programs_a) rotate A's rows, the rest B's (HA, HB: H in the dtype of A's and B's products)."""
    pid = tl.program_id(0)
    if pid < programs_a:
        _rotate_rows(A, A_out, HA, Signs, rows_a, pid, programs_a, inv_sqrt_d, HEAD_DIM, COLS, BLOCK_ROWS,
                     NUM_STAGES, INTERPRET)
    else:
        _rotate_rows(B, B_out, HB, Signs, rows_b, pid - programs_a, tl.num_programs(0) - programs_a, inv_sqrt_d,
                     HEAD_DIM, COLS, BLOCK_ROWS, NUM_STAGES, INTERPRET)


launch_rotate_back = Launcher(_rotate_back_kernel)


@functools.lru_cache(maxsize=64)
def _hadamard(cols: int, input_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """H (exact) as _rotate_rows takes it for an input dtype; cached, since every call loads it."""
    if input_dtype == torch.float32:  # bf16, each row twice: against the input's (hi, lo) pairs
        return hadamard_matrix(cols).repeat_interleave(2, dim=0).to(dtype=torch.bfloat16, device=device)
    return hadamard_matrix(cols).to(dtype=input_dtype, device=device).contiguous()


@functools.lru_cache(maxsize=64)
def _signs(head_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    return random_signs(head_dim, seed).to(dtype=torch.float32, device=device)


def rotate_back(a: torch.Tensor, b: torch.Tensor, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(a·Mᵀ, b·Mᵀ) in `dtype` (bf16/fp16), M = kernels.hadamard.incoherence_matrix(d, seed) over the last dim, in
    one launch; a, b: contiguous fp32/bf16/fp16 tensors on the GPU (or the interpreter's CPU) with the same last
    dim, 64, 128 or 256 (the FP8 backward's dQ' and dK')."""
    for x in (a, b):
        if x.dtype not in INPUT_DTYPES or x.shape[-1] not in (64, 128, 256) or not x.is_contiguous():
            raise ValueError(f"rotate_back takes contiguous fp32/bf16/fp16 tensors with last dim 64, 128 or 256, "
                             f"got {x.dtype} {tuple(x.shape)} strides {x.stride()}")
    if a.shape[-1] != b.shape[-1] or a.device != b.device:
        raise ValueError(f"rotate_back's tensors must share their last dim and device, got {tuple(a.shape)} on "
                         f"{a.device} and {tuple(b.shape)} on {b.device}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"rotate_back rounds to bf16 or fp16, got {dtype}")
    d, dev = a.shape[-1], a.device
    cols = min(d, HALF_WIDTH)
    ha, hb = (_hadamard(cols, x.dtype, dev) for x in (a, b))
    a_out, b_out = (torch.empty(x.shape, dtype=dtype, device=dev) for x in (a, b))
    rows_a, rows_b = a.numel() // d, b.numel() // d
    blocks_a, blocks_b = triton.cdiv(rows_a, BLOCK_ROWS), triton.cdiv(rows_b, BLOCK_ROWS)
    programs = 4 if INTERPRET or dev.type != "cuda" else PROGRAMS_PER_SM * sm_count(dev)
    # Programs in proportion to the bytes each tensor reads, at least one each.
    bytes_a, bytes_b = a.numel() * a.element_size(), b.numel() * b.element_size()
    programs_a = max(1, min(blocks_a, round(programs * bytes_a / (bytes_a + bytes_b))))
    programs_b = max(1, min(blocks_b, programs - programs_a))
    launch_rotate_back((programs_a + programs_b,),
                       (a, a_out, ha, b, b_out, hb, _signs(d, seed, dev), rows_a, rows_b, programs_a,
                        1.0 / math.sqrt(d)),
                       dict(HEAD_DIM=d, COLS=cols, BLOCK_ROWS=BLOCK_ROWS, NUM_STAGES=NUM_STAGES, INTERPRET=INTERPRET),
                       dict(num_warps=NUM_WARPS))
    return a_out, b_out
