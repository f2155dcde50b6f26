"""The FA3 paper's Table 3 (arXiv 2407.08608, section 4.3): attention forward RMSE against FP64, with outliers.

As in the paper: Q, K, V entries are N(0, 1) + N(0, 100)·Bernoulli(0.001)
(an extra term of std 10 on 0.1% of entries), and the error is the RMSE of the
attention output O against an FP64 computation of the same attention. The
paper names no shape; ours are listed in SHAPES (8k tokens each, hidden 2048,
non-causal). Inputs are drawn on the CPU from a per-shape seed, rounded once to
bf16 and given to every method (the FP16 rows convert them exactly), so all
rows see the same numbers and the reference is FP64 attention of those.

Methods (paper figure beside each where the paper has one):
  baseline BF16 / FP16: PyTorch's standard attention in that precision.
  ours BF16 / FP16: kernels.flash_attn_func (FA3's FP16 row: 1.9e-4).
  baseline FP8: the paper's description: per-tensor scaled e4m3 Q, K, V, FP32
      matmul accumulation, softmax in FP16, P cast to e4m3 as is (P <= 1 needs
      no scale); standard (materialized) attention. Paper: 2.4e-2.
  ours FP8 (block + Hadamard): kernels.flash_attn_fp8_func, FP8Config(). Paper: 9.1e-3.
  ours FP8 w/o block quantization: per-tensor scales + Hadamard. Paper: 9.3e-3.
  ours FP8 w/o Hadamard: block scales, no rotation. Paper: 2.4e-2.
  ours FP8 w/o either: per-tensor scales, no rotation (no paper row).
On the GPU the kernels run; on CPU (or KERNELS_IMPL=reference) the same rows
come from the plain-PyTorch reference of the same scheme (kernels.quant); the
`backend` column says which.
"""
import argparse
import math

import torch

from kernels import FP8Config, flash_attn_fp8_func, flash_attn_func
from kernels.fp8 import fp8_backend
from kernels.ops import select_impl
from kernels.reference import attention_ref

# (batch, seqlen, nheads, headdim): 8k tokens and hidden 2048 each; hd 128 at three lengths, plus hd 64 and 256.
SHAPES = [(8, 1024, 16, 128), (4, 2048, 16, 128), (2, 4096, 16, 128), (4, 2048, 32, 64), (4, 2048, 8, 256)]
QUICK_SHAPES = [(1, 256, 4, 128), (1, 128, 4, 64)]
OUTLIER_PROB, OUTLIER_STD = 0.001, 10.0
# The paper's figures (Table 3, H100), keyed by our method names.
PAPER_RMSE = {
    "baseline FP16": 3.2e-4,
    "ours FP16": 1.9e-4,  # FlashAttention-3 FP16
    "baseline FP8": 2.4e-2,
    "ours FP8 (block + Hadamard)": 9.1e-3,
    "ours FP8 w/o block quantization": 9.3e-3,
    "ours FP8 w/o Hadamard": 2.4e-2,
}
FP8_METHODS = {
    "ours FP8 (block + Hadamard)": FP8Config(),
    "ours FP8 w/o block quantization": FP8Config(granularity="tensor"),
    "ours FP8 w/o Hadamard": FP8Config(hadamard=False),
    "ours FP8 w/o block or Hadamard": FP8Config(granularity="tensor", hadamard=False),
}
# Must-show targets: our FP8 at most the paper's 9.1e-3, and this many times below baseline FP8.
TARGET_RMSE, TARGET_GAIN = 9.1e-3, 2.5


def outlier_qkv(shape, seed: int, device):
    """Q, K, V (bf16, on `device`) with entries N(0, 1) + N(0, OUTLIER_STD**2)·Bernoulli(OUTLIER_PROB)."""
    gen = torch.Generator().manual_seed(seed)

    def draw():
        base = torch.randn(shape, generator=gen)
        spikes = torch.randn(shape, generator=gen) * OUTLIER_STD * (torch.rand(shape, generator=gen) < OUTLIER_PROB)
        return (base + spikes).to(torch.bfloat16).to(device)

    return draw(), draw(), draw()


def _per_tensor_e4m3(x: torch.Tensor):
    """(e4m3 codes as fp32, scale): amax-scaled per-tensor quantization."""
    scale = x.float().abs().amax() / torch.finfo(torch.float8_e4m3fn).max
    return (x.float() / scale).to(torch.float8_e4m3fn).float(), scale


def baseline_fp8_attention(q, k, v, softmax_scale: float) -> torch.Tensor:
    """The paper's baseline FP8 attention (see module doc), one batch element at a time to bound memory."""
    (q8, sq), (k8, sk), (v8, sv) = (_per_tensor_e4m3(t) for t in (q, k, v))
    group = q.shape[2] // k.shape[2]
    outs = []
    for b in range(q.shape[0]):
        qb = q8[b].transpose(0, 1)  # (h, s, d)
        kb = k8[b].transpose(0, 1).repeat_interleave(group, dim=0)
        vb = v8[b].transpose(0, 1).repeat_interleave(group, dim=0)
        s = (qb @ kb.transpose(-1, -2)) * (sq * sk * softmax_scale)  # fp8 products, fp32 accumulation
        p = torch.softmax(s.half(), dim=-1)  # intermediate softmax in fp16
        outs.append(((p.to(torch.float8_e4m3fn).float() @ vb) * sv).transpose(0, 1))
    return torch.stack(outs)


def _fp64_reference(q, k, v):
    return torch.stack([attention_ref(q[b:b + 1], k[b:b + 1], v[b:b + 1])[0][0] for b in range(q.shape[0])])


def _methods(q, k, v):
    """{method: (callable -> out, backend name)} for one input."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    per_batch = lambda dtype: lambda: torch.stack(  # noqa: E731
        [attention_ref(q[b:b + 1].to(dtype), k[b:b + 1].to(dtype), v[b:b + 1].to(dtype), dtype=dtype)[0][0]
         for b in range(q.shape[0])])
    bf16_impl = select_impl(q.device, q.shape[-1])
    fp8_impl = fp8_backend(q.device, q.shape[-1])
    methods = {
        "baseline BF16": (per_batch(torch.bfloat16), "torch"),
        "baseline FP16": (per_batch(torch.float16), "torch"),
        "ours BF16": (lambda: flash_attn_func(q, k, v), bf16_impl),
        "ours FP16": (lambda: flash_attn_func(q.half(), k.half(), v.half()), bf16_impl),
        "baseline FP8": (lambda: baseline_fp8_attention(q, k, v, scale), "torch"),
    }
    for name, config in FP8_METHODS.items():
        methods[name] = ((lambda config=config: flash_attn_fp8_func(q, k, v, config=config)), fp8_impl)
    return methods


def measure(shape, seed: int, device) -> list[dict]:
    """One row per method for one shape."""
    q, k, v = outlier_qkv(shape, seed, device)
    ref = _fp64_reference(q, k, v)
    rows = []
    for name, (attend, backend) in _methods(q, k, v).items():
        rmse = (attend().double() - ref).pow(2).mean().sqrt().item()
        rows.append({"method": name, "batch": shape[0], "seqlen": shape[1], "nheads": shape[2],
                     "headdim": shape[3], "backend": backend, "rmse": rmse, "paper_rmse": PAPER_RMSE.get(name)})
    baseline = next(r["rmse"] for r in rows if r["method"] == "baseline FP8")
    for r in rows:
        r["baseline_fp8_over_rmse"] = baseline / r["rmse"]
    return rows


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    """Table 3 at SHAPES (QUICK_SHAPES if quick): one dict per (shape, method)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return [row for i, shape in enumerate(QUICK_SHAPES if quick else SHAPES) for row in measure(shape, i, device)]


def must_show(rows: list[dict]) -> list[dict]:
    """Per shape: our FP8 (block + Hadamard) RMSE <= TARGET_RMSE and >= TARGET_GAIN times below baseline FP8."""
    checks = []
    for r in rows:
        if r["method"] == "ours FP8 (block + Hadamard)":
            checks.append({"shape": (r["batch"], r["seqlen"], r["nheads"], r["headdim"]), "rmse": r["rmse"],
                           "gain": r["baseline_fp8_over_rmse"],
                           "ok": r["rmse"] <= TARGET_RMSE and r["baseline_fp8_over_rmse"] >= TARGET_GAIN})
    return checks


def markdown(rows: list[dict]) -> str:
    shapes = list(dict.fromkeys((r["batch"], r["seqlen"], r["nheads"], r["headdim"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["method"], (r["batch"], r["seqlen"], r["nheads"], r["headdim"])): r for r in rows}
    head = ["method", "backend", *(f"b{b} s{s} h{h} d{d}" for b, s, h, d in shapes), "paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        first = by_key[m, shapes[0]]
        cells = [f"{by_key[m, s]['rmse']:.2e}" for s in shapes]
        paper = first["paper_rmse"]
        backends = ", ".join(dict.fromkeys(by_key[m, s]["backend"] for s in shapes))  # dispatch is per shape
        lines.append("| " + " | ".join([m, backends, *cells, f"{paper:.1e}" if paper else ""]) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.paper.table3_numerics",
                                description="FA3 Table 3: attention RMSE vs FP64 with outlier inputs")
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU CI)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    rows = run(quick=args.quick, device=args.device)
    print(markdown(rows))
    print()
    for c in must_show(rows):
        print(f"{'PASS' if c['ok'] else 'FAIL'} {c['shape']}: ours FP8 RMSE {c['rmse']:.2e} "
              f"(target <= {TARGET_RMSE:.1e}), {c['gain']:.2f}x below baseline FP8 (target >= {TARGET_GAIN}x)")
    return rows


if __name__ == "__main__":
    main()
