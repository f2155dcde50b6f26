"""Scratch: the FP8 op and kernel at hd256 16k, alone (no other candidates), as op_ab timed them; 6 rounds."""
import torch, statistics
from triton.testing import do_bench
import kernels
from kernels.quant import FP8Config
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn((1, 16384, 8, 256), device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
cfg = FP8Config(); fl = 4 * 8 * 16384 ** 2 * 256
x = kernels.quantize_qkv(q, k, v, cfg)
calls = {"op": lambda: kernels.flash_attn_fp8_func(q, k, v, config=cfg),
         "kernel": lambda: kernels.fp8_attention_forward(x, causal=False, out_dtype=torch.bfloat16)}
res = {n: [] for n in calls}
for rnd in range(6):
    for n in (calls if rnd % 2 == 0 else list(calls)[::-1]):
        for rep in (100, 200):
            res[n].append((rep, fl / do_bench(calls[n], warmup=25, rep=rep, return_mode="median") / 1e9))
for n, r in res.items():
    print(n, "rep100", round(statistics.median(t for p, t in r if p == 100)), "rep200",
          round(statistics.median(t for p, t in r if p == 200)), [round(t) for _, t in r])
