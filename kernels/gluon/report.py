"""What the compiler made of each forward variant: instruction counts and resources, no GPU needed.

`python -m kernels.gluon.report` compiles every variant for sm_90a and prints one
JSON object per variant. It runs as its own process so that a caller running
Triton in interpreter mode (the CPU test suite) still gets a real compile.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import torch
import triton

from .forward import HEAD_DIMS, TILE_CONFIGS, Variant, compile_forward, default_tile

# A bar.sync of 128 threads: one warpgroup (a consumer) meeting itself.
WARPGROUP_BAR = re.compile(r"\bBAR\.SYNC\.DEFER_BLOCKING 0x\w+, 0x80\b")

# A local-memory access (a spill or its reload).
LOCAL_MEM = re.compile(r"\b(?:LDL|STL)\b")

# An RS wgmma in SASS: accumulator, then the A operand's first register, then B's descriptor (SS: one descriptor).
RS_GMMA = re.compile(r"\b[HQ]GMMA\.\S+\s+R\d+,\s+R\d+,\s+gdesc")

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

# Every head dim and mask with and without warp specialization, the other two ablation switches at hd128,
# and the FP8 forward (e4m3, default FP8Config blocks) at every head dim.
VARIANTS = [Variant(torch.bfloat16, d, causal, ws) for d in HEAD_DIMS for causal in (False, True) for ws in (True, False)]
VARIANTS += [Variant(torch.bfloat16, 128, False, pipeline=False), Variant(torch.bfloat16, 128, False, pingpong=False)]
VARIANTS += [Variant(torch.float8_e4m3fn, d, causal, out_dtype=torch.bfloat16, q_scale_block=128,
                     kv_scale_block=128)
             for d in HEAD_DIMS for causal in (False, True)]
# The synchronization options (branch fence, named-barrier turns, split Q barriers) at every head dim, non-causal.
SYNC_OPTIONS = dict(branch_fence=True, named_turn=True, split_q=True)
VARIANTS += [Variant(torch.bfloat16, d, False, tile_override=replace(TILE_CONFIGS[(2, d)], **SYNC_OPTIONS))
             for d in HEAD_DIMS]
# FP8 with V^T's keys in wgmma order (P reaches PV without shuffles) at every head dim, non-causal.
FP8_WGMMA = dict(out_dtype=torch.bfloat16, q_scale_block=128, kv_scale_block=128, v_wgmma_keys=True)
VARIANTS += [Variant(torch.float8_e4m3fn, d, False, **FP8_WGMMA) for d in HEAD_DIMS]

# The FP8 tiles' consumer trims (docs/tuning-gluon.md entry 18) against their absence, on V^T in wgmma order: the
# default tiles also unpipelined at hd128, and the trims turned off (the ablation) where the default runs.
NO_TRIMS = dict(fast_v_ratio=False, thread_row_sum=False, unmasked_loop=False)
VARIANTS += [Variant(torch.float8_e4m3fn, 128, False, pipeline=False, **FP8_WGMMA)]
VARIANTS += [Variant(torch.float8_e4m3fn, d, causal, tile_override=replace(default_tile(1, d, causal), **NO_TRIMS),
                     **FP8_WGMMA)
             for d, causal in [(64, False), (128, False), (256, False), (128, True)]]

# The 16-bit tiles that rescale O lazily by default (TileConfig.lazy_rescale), also with the eager rescale.
LAZY_HEAD_DIMS = tuple(d for d in HEAD_DIMS if TILE_CONFIGS[(2, d)].lazy_rescale)
VARIANTS += [Variant(torch.bfloat16, d, causal, tile_override=replace(default_tile(2, d, causal), lazy_rescale=False))
             for d in LAZY_HEAD_DIMS for causal in (False, True)]

# The FP8 tiles whose O rescale runs under the next QK^T by default (TileConfig.rescale_under_s), causal too (the
# non-causal default is above), and both masks with the rescale after the PV wait; V^T in wgmma order.
UNDER_S_HEAD_DIMS = tuple(d for d in HEAD_DIMS if TILE_CONFIGS[(1, d)].rescale_under_s)
VARIANTS += [Variant(torch.float8_e4m3fn, d, True, **FP8_WGMMA) for d in UNDER_S_HEAD_DIMS]
VARIANTS += [Variant(torch.float8_e4m3fn, d, causal, tile_override=replace(default_tile(1, d, causal),
                                                                            rescale_under_s=False), **FP8_WGMMA)
             for d in UNDER_S_HEAD_DIMS for causal in (False, True)]


# The non-causal 16-bit hd128 tile stages O in its last key block's K buffer (TileConfig.o_buffer "k"); also with O
# in Q's, as the causal tile has it.
O_IN_Q_TILE = replace(TILE_CONFIGS[(2, 128)], o_buffer="q")
VARIANTS += [Variant(torch.bfloat16, 128, False, tile_override=O_IN_Q_TILE)]

# Per-thread arrives (TileConfig.thread_arrive) turned off where the default has them: BF16 hd128, FP8 hd128/hd256.
VARIANTS += [Variant(torch.bfloat16, 128, False, tile_override=replace(TILE_CONFIGS[(2, 128)], thread_arrive=False))]
VARIANTS += [Variant(torch.float8_e4m3fn, d, False, **FP8_WGMMA,
                     tile_override=replace(TILE_CONFIGS[(1, d)], thread_arrive=False))
             for d in (128, 256)]

# The causal mask options (the blocks below the diagonal in a loop without the mask test:
# TileConfig.causal_unmasked_loop; the mask by one compare per score: row_bound_mask), every pair of settings but
# the default's, on the tiles that have them by default (hd64, FP8 hd128 and hd256) and one that does not (16-bit
# hd128).
MASK_CAUSAL = [(2, 64), (2, 128), (1, 128), (1, 256)]
VARIANTS += [Variant(torch.bfloat16 if size == 2 else torch.float8_e4m3fn, d, True, tile_override=tile,
                     **(FP8_WGMMA if size == 1 else {}))
             for size, d in MASK_CAUSAL for split in (False, True) for bound in (False, True)
             for tile in [replace(default_tile(size, d, True), causal_unmasked_loop=split, row_bound_mask=bound)]
             if tile != default_tile(size, d, True)]
# FP8 hd256's causal default (the split loop), the base those options vary from, on V^T in wgmma order.
VARIANTS += [Variant(torch.float8_e4m3fn, 256, True, **FP8_WGMMA)]

# FP8 hd256's 128-key tile overlapped (the default) needs split K/V release (two stages cannot hold K of block i
# and V of block i - 1 otherwise) and the per-thread arrives and named-barrier turns that keep its key loop in
# registers (docs/tuning-gluon.md entry 48): also without those two, and without the overlap and all three (the
# default before session 27).
VARIANTS += [Variant(torch.float8_e4m3fn, 256, False, tile_override=replace(TILE_CONFIGS[(1, 256)], **changes),
                     **FP8_WGMMA)
             for changes in (dict(thread_arrive=False, named_turn=False),
                             dict(overlap=False, split_kv=False, thread_arrive=False, named_turn=False))]

# QK^T from registers (TileConfig.q_in_registers) set otherwise than in the default, on the tiles whose registers hold
# Q (at hd256 half of it) beside S, P and O: 16-bit hd128 and hd256 both masks and hd64 causal, FP8 hd128 both masks
# (V^T in wgmma order). The hd64 and FP8 hd128 causal tiles have it by default.
QREG_TILES = [(2, 128, False), (2, 128, True), (2, 256, False), (2, 256, True), (2, 64, True), (1, 128, False),
              (1, 128, True)]
VARIANTS += [Variant(torch.bfloat16 if size == 2 else torch.float8_e4m3fn, d, causal,
                     tile_override=replace(tile, q_in_registers=not tile.q_in_registers),
                     **(FP8_WGMMA if size == 1 else {}))
             for size, d, causal in QREG_TILES for tile in [default_tile(size, d, causal)]]

# Consumer 0's diagonal keys halved (TileConfig.half_diagonal, on in the 16-bit causal tiles: the diagonal block on
# its first 64 keys at hd64/hd128, the 64-key block above its rows skipped at hd256), turned off.
HALF_DIAGONAL_HEAD_DIMS = (64, 128, 256)
VARIANTS += [Variant(torch.bfloat16, d, True, tile_override=replace(default_tile(2, d, True), half_diagonal=False))
             for d in HALF_DIAGONAL_HEAD_DIMS]

# Built with the consumers' cycle stamps (kernels.gluon.trace): the FP8 hd128 tile and the three-consumer hd64 tile.
TRACED = [Variant(torch.float8_e4m3fn, 128, False, **FP8_WGMMA), Variant(torch.bfloat16, 64, False)]


FLIP_TAGS = [("thread_arrive", "arrive"), ("named_turn", "turn"), ("split_kv", "splitkv"),
             ("causal_unmasked_loop", "split"), ("row_bound_mask", "bound"), ("q_in_registers", "qreg"),
             ("half_diagonal", "half")]


def variant_name(v: Variant):
    dt = str(v.dtype).removeprefix("torch.")
    t = v.tile_override
    late = t and v.fp8 and v.head_dim in UNDER_S_HEAD_DIMS and not t.rescale_under_s
    default = default_tile(v.dtype.itemsize, v.head_dim, v.causal)
    moved_o = t and t.o_buffer != default.o_buffer
    sync = t and t.branch_fence and not default.branch_fence  # SYNC_OPTIONS, named turns among them
    # Switches set otherwise than in the default tile, as _<tag><0 or 1>.
    flipped = "".join(f"_{tag}{int(getattr(t, field))}" for field, tag in FLIP_TAGS
                      if t and getattr(t, field) != getattr(default, field) and not (sync and field == "named_turn"))
    return (f"{dt}_hd{v.head_dim}_{'causal' if v.causal else 'full'}_ws{int(v.warp_specialize)}"
            f"_pipe{int(v.overlap)}_pp{int(v.pingpong)}{'_sync' if sync else ''}"
            f"{'_wgmmav' if v.v_wgmma_keys else ''}{'_untrimmed' if v.fp8 and t and not t.thread_row_sum else ''}"
            f"{'_eager' if t and not v.fp8 and v.head_dim in LAZY_HEAD_DIMS and not t.lazy_rescale else ''}"
            f"{'_late_rescale' if late else ''}{f'_o_in_{t.o_buffer}' if moved_o else ''}{flipped}")


def key_block_loops(sass: str):
    """Every consumer's key-block loops in code order, each as its instructions as laid out (its masking branch
    counts, the out-of-line mbarrier retry stubs do not): the conditional back edges over a wgmma with no other
    such loop inside (one loop a consumer, two with TileConfig.causal_unmasked_loop). Tile loops hold them;
    the unconditional branches back from the retry stubs are not back edges of a loop."""
    ins = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)
    addrs = [int(a, 16) for a, _ in ins]
    back = [(addrs.index(int(m.group(1), 16)), i) for i, (_, text) in enumerate(ins)
            for m in [re.match(r"@!?P\d\s+BRA\b.*?0x([0-9a-f]+)", text.strip())] if m and int(m.group(1), 16) < addrs[i]]
    over_mma = [(j, i) for j, i in back if any("GMMA" in t for _, t in ins[j:i + 1])]
    return [[t for _, t in ins[j:i + 1]] for j, i in over_mma
            if not any(j <= c and d < i for c, d in over_mma if (c, d) != (j, i))]


def key_loops_local_mem(loops):
    """Local-memory accesses inside the loops key_block_loops found."""
    return sum(1 for body in loops for t in body if LOCAL_MEM.search(t))


def _sass_and_resources(cubin: bytes, tmpdir: str):
    path = os.path.join(tmpdir, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    sass = subprocess.run([CUOBJDUMP, "-sass", path], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", res))
    return sass, {k.lower(): int(v) for k, v in usage.items()}


def common_counts(ck, tmpdir: str):
    """(ptx, sass, counts every Gluon kernel's report carries) of a compiled kernel."""
    ptx = ck.asm["ptx"]
    sass, usage = _sass_and_resources(ck.asm["cubin"], tmpdir)
    return ptx, sass, dict(
        shared_bytes=ck.metadata.shared,
        num_warps=ck.metadata.num_warps,
        ptx_wgmma=ptx.count("wgmma.mma_async"),
        setmaxnreg=sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)}),
        sass_gmma=len(re.findall(r"\b[HQ]GMMA\.", sass)),
        sass_tma_load=sass.count("UTMALDG"),
        sass_tma_store=sass.count("UTMASTG"),
        sass_local_mem=len(LOCAL_MEM.findall(sass)),
        **usage,
    )


def compile_report(variant: Variant, tmpdir: str, traced: bool = False):
    ptx, sass, counts = common_counts(compile_forward(variant, traced=traced), tmpdir)
    loops = key_block_loops(sass)
    loop = loops[0] if loops else []  # the first consumer's
    return dict(
        name=traced_name(variant) if traced else variant_name(variant),
        **counts,
        ptx_wgmma_fp8=len(re.findall(r"wgmma\.mma_async\S*\.e4m3", ptx)),
        ptx_tma_load=len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.shared::cluster\.global", ptx)),
        ptx_tma_store=len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.global\.shared", ptx)),
        sass_named_arrive=len(re.findall(r"\bBAR\.ARV\b", sass)),  # ping-pong turns on named barriers
        sass_shfl=len(re.findall(r"\bSHFL\.", sass)),  # row reductions, and FP8 P's conversion to the A operand
        ptx_griddep_wait=ptx.count("griddepcontrol.wait"),
        sass_key_loop=len(loop),
        sass_key_loop_local_mem=sum(1 for t in loop if LOCAL_MEM.search(t)),
        sass_key_loop_warpgroup_bars=sum(1 for t in loop if WARPGROUP_BAR.search(t)),
        # wgmma with the A operand from registers (RS: P for PV, and Q for QK^T with TileConfig.q_in_registers)
        sass_key_loop_rs_gmma=sum(1 for t in loop if RS_GMMA.search(t)),
        sass_key_loop_gmma=sum(1 for t in loop if re.search(r"\b[HQ]GMMA\.", t)),
        sass_key_loop_sizes=[len(body) for body in loops],
        sass_key_loops_prmt=sum(1 for body in loops for t in body if re.search(r"\bPRMT\b", t)),
        sass_key_loops_local_mem=key_loops_local_mem(loops),
        ptx_clock_reads=ptx.count("%clock64"),
    )


def traced_name(v: Variant):
    return variant_name(v) + "_traced"


def print_reports(variants, report, name):
    """One JSON line per variant: report(variant, tmpdir), or the error that stopped its compile."""
    with tempfile.TemporaryDirectory() as tmpdir:
        for v in variants:
            try:
                row = report(v, tmpdir)
            except Exception as e:  # report and go on: one broken variant must not hide the others
                row = dict(name=name(v), error=f"{type(e).__name__}: {e}"[-2000:])
            print(json.dumps(row), flush=True)


def main():
    print_reports(VARIANTS, compile_report, variant_name)
    print_reports(TRACED, lambda v, tmpdir: compile_report(v, tmpdir, traced=True), traced_name)


if __name__ == "__main__":
    sys.exit(main())
