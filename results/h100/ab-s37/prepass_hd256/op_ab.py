"""Session 37 scratch: the FP8 op (pre-pass + Gluon forward) at hd256 under the table's pre-pass tiles and the
rotate_twice variants, balanced rounds (experiments.rounds); the pre-pass alone from a CUDA graph too."""
import json, os, statistics, sys
import torch
from triton.testing import do_bench, do_bench_cudagraph
import kernels
from kernels.quant import FP8Config
from kernels.triton import fp8_quant as fq
from experiments.rounds import round_order

P = fq.PrepassTiles
VARIANTS = {"table": fq.PREPASS_TILES_SM90[256],
            "twice_s1": P(8, 1, 2, True, 1.0, True, True, 128),
            "twice_s2": P(8, 2, 2, True, 1.0, True, True, 128)}
SHAPES = [(1, 16384, 8, 256), (4, 4096, 8, 256)]
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
out = os.environ.get("OUT", ".")


def use(tiles):
    fq.PREPASS_TILES_SM90[256] = tiles
    fq.prepass_plan.cache_clear()


rows = []
names = list(VARIANTS)
for shape in SHAPES:
    b, s, h, d = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    flops = 4 * b * h * s * s * d
    cfg = FP8Config()
    ref = None
    for n in names:  # compile, and the outputs against the table's
        use(VARIANTS[n])
        o = kernels.flash_attn_fp8_func(q, k, v, config=cfg)
        x = fq.quantize_qkv_triton(q, k, v, cfg)
        if ref is None:
            ref = (o.float(), x)
        else:
            same = {t: torch.equal(getattr(x, t).view(torch.uint8), getattr(ref[1], t).view(torch.uint8))
                    for t in ("q", "k", "v_t", "q_scale", "k_scale", "v_scale")}
            rows.append({"shape": shape, "tiles": n, "check": same, "out_max_diff": (o.float() - ref[0]).abs().max().item()})
            print(rows[-1], flush=True)
    times = {n: [] for n in names}
    graph = {n: [] for n in names}
    for rnd in range(ROUNDS):
        for i in round_order(len(names), rnd):
            n = names[i]
            use(VARIANTS[n])
            times[n].append(do_bench(lambda: kernels.flash_attn_fp8_func(q, k, v, config=cfg), warmup=25, rep=200,
                                     return_mode="median"))
            graph[n].append(do_bench_cudagraph(lambda: fq.quantize_qkv_triton(q, k, v, cfg), rep=50,
                                               return_mode="median"))
    for n in names:
        ms, gms = statistics.median(times[n]), statistics.median(graph[n])
        rows.append({"shape": shape, "tiles": n, "op_ms": ms, "op_tflops": flops / ms / 1e9, "prepass_graph_ms": gms,
                     "op_rounds": times[n], "prepass_rounds": graph[n]})
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("rounds")}), flush=True)
json.dump({"device": torch.cuda.get_device_name(), "variants": {n: str(t) for n, t in VARIANTS.items()},
           "rows": rows}, open(f"{out}/op_ab.json", "w"), indent=1)
