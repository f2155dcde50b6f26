"""Where the Gluon forward's tiles spend their cycles: phase lengths from the consumers' %clock64 stamps (one GPU).

    PYTHONUNBUFFERED=1 python -m experiments.trace_gluon_fwd --out $OUT [--dtype fp8|bf16] [--head-dim 128]
        [--seqlens 4096,16384] [--tile q_stages=2,o_buffer=k,...] [--rounds 2]

For each seqlen (16k tokens x hidden 2048, non-causal, the paper's shapes) the forward runs a few times with a
trace buffer (kernels.gluon.trace); each round prints, per consumer warpgroup, the median cycles of a tile's
phases: q_wait (setup and the Q wait), attend (its key blocks), epilogue, gap (to the next tile) and tile. The
default tile and, with --tile, a TileConfig with those fields changed run in turn, `--rounds` times, in one
process: cycle counts compare only within a process. With two or more seqlens, a line through their tile cycles
splits a tile into a cost per key block and a fixed cost (what makes short sequences slower per FLOP).
Writes <out>/trace_gluon_fwd.json. A traced build stamps 4 points per tile and consumer and is otherwise the
kernel (tests/kernels/test_gluon_compile.py checks its key loop), but its cycles are not the untraced kernel's:
time changes with do_bench, as the paper tables do.
"""
import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import torch

from experiments.provenance import collect

TOKENS, HIDDEN = 16384, 2048


def parse_tile(spec: str, base):
    """'q_stages=2,o_buffer=k' -> base with those TileConfig fields (ints, true/false, or strings)."""
    names = {f.name for f in fields(base)}
    changes = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in names:
            raise ValueError(f"--tile: {key!r} is not a TileConfig field ({', '.join(sorted(names))})")
        if value.lower() in ("true", "false"):
            changes[key] = value.lower() == "true"
        else:
            changes[key] = int(value) if value.lstrip("-").isdigit() else value
    return replace(base, **changes)


def run_traced(dtype, head_dim, seqlen, tile, warm=3):
    """(phase rows per consumer, key blocks per tile) of the non-causal forward at one paper shape."""
    from kernels.fp8 import quantize_qkv
    from kernels.gluon import forward as fwd
    from kernels.gluon.trace import phase_cycles, trace_buffer
    batch, heads = TOKENS // seqlen, HIDDEN // head_dim
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = head_dim ** -0.5
    trace = trace_buffer(q.device, tile.block_m // fwd.CONSUMER_ROWS)
    if dtype == "fp8":
        qkv = quantize_qkv(q, k, v)
        call = lambda: fwd.fp8_attention_forward(qkv, scale, False, torch.bfloat16, tile=tile, trace=trace)
    else:
        call = lambda: fwd.attention_forward(q, k, v, scale, False, tile=tile, trace=trace)
    for _ in range(warm):
        call()
    trace.zero_()
    call()
    torch.cuda.synchronize()
    return phase_cycles(trace), -(-seqlen // tile.block_n)


def main(argv=None):
    from kernels.gluon.forward import default_tile
    from kernels.gluon.trace import fixed_cost
    p = argparse.ArgumentParser(prog="python -m experiments.trace_gluon_fwd", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/trace")
    p.add_argument("--dtype", choices=["fp8", "bf16"], default="fp8")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seqlens", default="4096,16384")
    p.add_argument("--tile", default="", help="TileConfig fields to change for a second build, e.g. q_stages=2")
    p.add_argument("--rounds", type=int, default=2, help="times each build runs, in turn")
    args = p.parse_args(argv)
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        raise SystemExit(f"{p.prog}: error: the Gluon kernels it traces need an sm_90 (Hopper) GPU")
    base = default_tile(1 if args.dtype == "fp8" else 2, args.head_dim, False)
    tiles = {"default": base}
    if args.tile:
        tiles[args.tile] = parse_tile(args.tile, base)
    seqlens = [int(s) for s in args.seqlens.split(",")]
    rows = []
    for rnd in range(args.rounds):
        for seqlen in seqlens:
            for name, tile in tiles.items():
                phases, blocks = run_traced(args.dtype, args.head_dim, seqlen, tile)
                row = dict(round=rnd, tile=name, seqlen=seqlen, key_blocks=blocks, consumers=phases)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if len(seqlens) >= 2:
        lo, hi = min(seqlens), max(seqlens)
        for name in tiles:
            for rnd in range(args.rounds):
                a, b = (next(r for r in rows if r["tile"] == name and r["round"] == rnd and r["seqlen"] == s)
                        for s in (lo, hi))
                for c, (pa, pb) in enumerate(zip(a["consumers"], b["consumers"])):
                    per_block, fixed = fixed_cost(a["key_blocks"], pa["tile"], b["key_blocks"], pb["tile"])
                    fit = dict(fit=True, tile=name, round=rnd, consumer=c, cycles_per_block=round(per_block),
                               fixed_cycles_per_tile=round(fixed), fixed_share_at_shortest=round(fixed / pa["tile"], 4))
                    rows.append(fit)
                    print(json.dumps(fit), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace_gluon_fwd.json").write_text(json.dumps(dict(provenance=collect(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
