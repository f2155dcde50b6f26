"""The causal tile orders of the Gluon forward's persistent scheduler, modelled on the host: balance and L2 traffic.

The orders are the host's own (kernels.gluon.scheduler.causal_order, which builds the tables the kernel
reads): `paired` (whole units only), `balanced` (the default: the last heads' tiles one by one) and
`longest_first`. The model: every program advances one key block per step, all in lock step, with `overhead`
idle steps at the start of each tile;
each K/V block read goes through an LRU cache of the L2's size, and a miss costs the block's bytes from
DRAM. It ignores timing differences between programs and anything but K/V, so it ranks orders; it does
not predict times (docs/tuning-gluon.md, entries 31 and 55, have the measured ones).

    python -m experiments.tile_order [--head-dims 64 128 256] [--seqlens 1024 ... 16384] [--l2-mb 50]
"""
import argparse
import math
from collections import OrderedDict

from kernels.gluon.scheduler import causal_key_blocks, causal_order

GRID = 132  # SMs of an H100 / H200
TOKENS, HIDDEN = 16384, 2048  # the paper's shapes: batch = TOKENS / seqlen, heads = HIDDEN / head_dim
# Order name -> causal_order's switches (paired, balance_tail).
ORDERS = {"paired": (True, False), "balanced": (True, True), "longest_first": (False, False)}


def order_lists(order, bh, n_m, seqlen, block_m, block_n, grid, head_kv_bytes=0):
    """Every program's (bh, m_block) tiles in one of ORDERS (seqlen_q = seqlen_k = seqlen)."""
    paired, tail = ORDERS[order]
    return causal_order(bh, n_m, seqlen, seqlen, block_m, block_n, grid, paired, tail, head_kv_bytes)


def key_blocks(m_block, seqlen, block_m, block_n):
    """Key blocks a causal tile visits (seqlen_q = seqlen_k), from the last one down."""
    return range(causal_key_blocks(m_block, seqlen, seqlen, block_m, block_n) - 1, -1, -1)


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
    lists = order_lists(order, bh, n_m, seqlen, block_m, block_n, min(grid, bh * n_m), 2 * seqlen * head_dim * 2)
    return simulate(lists, seqlen, block_m, block_n, 2 * block_n * head_dim * 2, l2_bytes)


def main():
    ap = argparse.ArgumentParser(prog="python -m experiments.tile_order", description=__doc__.split("\n")[0])
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--l2-mb", type=int, default=50)
    args = ap.parse_args()
    print("| head dim | seqlen | K/V MB | " + " | ".join(f"{o}: busiest, DRAM MB" for o in ORDERS) + " |")
    print("| --- " * (3 + len(ORDERS)) + "|")
    for d in args.head_dims:
        for s in args.seqlens:
            kv_mb = TOKENS * (HIDDEN // d) * d * 2 * 2 / 1e6
            cells = [f"{b:.3f}, {dram / 1e6:.0f}" for b, dram in
                     (model(d, s, order, l2_bytes=args.l2_mb << 20) for order in ORDERS)]
            print(f"| {d} | {s} | {kv_mb:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
