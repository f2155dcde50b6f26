"""experiments.rounds: the orders that balance positions and predecessors over rounds."""
from collections import Counter

import pytest

from experiments.rounds import round_order


@pytest.mark.parametrize("n", range(1, 8))
def test_round_orders_balance_positions_and_predecessors(n):
    """Over n rounds (2n for odd n) each call runs once at every position as often as any other, and right after
    every other call equally often: neither a position nor a predecessor favours one call."""
    rounds = n if n % 2 == 0 else 2 * n
    rows = [round_order(n, r) for r in range(rounds)]
    assert all(sorted(row) == list(range(n)) for row in rows)
    positions = Counter((p, i) for row in rows for p, i in enumerate(row))
    assert set(positions) == {(p, i) for p in range(n) for i in range(n)} and len(set(positions.values())) == 1
    pairs = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1
    assert [round_order(n, r + rounds) for r in range(rounds)] == rows
