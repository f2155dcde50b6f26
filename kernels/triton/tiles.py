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

from kernels.device import is_sm90


@dataclass(frozen=True)
class Tiles:
    """Launch shape of one kernel."""
    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int  # software-pipelining depth of the main loop
    max_regs: int | None = None  # Triton's maxnreg: a cap that lets more programs share an SM
    exp2_poly: int = 0  # one exp2 in every exp2_poly (0: none) by a polynomial on the FMA pipe (kernels/triton/fwd.py)
    # One main loop, warp-specialized by Triton 3.6's Hopper pass: a TMA producer warpgroup and two consumer
    # warpgroups of num_warps each (so 3 x num_warps warps), which split the MMA's M dimension. The forward
    # and the dK/dV kernel have this form (each checks its shape: kernels/triton/fwd.py, BwdTiles); the dQ
    # kernel rejects it.
    warp_specialize: bool = False
    persistent: bool = False  # forward: one program per SM walks the tiles (kernels/triton/fwd.py)
    # Forward, warp-specialized: the row max moves only past a factor 2^8 and a thread skips the O rescale when its
    # rows kept theirs (kernels/triton/fwd.py; the interpreter multiplies by the exact 1 instead).
    lazy_rescale: bool = False

    def __post_init__(self):
        if self.exp2_poly not in (0, 2, 4, 8):
            raise ValueError(f"exp2_poly must be 0, 2, 4 or 8, got {self.exp2_poly}")
        # Triton 3.6 drops the attribute at 8 warps; the pass sets the registers per warpgroup itself.
        if self.warp_specialize and (self.num_warps != 4 or self.max_regs is not None):
            raise ValueError(f"warp_specialize needs 4 warps and no max_regs, got {self}")
        if self.lazy_rescale and not self.warp_specialize:
            raise ValueError(f"lazy_rescale is for the warp-specialized forward (64 O registers a thread), got {self}")


@dataclass(frozen=True)
class BwdTiles:
    dkdv: Tiles  # one program per key block, looping over query blocks
    dq: Tiles  # one program per query block, looping over key blocks
    # Launch the dQ kernel as a programmatic dependent launch (sm_90+): its programs start on the SMs that the
    # dK/dV kernel's last, part-filled wave leaves idle instead of after it (kernels/triton/bwd.py).
    dq_early: bool = True
    # Causal grids in FA3's longest-first order over sections of heads (kernels/triton/bwd.py, causal_program);
    # off: one head after another, block fastest (the plain 2-D grid's order).
    causal_sections: bool = True

    def __post_init__(self):
        # dK/dV: the two consumers split the block_n keys (64 each); at block_n 64 both got the same keys
        # (duplicated work), wider blocks hold more dK/dV registers than a consumer has (docs/tuning-triton.md).
        if self.dkdv.warp_specialize and self.dkdv.block_n != 128:
            raise ValueError(f"a warp-specialized dK/dV kernel needs block_n 128, got {self.dkdv}")
        if self.dq.warp_specialize:
            raise ValueError("the dQ kernel has no warp-specialized form")


# Hopper (sm_90) winners of experiments/tune_triton.py, keyed on (padded head dim, causal).
FWD_TILES_SM90 = {
    (64, False): Tiles(128, 128, 8, 3, max_regs=128),
    (64, True): Tiles(128, 128, 8, 3, max_regs=128),
    # Non-causal: warp-specialized by Triton's pass, +4-6% at 8k/16k, and one exp2 in 8 on the FMA pipe, +1-2%
    # more (step 5), persistent +4% at 4k, +1% at 8k (step 7); causal: three programs per SM (16 B spilled) still
    # 2% ahead (docs/tuning-triton.md, step 4b).
    (128, False): Tiles(128, 128, 4, 2, exp2_poly=8, warp_specialize=True, persistent=True, lazy_rescale=True),
    (128, True): Tiles(64, 128, 4, 1, max_regs=168),
    # Warp-specialized, one K/V buffer (197 KB of shared memory): +13-16% over (128, 64, 8, 2) on the H200;
    # persistent non-causal (causal tiles would need a balanced order first).
    (256, False): Tiles(128, 64, 4, 1, warp_specialize=True, persistent=True, lazy_rescale=True),
    (256, True): Tiles(128, 64, 4, 1, warp_specialize=True, lazy_rescale=True),
}
BWD_TILES_SM90 = {
    (64, False): BwdTiles(Tiles(64, 64, 4, 2), Tiles(128, 64, 8, 2)),
    # FA3's causal sections lost 3-6% here from 1k to 16k keys (+0-3% at hd128/256; an H100 A/B, session 36).
    (64, True): BwdTiles(Tiles(64, 64, 4, 2), Tiles(64, 64, 4, 2), causal_sections=False),
    # dK/dV warp-specialized by Triton's pass: non-causal +3-5%, causal +4-9% (docs/tuning-triton.md, step 4c).
    (128, False): BwdTiles(Tiles(64, 128, 4, 2, exp2_poly=8, warp_specialize=True), Tiles(128, 32, 8, 3)),
    (128, True): BwdTiles(Tiles(64, 128, 4, 2, exp2_poly=8, warp_specialize=True), Tiles(64, 64, 4, 2)),
    (256, False): BwdTiles(Tiles(64, 64, 8, 2), Tiles(128, 32, 8, 2)),
    (256, True): BwdTiles(Tiles(64, 64, 8, 2), Tiles(128, 64, 8, 1)),
}

# Other GPUs (less shared memory than Hopper): conservative tiles, neither tuned nor run yet.
FWD_TILES_GENERIC = {64: Tiles(128, 64, 4, 2), 128: Tiles(128, 32, 8, 2), 256: Tiles(64, 32, 4, 1)}
BWD_TILES_GENERIC = {
    64: BwdTiles(Tiles(32, 64, 4, 2), Tiles(64, 32, 4, 2)),
    128: BwdTiles(Tiles(32, 64, 4, 1), Tiles(64, 32, 4, 1)),
    256: BwdTiles(Tiles(16, 32, 4, 1), Tiles(32, 16, 4, 1)),
}

# Interpreter: blocks of unequal size so that tests cover both kinds of diagonal.
FWD_TILES_INTERPRETER = Tiles(32, 16, 4, 1)
BWD_TILES_INTERPRETER = BwdTiles(Tiles(16, 32, 4, 1), Tiles(32, 16, 4, 1))


def padded_head_dim(head_dim: int) -> int:
    """Head dimension of a tile: a power of two, at least 16 (tl.dot's minimum); loads zero-fill the rest."""
    return max(16, 1 << (head_dim - 1).bit_length())


def _table_key(device: torch.device):
    if device.type != "cuda":
        return "interpreter"
    return "sm90" if is_sm90(device) else "generic"


def fwd_tiles(head_dim: int, causal: bool, device: torch.device) -> Tiles:
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
