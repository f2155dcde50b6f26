"""What the compiler made of each backward variant: instruction counts and resources, no GPU needed.

`python -m kernels.gluon.bwd_report` compiles every variant for sm_90a and prints one JSON object per
variant; its own process, so that a caller running Triton in interpreter mode still gets a real compile.
"""
import re
import sys
from dataclasses import replace

import torch

from .bwd import BWD_TILES, BwdVariant, compile_backward
from .report import common_counts, print_reports


def alternative_tiles(head_dim):
    """The tiles measured against the default: split MMA warpgroups (at hd 128 only 2 ring slots fit next to
    the two dQ_partial hand-overs), no warp specialization, the dK order the default does not use (dK first
    from shared memory, `dkfirst`, or FA3's, `fa3dk`), the dQ adds it does not use (TMA reduce-adds, `dqtma`,
    or the worker's atomics, `dqatomic`), and both changes together."""
    base = BWD_TILES[head_dim]
    order = "dkfirst" if base.fa3_dk_order else "fa3dk"
    add = "dqatomic" if base.dq_tma_reduce else "dqtma"
    other_order = replace(base, fa3_dk_order=not base.fa3_dk_order)
    # Split at hd 128: 2 ring slots, and dK first (with FA3's order ptxas serializes every wgmma there, 56 waits).
    split = replace(base, split_warpgroups=True, stages=2 if head_dim == 128 else base.stages,
                    fa3_dk_order=base.fa3_dk_order and head_dim != 128)
    return {"split": split, "nows": replace(base, warp_specialize=False, dq_tma_reduce=False), order: other_order,
            add: replace(base, dq_tma_reduce=not base.dq_tma_reduce),
            f"{add}_{order}": replace(other_order, dq_tma_reduce=not base.dq_tma_reduce)}


# Every dtype, head dim and mask with the default tile, and bf16 with the alternatives.
VARIANTS = [BwdVariant(dtype, d, causal) for dtype in (torch.bfloat16, torch.float16) for d in BWD_TILES
            for causal in (False, True)]
VARIANTS += [BwdVariant(torch.bfloat16, d, causal, tile) for d in BWD_TILES for causal in (False, True)
             for tile in alternative_tiles(d).values()]


def tile_mode(tile):
    mode = "split" if tile.split_warpgroups else "lockstep" if tile.warp_specialize else "nows"
    return mode + ("_fa3dk" if tile.fa3_dk_order else "") + ("_dqtma" if tile.dq_tma_reduce else "")


def variant_name(v: BwdVariant):
    mask = "causal" if v.causal else "full"
    return f"{str(v.dtype).removeprefix('torch.')}_hd{v.head_dim}_{mask}_{tile_mode(v.tile)}"


def compile_report(variant: BwdVariant, tmpdir: str):
    _, sass, counts = common_counts(compile_backward(variant), tmpdir)
    return dict(
        name=variant_name(variant),
        **counts,
        stages=variant.tile.stages,
        mma_partitions=variant.tile.mma_partitions,
        sass_f32_atomics=len(re.findall(r"\bREDG?\.E\.ADD\.F32", sass)),
        sass_tma_reduces=len(re.findall(r"\bUBLKRED|\bUTMAREDG", sass)),
        sass_wgmma_waits=sass.count("WARPGROUP.DEPBAR"),  # one per wgmma when ptxas serializes them
    )


def main():
    print_reports(VARIANTS, compile_report, variant_name)


if __name__ == "__main__":
    sys.exit(main())
