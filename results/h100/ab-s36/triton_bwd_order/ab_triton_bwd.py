"""Scratch A/B (session 36): the Triton backward's causal order, old (sections of one head = the 2-D grid's
order) against FA3's sections (40 MiB), interleaved rounds, cuDNN beside. Prints one JSON row per cell."""
import json, statistics, sys
import torch, triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from experiments.ab_tiles import round_order
from kernels.flops import attention_flops, tflops_per_s
from kernels.triton import attention_backward_triton, attention_forward_triton

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
for d in (256, 128, 64):
    for s in (1024, 2048, 4096, 8192, 16384):
        b, h = 16384 // s, 2048 // d
        q, k, v, do = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        sc = d ** -0.5
        out, lse = attention_forward_triton(q, k, v, sc, True)
        old = attention_backward_triton(do, q, k, v, out, lse, sc, True, section_l2_bytes=0)
        new = attention_backward_triton(do, q, k, v, out, lse, sc, True)
        same = all(torch.equal(x, y) for x, y in zip(old, new))
        qt, kt, vt, dot = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v, do))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        calls = {"old": lambda: attention_backward_triton(do, q, k, v, out, lse, sc, True, section_l2_bytes=0),
                 "sections": lambda: attention_backward_triton(do, q, k, v, out, lse, sc, True),
                 "cudnn": lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True)}
        flops = attention_flops(b, s, h, d, True, mode="bwd")
        t = {n: [] for n in calls}
        for r in range(rounds):
            for n in (list(calls)[i] for i in round_order(len(calls), r)):
                t[n].append(tflops_per_s(flops, triton.testing.do_bench(calls[n], warmup=10, rep=50, return_mode="median")))
        row = dict(head_dim=d, seqlen=s, bitwise_equal=same, **{n: round(statistics.median(x), 1) for n, x in t.items()},
                   rounds={n: [round(y, 1) for y in x] for n, x in t.items()})
        row["sections/old"] = round(row["sections"] / row["old"], 3)
        row["sections/cudnn"] = round(row["sections"] / row["cudnn"], 3)
        print(json.dumps(row), flush=True)
        del q, k, v, do, out, lse, old, new, o, qt, kt, vt, dot
        torch.cuda.empty_cache()
