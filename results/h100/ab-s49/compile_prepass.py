"""Compile the FP8 pre-pass for sm_90a (no GPU) from whichever tree is first on PYTHONPATH, with the sm90 table's
tiles at HEAD_DIM, and print the counts this directory's README tabulates.
usage: python compile_prepass.py HEAD_DIM"""
import re
import sys
import tempfile

import torch
from triton.backends.compiler import GPUTarget

import kernels.triton.fp8_quant as fq
from kernels.gluon.report import common_counts
from kernels.launch import compile_for
from kernels.quant import FP8Config

d = int(sys.argv[1])
tiles = fq.PREPASS_TILES_SM90[d]
q_shape = (4, 4096, 2048 // d, d)
st = torch.empty(q_shape, device="meta").stride()
plan = fq.prepass_plan(q_shape, q_shape, (st, st, st), torch.bfloat16, torch.device("meta"), FP8Config(), "wgmma",
                       tiles)
_, constexprs, options = plan.launches[0]
constexprs = dict(constexprs, EARLY_DEPENDENTS=True)  # as launched on the GPU (meta tensors say no PDL)
scales = [torch.empty(shape, dtype=torch.float32, device="meta") for shape in plan.scale_shapes]
compiled = compile_for(fq._prepass_kernel, (*plan.descriptors, *scales, *plan.scalars), constexprs, options,
                       GPUTarget("cuda", 90, 32))
with tempfile.TemporaryDirectory() as tmp:
    ptx, sass, counts = common_counts(compiled, tmp)
print(tiles, counts)
print("ptx bar.sync", ptx.count("bar.sync"),
      *(f"{op} {sass.count(op)}" for op in ("BAR.SYNC", "SHFL", "FMNMX", "STS", "LDS")),
      "instructions", len(re.findall(r"/\*[0-9a-f]{4}\*/", sass)))
