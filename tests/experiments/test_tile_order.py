"""The host model of the Gluon forward's causal tile orders (experiments.tile_order)."""
import itertools

import pytest

from experiments.tile_order import key_blocks, longest_first, model, paired


@pytest.mark.parametrize("order", [paired, longest_first])
def test_every_tile_dealt_once(order):
    for bh, n_m, grid in itertools.product([1, 3, 7, 32, 128], [1, 2, 3, 11, 16, 17], [1, 5, 132]):
        grid = min(grid, bh * n_m)
        dealt = sorted(t for pid in range(grid) for t in order(pid, grid, bh, n_m))
        assert dealt == sorted(itertools.product(range(bh), range(n_m))), (order.__name__, bh, n_m, grid)


def test_paired_units_cost_alike():
    # Every program runs whole units of n_m + 1 m-block widths (even n_m), so key blocks differ by one unit at most.
    bh, n_m, grid = 40, 16, 132
    work = [sum(len(key_blocks(m, 2048, 128, 128)) for _, m in paired(pid, grid, bh, n_m)) for pid in range(grid)]
    assert max(work) - min(work) == n_m + 1


def test_paired_order_reads_kv_once_where_longest_first_does_not():
    # hd128 at 2k keys: 128 heads of 16 m-blocks; a longest-first wave spans 132 heads' K/V.
    kv_bytes = 16384 * 2048 * 2 * 2
    busiest, dram = model(128, 2048, paired)
    assert busiest < 1.04 and dram == kv_bytes
    busiest, dram = model(128, 2048, longest_first)
    assert busiest < 1.04 and dram > 5 * kv_bytes
