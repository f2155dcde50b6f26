"""Random-sign Hadamard matrices for incoherent processing (FA3 paper, section 3.3).

M = D·H/sqrt(n), with H the n×n Sylvester Hadamard matrix (entries ±1) and D a
diagonal of random signs drawn from a seed, is orthogonal: (QM)(KM)ᵀ = QKᵀ.
Multiplying Q and K by M before FP8 quantization spreads an outlier in one
channel over all n channels, so a block's amax (hence its quantization step)
shrinks relative to its typical entry.

Kernels multiply by the ±1 matrix D·H (exact in bf16/fp16) on the tensor cores
with fp32 accumulation and apply 1/sqrt(n) in fp32 afterwards.
"""
import functools
import math

import torch


def _check_power_of_two(n: int) -> None:
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard transform needs a power-of-two size, got {n}")


def hadamard_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Sylvester's n×n Hadamard matrix: entries ±1, H Hᵀ = n·I, symmetric."""
    _check_power_of_two(n)
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def random_signs(n: int, seed: int, device=None) -> torch.Tensor:
    """n values of ±1 (float64), the same for a seed on every device and run."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64) * 2 - 1
    return signs.to(dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=64)
def signed_hadamard(n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """D·H (entries ±1, exact in any float dtype); cached, since kernels load it on every call."""
    d = random_signs(n, seed)
    return (d[:, None] * hadamard_matrix(n)).to(dtype=dtype, device=device)


def incoherence_matrix(n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthogonal M = D·H/sqrt(n)."""
    return (signed_hadamard(n, seed) / math.sqrt(n)).to(dtype=dtype, device=device)
