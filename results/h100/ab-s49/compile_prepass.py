"""Compile the pre-pass for sm_90a from whichever tree is first on PYTHONPATH; print ptxas stats and SASS counts.
usage: compile_prepass.py HEAD_DIM TAG"""
import re, subprocess, sys, torch, triton
from triton.backends.compiler import GPUTarget
import kernels.triton.fp8_quant as fq
from kernels.launch import compile_for
from kernels.quant import FP8Config
d, tag = int(sys.argv[1]), sys.argv[2]
tiles = fq.PREPASS_TILES_SM90[d]
cfg = FP8Config()
b, s, h = 1, 16384 * 128 // d // 8 * 8 // 16, 2048 // d
q_shape = (4, 4096, h, d)
st = torch.empty(q_shape, device="meta").stride()
plan = fq.prepass_plan(q_shape, q_shape, (st, st, st), torch.bfloat16, torch.device("meta"), cfg, "wgmma", tiles)
mode, constexprs, options = plan.launches[0]
constexprs = dict(constexprs, EARLY_DEPENDENTS=True)
scales = [torch.empty(sh, dtype=torch.float32, device="meta") for sh in plan.scale_shapes]
args = (*plan.descriptors, *scales, *plan.scalars)
k = compile_for(fq._prepass_kernel, args, constexprs, options, GPUTarget("cuda", 90, 32))
print(tag, "mode", mode, constexprs["FLAT"], "tiles", tiles, "smem", k.metadata.shared)
open(f"/tmp/pp/{tag}_{d}.cubin", "wb").write(k.asm["cubin"])
open(f"/tmp/pp/{tag}_{d}.ttgir", "w").write(k.asm["ttgir"])
ptx = k.asm["ptx"]
print("ptx bar.sync", len(re.findall(r"bar\.sync", ptx)), "shfl", len(re.findall(r"shfl", ptx)), "convert_layout in ttgir", k.asm["ttgir"].count("convert_layout"))
cob = triton.__path__[0] + "/backends/nvidia/bin/cuobjdump"
print(subprocess.run([cob, "-res-usage", f"/tmp/pp/{tag}_{d}.cubin"], capture_output=True, text=True).stdout.strip().splitlines()[-1])
nvd = triton.__path__[0] + "/backends/nvidia/bin/nvdisasm"
sass = subprocess.run([nvd, "-c", f"/tmp/pp/{tag}_{d}.cubin"], capture_output=True, text=True).stdout
open(f"/tmp/pp/{tag}_{d}.sass", "w").write(sass)
for op in ["BAR.SYNC", "SHFL", "FMNMX", "STS", "LDS", "F2FP", "HGMMA", "UTMASTG", "UTMALDG", "SYNCS"]:
    print(f"  {op} {sum(1 for l in sass.splitlines() if op in l)}", end="")
print("  total", sum(1 for l in sass.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", l)))
