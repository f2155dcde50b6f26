"""Tile configurations for the Triton attention kernels.

The tables hold the winners of `experiments/tune_triton.py` on an H200 (log in
docs/tuning-triton.md), keyed on the head dimension rounded up to a power of two
and on causality. They are fixed rather than autotuned at every new shape: a
training run sees one or two shapes, and a fixed table keeps compile time and
timings reproducible.

Under the Triton interpreter (CPU) small tiles are used instead, so that the
tiny test shapes still span several blocks, tails and causal diagonals.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FwdTiles:
    block_m: int  # query rows per program
    block_n: int  # keys per inner-loop step
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BwdTiles:
    block_m: int  # query rows per inner step of the dK/dV kernel
    block_n: int  # keys per dK/dV program
    num_warps: int
    num_stages: int
    dq_block_m: int  # query rows per dQ program
    dq_block_n: int  # keys per inner step of the dQ kernel
    dq_num_warps: int
    dq_num_stages: int
    atomic_dq: bool  # unless deterministic, accumulate dQ with atomics in the dK/dV kernel instead of its own


# Hopper (sm_90) winners, keyed on (padded head dim, causal).
FWD_TILES_SM90 = {
    (64, False): FwdTiles(128, 128, 8, 3),
    (64, True): FwdTiles(128, 128, 8, 3),
    (128, False): FwdTiles(128, 128, 8, 3),
    (128, True): FwdTiles(128, 128, 8, 3),
    (256, False): FwdTiles(128, 64, 8, 2),
    (256, True): FwdTiles(128, 64, 8, 2),
}
BWD_TILES_SM90 = {
    (64, False): BwdTiles(64, 128, 8, 2, 128, 64, 8, 2, False),
    (64, True): BwdTiles(64, 128, 8, 2, 128, 64, 8, 2, False),
    (128, False): BwdTiles(64, 128, 8, 2, 128, 64, 8, 2, False),
    (128, True): BwdTiles(64, 128, 8, 2, 128, 64, 8, 2, False),
    (256, False): BwdTiles(64, 64, 8, 1, 64, 64, 8, 1, False),
    (256, True): BwdTiles(64, 64, 8, 1, 64, 64, 8, 1, False),
}

# Other GPUs (less shared memory than Hopper): conservative tiles.
FWD_TILES_GENERIC = {64: FwdTiles(128, 64, 4, 2), 128: FwdTiles(128, 32, 8, 2), 256: FwdTiles(64, 32, 4, 1)}
BWD_TILES_GENERIC = {
    64: BwdTiles(32, 64, 4, 2, 64, 32, 4, 2, False),
    128: BwdTiles(32, 64, 4, 1, 64, 32, 4, 1, False),
    256: BwdTiles(16, 32, 4, 1, 32, 16, 4, 1, False),
}

# Interpreter: blocks of unequal size so that tests cover both kinds of diagonal.
FWD_TILES_INTERPRETER = FwdTiles(32, 16, 4, 1)
BWD_TILES_INTERPRETER = BwdTiles(16, 32, 4, 1, 32, 16, 4, 1, False)


def padded_head_dim(head_dim: int) -> int:
    """Head dimension of a tile: a power of two, at least 16 (tl.dot's minimum); loads zero-fill the rest."""
    return max(16, 1 << (head_dim - 1).bit_length())


def _table_key(device: torch.device):
    if device.type != "cuda":
        return "interpreter"
    return "sm90" if torch.cuda.get_device_capability(device) == (9, 0) else "generic"


def fwd_tiles(head_dim: int, causal: bool, device: torch.device) -> FwdTiles:
    key = _table_key(device)
    if key == "interpreter":
        return FWD_TILES_INTERPRETER
    d = padded_head_dim(head_dim)
    bucket = 64 if d <= 64 else d  # head dims below 64 reuse the 64 tiles
    return FWD_TILES_SM90[bucket, causal] if key == "sm90" else FWD_TILES_GENERIC[bucket]


def bwd_tiles(head_dim: int, causal: bool, device: torch.device) -> BwdTiles:
    key = _table_key(device)
    if key == "interpreter":
        return BWD_TILES_INTERPRETER
    d = padded_head_dim(head_dim)
    bucket = 64 if d <= 64 else d
    return BWD_TILES_SM90[bucket, causal] if key == "sm90" else BWD_TILES_GENERIC[bucket]
