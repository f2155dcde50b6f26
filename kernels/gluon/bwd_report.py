"""What the compiler made of each backward variant: instruction counts and resources, no GPU needed.

`python -m kernels.gluon.bwd_report` compiles every variant for sm_90a and prints one JSON object per
variant; its own process, so that a caller running Triton in interpreter mode still gets a real compile.
"""
import re
import sys
from dataclasses import replace

import torch

from .bwd import BWD_TILES, FEW_KEYS_CAUSAL_BWD_TILES, BwdVariant, compile_backward
from .report import common_counts, key_block_loops, key_loops_local_mem, print_reports


def alternative_tiles(head_dim):
    """The tiles measured against the default: split MMA warpgroups (at hd 128 only 2 ring slots fit next to
    the two dQ_partial hand-overs), no warp specialization, the dK order the default does not use (dK first
    from shared memory, `dkfirst`, or FA3's, `fa3dk`), the dQ adds it does not use (TMA reduce-adds, `dqtma`,
    or the worker's atomics, `dqatomic`), and both changes together; the causal masked blocks in a loop of their
    own or not (`ml`, `noml`); at hd 64 the 64-row tile it replaced (`m64`), and with that loop (`m64_ml`), the
    tile of causal launches up to 1k keys. The 64-key tile (hd 256) has neither split warpgroups nor FA3's dK
    order."""
    base = BWD_TILES[head_dim]
    add = "dqatomic" if base.dq_tma_reduce else "dqtma"
    if base.block_n == 64:
        # Without dQ_partial in the ring slots (`ownhandover`: a hand-over buffer of its own, one ring slot), the
        # worker's atomics and no warp specialization need their own buffer or none.
        own = replace(base, dq_in_slot=False, stages=1)
        return {"nows": replace(base, warp_specialize=False, dq_tma_reduce=False, dq_in_slot=False),
                "ownhandover": own, "dqatomic": replace(own, dq_tma_reduce=False),
                "noml" if base.mask_loop else "ml": replace(base, mask_loop=not base.mask_loop)}
    order = "dkfirst" if base.fa3_dk_order else "fa3dk"
    other_order = replace(base, fa3_dk_order=not base.fa3_dk_order)
    # Split at hd 128: 2 ring slots, and dK first (with FA3's order ptxas serializes every wgmma there, 56 waits).
    split = replace(base, split_warpgroups=True, stages=2 if head_dim == 128 else base.stages,
                    fa3_dk_order=base.fa3_dk_order and head_dim != 128)
    tiles = {"split": split, "nows": replace(base, warp_specialize=False, dq_tma_reduce=False), order: other_order,
             add: replace(base, dq_tma_reduce=not base.dq_tma_reduce),
             f"{add}_{order}": replace(other_order, dq_tma_reduce=not base.dq_tma_reduce),
             "noml" if base.mask_loop else "ml": replace(base, mask_loop=not base.mask_loop)}
    if head_dim in FEW_KEYS_CAUSAL_BWD_TILES:
        few = FEW_KEYS_CAUSAL_BWD_TILES[head_dim][1]
        tiles |= {"m64": replace(few, mask_loop=False), "m64_ml": few}
    return tiles


def distinct_tiles(tiles, causal):
    """{name: tile} in the same order without the tiles whose kernel is another's ("default" kept first): the
    mask loop changes causal kernels only."""
    def kernel(tile):
        return tile if causal else replace(tile, mask_loop=False)
    seen = {kernel(tiles["default"])} if "default" in tiles else set()
    kept = {}
    for name, tile in tiles.items():
        if name == "default" or kernel(tile) not in seen:
            seen.add(kernel(tile))
            kept[name] = tile
    return kept


# Every dtype, head dim and mask with the default tile, and bf16 with the alternatives that differ from it.
VARIANTS = [BwdVariant(dtype, d, causal) for dtype in (torch.bfloat16, torch.float16) for d in BWD_TILES
            for causal in (False, True)]
VARIANTS += [BwdVariant(torch.bfloat16, d, causal, tile) for d in BWD_TILES for causal in (False, True)
             for name, tile in distinct_tiles({"default": BWD_TILES[d], **alternative_tiles(d)}, causal).items()
             if name != "default"]


def tile_mode(tile, causal):
    mode = "split" if tile.split_warpgroups else "lockstep" if tile.warp_specialize else "nows"
    return (mode + ("_fa3dk" if tile.fa3_dk_order else "") + ("_dqtma" if tile.dq_tma_reduce else "")
            + (f"_m{tile.block_m}" if tile.block_m != 64 else "") + ("_slot" if tile.dq_in_slot else "")
            + ("_ml" if tile.mask_loop and causal else ""))


def variant_name(v: BwdVariant):
    mask = "causal" if v.causal else "full"
    return f"{str(v.dtype).removeprefix('torch.')}_hd{v.head_dim}_{mask}_{tile_mode(v.tile, v.causal)}"


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
        sass_key_loops_local_mem=key_loops_local_mem(key_block_loops(sass)),  # inside the query-block loops
    )


def main():
    print_reports(VARIANTS, compile_report, variant_name)


if __name__ == "__main__":
    sys.exit(main())
