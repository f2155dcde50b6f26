"""Random-sign Hadamard matrices: orthogonality, score invariance, outlier spreading, seeds."""
import math

import pytest
import torch

from kernels.hadamard import hadamard_matrix, incoherence_matrix, random_signs, signed_hadamard

SIZES = [1, 2, 16, 64, 128, 256]


@pytest.mark.parametrize("n", SIZES)
def test_sylvester_hadamard_is_orthogonal_with_unit_entries(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n) and h.dtype == torch.float64
    assert torch.equal(h.abs(), torch.ones(n, n, dtype=torch.float64))
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("n", [64, 128, 256])
def test_incoherence_matrix_is_orthogonal_and_keeps_scores(n):
    m = incoherence_matrix(n, seed=3)
    torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(37, n, generator=gen, dtype=torch.float64)
    k = torch.randn(29, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close((q @ m) @ (k @ m).T, q @ k.T, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("n", [64, 256])
def test_rotation_spreads_an_outlier_over_all_channels(n):
    """A lone outlier a in one channel becomes ±a/sqrt(n) in every channel: the amax drops by sqrt(n)."""
    x = torch.zeros(n, dtype=torch.float64)
    x[n // 3] = 1000.0
    y = x @ incoherence_matrix(n, seed=0)
    torch.testing.assert_close(y.abs(), torch.full((n,), 1000.0 / math.sqrt(n), dtype=torch.float64))


def test_signs_come_from_the_seed():
    a, b = random_signs(128, seed=5), random_signs(128, seed=5)
    assert torch.equal(a, b)
    assert set(a.tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, random_signs(128, seed=6))
    dh = signed_hadamard(128, 5)
    assert torch.equal(dh, a[:, None] * hadamard_matrix(128))
    assert torch.equal(signed_hadamard(128, 5, torch.bfloat16).double(), dh)  # ±1 is exact in bf16


@pytest.mark.parametrize("n", [0, 3, 96, 100])
def test_non_power_of_two_is_rejected(n):
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_matrix(n)
