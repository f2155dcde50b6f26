"""Interleaved A/B of Gluon forward tiles on one GPU: the default tile against named changes, round after round.

At the H200's 700 W cap the clock, not the kernel, moves a run by several percent from machine to machine
(results/h200/power.md), so separate runs cannot settle a gain of that size. Here every round times, shape by
shape, the public op (as the paper's `ours-bf16` / `ours-fp8-kernel` call it: FP8 on inputs quantized before
timing), cuDNN's SDPA (BF16 runs: the bars' peer), the Gluon forward under its default tile, and under each named
change, in an order that changes from round to round (`experiments.rounds.round_order`: over as many rounds as
calls, twice as many for an odd count, each call runs once at every position and right after every other call
equally often), so `--rounds` should be a multiple of that:

    python -m experiments.ab_tiles --dtype fp8 --head-dim 256 --seqlens 4096,16384 --rounds 6 \\
        --tile unoverlapped=overlap=0,split_kv=0,thread_arrive=0,named_turn=0 --out $OUT/ab

Shapes are the paper's (16k tokens, hidden 2048: batch 16384 / seqlen, heads 2048 / head dim); `--heads` sets
another head count (e.g. one whose tiles fill the last round of the persistent grid). Writes
ab_tiles.json (every timing) and ab_tiles.md (per shape and tile: TFLOPs/s each round, median, ratio to the
default's median). Times are triton.testing.do_bench medians.
"""
import argparse
import dataclasses
import json
import shlex
import statistics
import sys
from pathlib import Path

from experiments import provenance, writers
from experiments.rounds import round_order
from experiments.tune_gluon import parse_masks

TOKENS, HIDDEN = 16384, 2048
DTYPES = ("bf16", "fp8")
TIMING_NOTE = ("Each round times every shape's calls in turn: the public op, cuDNN's SDPA (BF16), the default "
               "tile and each named change, in an order balanced over rounds (a Williams design: each call at "
               "every position, and after every other call, equally often); "
               "cells are triton.testing.do_bench medians (TFLOPs/s by the paper's FLOP counts), the median over rounds, "
               "and its ratio to the default tile's.")


def parse_tile(spec):
    """"name=field=value,field=value" -> (name, {TileConfig field: value}); bool fields take 0/1/true/false."""
    from kernels.gluon import TileConfig
    name, sep, changes = spec.partition("=")
    if not name or not sep or not changes:
        raise ValueError(f"--tile wants name=field=value[,field=value...], got {spec!r}")
    types = {f.name: f.type for f in dataclasses.fields(TileConfig)}
    out = {}
    for item in changes.split(","):
        field, sep, value = item.partition("=")
        if field not in types or not sep:
            raise ValueError(f"--tile {name}: {item!r} is not field=value with a TileConfig field ({sorted(types)})")
        kind = types[field] if isinstance(types[field], str) else types[field].__name__
        if kind == "bool":
            if value.lower() not in ("0", "1", "false", "true"):
                raise ValueError(f"--tile {name}: {field} is a switch (0/1/true/false), got {value!r}")
            out[field] = value.lower() in ("1", "true")
        elif kind == "int":
            if not value.isdigit():
                raise ValueError(f"--tile {name}: {field} is a whole number, got {value!r}")
            out[field] = int(value)
        else:
            out[field] = value
    return name, out


def _callables(dtype, head_dim, nheads, seqlen, causal, tiles):
    """[(label, fn)] for one shape: the public op, cuDNN's SDPA (BF16 only), the Gluon forward's default tile,
    then each named tile."""
    import torch
    import kernels
    from kernels import gluon
    from kernels.gluon.forward import default_tile
    from experiments.paper.candidates import SDPA_CUDNN
    from experiments.paper.runner import Problem
    batch = TOKENS // seqlen
    q, k, v = (torch.randn(batch, seqlen, nheads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    base = default_tile(1 if dtype == "fp8" else 2, head_dim, causal)
    scale = head_dim ** -0.5
    if dtype == "fp8":
        x = kernels.quantize_qkv(q, k, v, kernels.FP8Config())
        public = lambda: kernels.fp8_attention_forward(x, causal=causal, out_dtype=torch.bfloat16)  # noqa: E731

        def under(tile):
            return lambda: gluon.fp8_attention_forward(x, scale, causal, torch.bfloat16, tile=tile)
        peers = []
    else:
        public = lambda: kernels.flash_attn_func(q, k, v, causal=causal)  # noqa: E731

        def under(tile):
            return lambda: gluon.attention_forward(q, k, v, scale, causal, tile=tile)
        # The BF16 bars' peer, in the same rounds, called as the paper tables call it.
        peers = [(SDPA_CUDNN.name, SDPA_CUDNN.build(Problem(batch, seqlen, nheads, head_dim, causal), q, k, v))]
    runs = [("public", public), *peers, ("default", under(base))]
    return runs + [(name, under(dataclasses.replace(base, **changes))) for name, changes in tiles]


def run(args, nheads, tiles):
    import torch
    import triton
    from kernels import attention_flops, tflops_per_s
    shapes = [(s, c) for s in args.seqlens for c in parse_masks(args.masks)]
    calls = {shape: _callables(args.dtype, args.head_dim, nheads, *shape, tiles) for shape in shapes}
    rows = []
    for rnd in range(args.rounds):
        for (seqlen, causal), fns in calls.items():
            flops = attention_flops(TOKENS // seqlen, seqlen, nheads, args.head_dim, causal)
            for label, fn in (fns[i] for i in round_order(len(fns), rnd)):
                ms = triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
                rows.append(dict(round=rnd, seqlen=seqlen, causal=causal, tile=label, ms=ms,
                                 tflops=tflops_per_s(flops, ms)))
                print(json.dumps(rows[-1]), flush=True)
    torch.cuda.synchronize()
    return rows


def table(rows, dtype, head_dim, nheads):
    """Markdown: per shape and tile the TFLOPs/s of each round, their median and its ratio to the default's."""
    body = []
    for seqlen, causal in dict.fromkeys((r["seqlen"], r["causal"]) for r in rows):
        here = [r for r in rows if (r["seqlen"], r["causal"]) == (seqlen, causal)]
        med = {t: statistics.median(r["tflops"] for r in here if r["tile"] == t)
               for t in dict.fromkeys(r["tile"] for r in here)}
        for t, m in med.items():
            rounds = " / ".join(f"{r['tflops']:.0f}" for r in here if r["tile"] == t)
            body.append([f"{seqlen} {'causal' if causal else 'full'}", t, rounds, f"{m:.0f}",
                         f"{m / med['default']:.3f}"])
    header = [f"{dtype} hd{head_dim}, {nheads} heads", "tile", "TFLOPs/s by round", "median", "/ default"]
    return writers.markdown_table(header, body) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.ab_tiles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=DTYPES, default="fp8")
    p.add_argument("--head-dim", type=int, choices=(64, 128, 256), default=128)
    p.add_argument("--seqlens", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384])
    p.add_argument("--heads", type=int, help="query heads (default: 2048 / head dim, the paper's)")
    p.add_argument("--masks", default="full", help="comma-separated: full, causal (default: %(default)s)")
    p.add_argument("--tile", action="append", default=[], help="name=field=value[,field=value...] (repeatable)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        parse_masks(args.masks)
        tiles = [parse_tile(spec) for spec in args.tile]
    except ValueError as err:
        p.error(str(err))
    import torch
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        raise SystemExit(f"{p.prog}: error: the Gluon kernels it times need an sm_90 (Hopper) GPU")
    prov = provenance.collect(shlex.join(["python", "-m", "experiments.ab_tiles",
                                          *(sys.argv[1:] if argv is None else argv)]))
    nheads = args.heads or HIDDEN // args.head_dim
    rows = run(args, nheads, tiles)
    writers.write_text(args.out / "ab_tiles.json", json.dumps(dict(provenance=prov, rows=rows), indent=1))
    md = table(rows, args.dtype, args.head_dim, nheads)
    writers.write_text(args.out / "ab_tiles.md", writers.preamble("Gluon forward tiles, A/B", prov,
                                                                  [TIMING_NOTE]) + "\n" + md)
    print(md)


if __name__ == "__main__":
    main()
