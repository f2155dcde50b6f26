"""The order in which a benchmark's calls are timed, round after round (experiments.ab_tiles, experiments.paper).

A kernel timed right after another reads the GPU's power state that one left, and on an H100 the calls at a
round's two ends read up to 8% above those in its middle (docs/tuning-gluon.md, entry 59). A fixed order, or
one merely reversed every other round, keeps the same calls at the ends round after round. The rows of a
Williams design do not: over as many rounds as calls (twice as many for an odd count), each call runs once at
every position and right after every other call equally often; fewer rounds still move every call through
different positions.
"""


def round_order(n, rnd):
    """Indices of n calls in the order round rnd times them: row rnd % n of a Williams design. Its first row is
    0, 1, n-1, 2, n-2, ..., the others shift it by one; for odd n, the next n rounds run the rows reversed."""
    first, lo, hi = [0], 1, n - 1
    while lo <= hi:
        first.append(lo)
        if lo != hi:
            first.append(hi)
        lo, hi = lo + 1, hi - 1
    row = [(i + rnd) % n for i in first]
    return row[::-1] if n % 2 and (rnd // n) % 2 else row
