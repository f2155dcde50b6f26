"""x·Mᵀ in one pass: the FP8 op's backward maps its gradients with respect to Q·M and K·M back to q and k.

`kernels.quant.rotate(x, seed, inverse=True)` cast to x's dtype, as a kernel: in PyTorch it took a cast to fp32,
an fp32 matmul, a scaling and a cast back, each over the whole tensor. With M = D·H/sqrt(d) (kernels.hadamard),
x·Mᵀ = (x·H)·D/sqrt(d) since the Sylvester H is symmetric: one tensor-core product with the ±1 matrix H (exact
products, fp32 sums), the signs D and 1/sqrt(d) applied in fp32, one rounding to x's dtype. At head dim 256 the
product runs as two 128-wide halves and a butterfly (H_256 = [[H, H], [H, -H]]), as in the pre-pass, so that a
program holds 128 x 128 of H. A persistent grid: each program loads H once and walks blocks of rows.
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
NUM_WARPS = 4
NUM_STAGES = 3  # row blocks whose loads are in flight
PROGRAMS_PER_SM = 4


@triton.jit
def _rotate_back_kernel(X, Y, H, Signs, n_rows, inv_sqrt_d, HEAD_DIM: tl.constexpr, COLS: tl.constexpr,
                        BLOCK_ROWS: tl.constexpr, NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr):
    """Y = (X·H_d)·diag(Signs)·inv_sqrt_d for the contiguous (n_rows, HEAD_DIM) X and Y; H: the COLS x COLS ±1
    Sylvester matrix (COLS = HEAD_DIM, or its half at 256)."""
    TWO_HALVES: tl.constexpr = HEAD_DIM > COLS
    cols = tl.arange(0, COLS)
    h = tl.load(H + cols[:, None] * COLS + cols[None, :])
    if INTERPRET:  # numpy has no bf16 matmul
        h = h.to(tl.float32)
    s0 = tl.load(Signs + cols) * inv_sqrt_d
    if TWO_HALVES:
        s1 = tl.load(Signs + COLS + cols) * inv_sqrt_d
    for block in tl.range(tl.program_id(0), tl.cdiv(n_rows, BLOCK_ROWS), tl.num_programs(0), num_stages=NUM_STAGES):
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        offs = rows[:, None].to(tl.int64) * HEAD_DIM + cols[None, :]
        mask = rows[:, None] < n_rows
        x0 = tl.load(X + offs, mask=mask, other=0.0)
        if INTERPRET:
            x0 = x0.to(tl.float32)
        u0 = tl.dot(x0, h)
        if TWO_HALVES:
            # x·H_256 = [x0·H + x1·H, x0·H - x1·H]
            x1 = tl.load(X + offs + COLS, mask=mask, other=0.0)
            if INTERPRET:
                x1 = x1.to(tl.float32)
            u1 = tl.dot(x1, h)
            tl.store(Y + offs, cast_rne((u0 + u1) * s0[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)
            tl.store(Y + offs + COLS, cast_rne((u0 - u1) * s1[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)
        else:
            tl.store(Y + offs, cast_rne(u0 * s0[None, :], Y.dtype.element_ty, INTERPRET), mask=mask)


launch_rotate_back = Launcher(_rotate_back_kernel)


@functools.lru_cache(maxsize=64)
def _operands(head_dim: int, seed: int, dtype: torch.dtype, device: torch.device):
    """H (dtype, exact) and D's signs (fp32) for a head dim and seed; cached, since every call loads them."""
    cols = min(head_dim, HALF_WIDTH)
    return (hadamard_matrix(cols).to(dtype=dtype, device=device).contiguous(),
            random_signs(head_dim, seed).to(dtype=torch.float32, device=device))


def rotate_back(x: torch.Tensor, seed: int) -> torch.Tensor:
    """x·Mᵀ (M = kernels.hadamard.incoherence_matrix(d, seed)) over x's last dim, in x's dtype and shape; x a
    contiguous bf16/fp16 tensor on the GPU (or the interpreter's CPU) with last dim 64, 128 or 256."""
    if x.dtype not in (torch.bfloat16, torch.float16) or x.shape[-1] not in (64, 128, 256) or not x.is_contiguous():
        raise ValueError(f"rotate_back takes a contiguous bf16/fp16 tensor with last dim 64, 128 or 256, got "
                         f"{x.dtype} {tuple(x.shape)} strides {x.stride()}")
    d = x.shape[-1]
    h, signs = _operands(d, seed, x.dtype, x.device)
    y = torch.empty_like(x)
    n_rows = x.numel() // d
    blocks = triton.cdiv(n_rows, BLOCK_ROWS)
    programs = 2 if INTERPRET or x.device.type != "cuda" else PROGRAMS_PER_SM * sm_count(x.device)
    launch_rotate_back((max(1, min(blocks, programs)),), (x, y, h, signs, n_rows, 1.0 / math.sqrt(d)),
                       dict(HEAD_DIM=d, COLS=h.shape[0], BLOCK_ROWS=BLOCK_ROWS, NUM_STAGES=NUM_STAGES,
                            INTERPRET=INTERPRET), dict(num_warps=NUM_WARPS))
    return y
