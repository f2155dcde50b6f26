"""What Triton's Hopper warp specialization made of the one-loop forward (`Tiles.warp_specialize`), no GPU needed.

It also reports the backward's launch pair at hd128 (`BwdTiles.dq_early`): whether the dK/dV kernel is still
warp-specialized with its `griddepcontrol.launch_dependents`, and whether the dQ kernel is a programmatic dependent
launch that waits (`griddepcontrol.wait`) before its store.

`python -m kernels.triton.ws_report [--all]` compiles the forward for sm_90 and
prints one JSON object per variant: whether the loop was warp-specialized, the
query rows each consumer partition takes, whether a partition splats the row
offset of its output store (the pass moves that offset per half; a splat of it
added to an arange is shifted twice, the bug of the first attempt), how
many exp2 went to the polynomial (`Tiles.exp2_poly`) and to the MUFU, and
registers, spills and shared memory. It runs as its own process so that a
caller running Triton in interpreter mode (the CPU test suite) still gets a
real compile.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget

from kernels.launch import compile_for

from .bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .fwd import _attn_fwd_kernel
from .tiles import BWD_TILES_SM90, Tiles, padded_head_dim

HOPPER = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# (head dim, block_n, num_stages, exp2_poly, persistent); block_m 128 and 4 warps are what the pass splits (see
# Tiles).
DEFAULT = [(128, 128, 2, 0, False), (128, 128, 2, 8, False), (128, 128, 2, 8, True), (256, 64, 1, 0, True)]
ALL = DEFAULT + [(64, 128, 2, 0, False), (128, 128, 2, 4, False), (128, 64, 2, 0, False), (256, 64, 1, 0, False),
                 (256, 32, 2, 0, False)]  # the tune_triton candidates


def compile_ws_forward(head_dim: int, tiles: Tiles, causal: bool, mask_keys: bool):
    """triton's CompiledKernel of the forward for sm_90, bf16, arguments specialized as at a launch (every int 1)."""
    fn = _attn_fwd_kernel
    t = torch.empty(1, 1, 1, head_dim, dtype=torch.bfloat16)
    strides = (1, 1, 1)
    args = (t, t, t, t, torch.empty(1, 1, 1), strides, strides, strides, strides, 1, 1, 1, 1, head_dim, 1.0, 1)
    constexprs = dict(HEAD_DIM=padded_head_dim(head_dim), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                      CAUSAL=causal, UPCAST=False, EXP2_POLY=tiles.exp2_poly, WARP_SPECIALIZE=tiles.warp_specialize,
                      MASK_KEYS=mask_keys, PERSISTENT=tiles.persistent, LAZY=tiles.lazy_rescale)
    return compile_for(fn, args, constexprs, dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages), HOPPER)


def partitions(ttgir: str) -> list[str]:
    """The text of each `partitionN` region of the ttg.warp_specialize op."""
    parts = re.split(r"\n\s*partition\d+\(", ttgir)[1:]
    return [p.split("ttg.warp_return")[0] for p in parts]


def consumer_rows(part: str) -> list[list[int]]:
    """[start, end) of each arange named `rows` (the query rows relative to the tile) in one partition."""
    found = re.finditer(r"%rows(?:_\d+)? = tt\.make_range \{[^}]*end = (\d+) : i32, start = (\d+) : i32", part)
    return sorted({(int(m.group(2)), int(m.group(1))) for m in found})


def splats_store_offset(part: str) -> bool:
    """Whether the partition splats the row offset of its output descriptor store into a tensor."""
    m = re.search(r"async_tma_copy_local_to_global %[\w.]+\[(%[\w.]+),", part)
    return bool(m) and re.search(rf"tt\.splat {re.escape(m.group(1))} ", part) is not None


def report(head_dim, block_n, num_stages, exp2_poly, persistent, causal):
    # With the lazy O rescale, as the tuned warp-specialized tiles run.
    tiles = Tiles(128, block_n, 4, num_stages, exp2_poly=exp2_poly, warp_specialize=True, persistent=persistent,
                  lazy_rescale=True)
    name = f"hd{head_dim}_{block_n}_{num_stages}_{'causal' if causal else 'full'}"
    name += f"_poly{exp2_poly}" if exp2_poly else ""
    name += "_persistent" if persistent else ""
    try:
        ck = compile_ws_forward(head_dim, tiles, causal, mask_keys=causal)
    except Exception as e:  # a shape the pass or the backend rejects
        return dict(name=name, error=f"{type(e).__name__}: {e}"[:300])
    ttgir = ck.asm["ttgir"]
    consumers = [p for p in partitions(ttgir) if "ttng.warp_group_dot" in p]
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(ck.asm["ptx"])
        ptxas = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", os.path.join(d, "k.o")],
                               capture_output=True, text=True).stderr

    def count(pattern):
        m = re.search(pattern, ptxas)
        return int(m.group(1)) if m else None

    return dict(name=name, warp_specialize_ops=ttgir.count("ttg.warp_specialize("), num_warps=ck.metadata.num_warps,
                # exp2 by the polynomial (its round-down add) and by the MUFU, in the PTX
                poly_exp2=ck.asm["ptx"].count("add.rm.ftz.f32"), mufu_exp2=ck.asm["ptx"].count("ex2.approx"),
                shared_bytes=ck.metadata.shared, consumers=len(consumers),
                consumer_rows=[consumer_rows(p) for p in consumers],
                splats_store_offset=[splats_store_offset(p) for p in consumers],
                setmaxnreg=sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+);",
                                                              ck.asm["ptx"])}),
                registers=count(r"Used (\d+) registers"), spill_stores=count(r"(\d+) bytes spill stores"),
                spill_loads=count(r"(\d+) bytes spill loads"), stack=count(r"(\d+) bytes stack frame"))


def report_bwd(causal):
    """The hd128 dK/dV and dQ kernels as the backward launches them on sm_90 (tuned tiles, dQ launched early)."""
    t = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16)
    f = torch.empty(1, 1, 1)
    s = (1, 1, 1)
    tiles = BWD_TILES_SM90[128, causal]
    rows = []
    for name, fn, args, kt, extra in (
            ("dkdv", _bwd_dkdv_kernel, (t, t, t, t, t, t, f, f, s, s, s, s, s, s), tiles.dkdv,
             dict(WARP_SPECIALIZE=tiles.dkdv.warp_specialize)),
            ("dq", _bwd_dq_kernel, (t, t, t, t, t, f, f, s, s, s, s, s), tiles.dq, {})):
        ck = compile_for(fn, (*args, 1, 1, 64, 1, 1, 128, 1.0, 1.0, 1),
                         dict(HEAD_DIM=128, BLOCK_M=kt.block_m, BLOCK_N=kt.block_n, CAUSAL=causal, UPCAST=False,
                              EXP2_POLY=kt.exp2_poly, PDL=True, **extra),
                         dict(num_warps=kt.num_warps, num_stages=kt.num_stages, maxnreg=kt.max_regs,
                              launch_pdl=name == "dq"), HOPPER)
        ptx = ck.asm["ptx"]
        wait, store = ptx.find("griddepcontrol.wait"), ptx.rfind("cp.async.bulk.tensor.2d.global.shared")
        rows.append(dict(name=f"bwd_{name}_hd128_{'causal' if causal else 'full'}",
                         warp_specialize_ops=ck.asm["ttgir"].count("ttg.warp_specialize("),
                         num_warps=ck.metadata.num_warps, launch_pdl=ck.metadata.launch_pdl,
                         launch_dependents=ptx.count("griddepcontrol.launch_dependents"),
                         waits=ptx.count("griddepcontrol.wait"), wait_before_store=-1 < wait < store))
    return rows


def main():
    shapes = ALL if "--all" in sys.argv[1:] else DEFAULT
    for shape in shapes:
        for causal in (False, True):
            print(json.dumps(report(*shape, causal)), flush=True)
    for causal in (False, True):
        for row in report_bwd(causal):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
