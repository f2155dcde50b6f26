"""The causal tile orders of the Gluon forward's persistent scheduler, modelled on the host: balance and L2 traffic.

`paired` and `longest_first` list each program's tiles as kernels/gluon/scheduler.py deals them (its
`paired_tile` and the longest-first branch of `tile`; keep the two in step). The model: every program
advances one key block per step, all in lock step, with `overhead` idle steps at the start of each tile;
each K/V block read goes through an LRU cache of the L2's size, and a miss costs the block's bytes from
DRAM. It ignores timing differences between programs and anything but K/V, so it ranks orders; it does
not predict times (docs/tuning-gluon.md, entry 31, has the measured ones).

    python -m experiments.tile_order [--head-dims 64 128 256] [--seqlens 1024 ... 16384] [--l2-mb 50]
"""
import argparse
import math
from collections import OrderedDict

GRID = 132  # SMs of an H100 / H200
TOKENS, HIDDEN = 16384, 2048  # the paper's shapes: batch = TOKENS / seqlen, heads = HIDDEN / head_dim


def paired(pid, grid, bh, n_m):
    """Program pid's (bh, m_block) tiles in the paired order: whole units (m-blocks n_m-1-j and j, or j+1 when
    n_m is odd) pid, pid + grid, ..., head after head; then single m-block-0 tiles dealt from the last program."""
    pairs = n_m // 2
    tiles = []
    for unit in range(pid, bh * pairs, grid):
        j = unit % pairs
        tiles += [(unit // pairs, n_m - 1 - j), (unit // pairs, j + n_m % 2)]
    singles = bh * (n_m % 2)
    return tiles + [(s, 0) for s in range(grid - 1 - pid, singles, grid)]


def longest_first(pid, grid, bh, n_m):
    """Program pid's tiles in the longest-first order: m-block-major over all heads, every other wave reversed."""
    total = bh * n_m
    tiles = []
    for wave in range(math.ceil((total - pid) / grid)):
        size = min(grid, total - wave * grid)
        tile_id = wave * grid + (size - 1 - pid if wave % 2 else pid)
        tiles.append((tile_id % bh, n_m - 1 - tile_id // bh))
    return tiles


def key_blocks(m_block, seqlen, block_m, block_n):
    """Key blocks a causal tile visits (seqlen_q = seqlen_k), from the last one down."""
    return range(math.ceil(min(seqlen, (m_block + 1) * block_m) / block_n) - 1, -1, -1)


def simulate(programs, seqlen, block_m, block_n, block_bytes, l2_bytes, overhead=1):
    """(busiest program's steps / the average, modelled DRAM bytes of K/V) of programs' tile lists."""
    streams = []
    for tiles in programs:
        steps = []
        for bh, m in tiles:
            steps += [None] * overhead + [(bh, j) for j in key_blocks(m, seqlen, block_m, block_n)]
        streams.append(steps)
    cache, capacity, misses = OrderedDict(), l2_bytes // block_bytes, 0
    for t in range(max(len(s) for s in streams)):
        for steps in streams:
            block = steps[t] if t < len(steps) else None
            if block is None:
                continue
            if block in cache:
                cache.move_to_end(block)
            else:
                misses += 1
                cache[block] = None
                if len(cache) > capacity:
                    cache.popitem(last=False)
    average = sum(len(s) for s in streams) / len(streams)
    return max(len(s) for s in streams) / average, misses * block_bytes


def model(head_dim, seqlen, order, grid=GRID, l2_bytes=50 << 20):
    """(busiest / average, modelled DRAM bytes) of the causal 16-bit forward's default tile at a paper shape."""
    from kernels.gluon.forward import default_tile
    tile = default_tile(2, head_dim, causal=True)
    block_m, block_n = tile.block_m, tile.block_n
    bh = TOKENS // seqlen * (HIDDEN // head_dim)
    n_m = math.ceil(seqlen / block_m)
    programs = [order(pid, grid, bh, n_m) for pid in range(min(grid, bh * n_m))]
    return simulate(programs, seqlen, block_m, block_n, 2 * block_n * head_dim * 2, l2_bytes)


def main():
    ap = argparse.ArgumentParser(prog="python -m experiments.tile_order", description=__doc__.split("\n")[0])
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--l2-mb", type=int, default=50)
    args = ap.parse_args()
    print("| head dim | seqlen | K/V MB | paired: busiest, DRAM MB | longest first: busiest, DRAM MB |")
    print("| --- | --- | --- | --- | --- |")
    for d in args.head_dims:
        for s in args.seqlens:
            kv_mb = TOKENS * (HIDDEN // d) * d * 2 * 2 / 1e6
            cells = [f"{b:.3f}, {dram / 1e6:.0f}" for b, dram in
                     (model(d, s, order, l2_bytes=args.l2_mb << 20) for order in (paired, longest_first))]
            print(f"| {d} | {s} | {kv_mb:.0f} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
