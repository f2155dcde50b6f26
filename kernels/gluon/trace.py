"""Where a forward tile's cycles go: the consumers' %clock64 stamps, read back as phase lengths.

With a buffer from `trace_buffer` passed as `trace=` to kernels.gluon.forward's
attention_forward or fp8_attention_forward, every consumer warpgroup stamps
its first TRACE_TILES tiles at TRACE_EVENTS points (kernel.stamp): the tile's
start, Q and its scales ready, all key blocks attended (the last PV done), O
and LSE written. `phase_cycles` turns that into medians over whole tiles, per
consumer. Stamps are SM cycles: compare builds within one process (the clock,
and memory latency in cycles, move between runs). Non-causal tiles of two
lengths give a tile's fixed cost beside its cost per key block (`fixed_cost`).
"""
import torch

from kernels.device import sm_count

from .kernel import TRACE_EVENTS, TRACE_TILES

PHASES = ("q_wait", "attend", "epilogue", "gap", "tile")


def trace_buffer(device, consumers: int) -> torch.Tensor:
    """Zeroed stamps for one launch: (programs, consumers, TRACE_TILES, TRACE_EVENTS) int64; `consumers` is the
    tile's (block_m / 64 warp-specialized, else 1)."""
    return torch.zeros(sm_count(device), consumers, TRACE_TILES.value, TRACE_EVENTS.value, dtype=torch.int64,
                       device=device)


def phase_cycles(trace: torch.Tensor) -> list[dict]:
    """Per consumer, the median cycles of each phase over the tiles followed by another stamped tile:
    q_wait (start to Q ready: the tile's setup and the Q wait), attend (its key blocks), epilogue (O and LSE out),
    gap (to the next tile's start) and tile (start to start)."""
    t = trace.double().cpu()
    start = t[..., 0]
    whole = (start[..., :-1] > 0) & (start[..., 1:] > 0)  # a zero stamp: no such tile
    phases = dict(q_wait=t[..., :-1, 1] - start[..., :-1], attend=t[..., :-1, 2] - t[..., :-1, 1],
                  epilogue=t[..., :-1, 3] - t[..., :-1, 2], gap=start[..., 1:] - t[..., :-1, 3],
                  tile=start[..., 1:] - start[..., :-1])
    rows = []
    for c in range(t.shape[1]):
        mask = whole[:, c]
        if not mask.any():
            raise ValueError("no consumer ran two stamped tiles: too few tiles per program to time one")
        rows.append({name: phases[name][:, c][mask].median().item() for name in PHASES})
    return rows


def fixed_cost(blocks_a: int, tile_a: float, blocks_b: int, tile_b: float) -> tuple[float, float]:
    """(cycles per key block, fixed cycles per tile) of tiles of blocks_a and blocks_b key blocks (a line through
    the two tile times)."""
    if blocks_a == blocks_b:
        raise ValueError(f"two different key block counts are needed, got {blocks_a} twice")
    per_block = (tile_b - tile_a) / (blocks_b - blocks_a)
    return per_block, tile_a - blocks_a * per_block
