"""One-shot H200 run for the Gluon backward: correctness, compile stats, speed against cuDNN SDPA and Triton.

    PYTHONUNBUFFERED=1 python -m experiments.tune_gluon_bwd --out $OUT

Stages run as child processes with their own time limits, so a kernel that
hangs costs its stage, not the run: `check` (dq/dk/dv on small odd shapes,
causal, GQA, against float64 autograd, FA's criterion: within 2x PyTorch's own
bf16 error plus the reference's rounding; `--check-dtypes`), `stats`
(registers, spills, shared memory as the driver loaded the kernels), `bench`
(median backward times from triton.testing.do_bench at 16k tokens x hidden
2048, next to cuDNN SDPA's backward and our Triton backward; FLOPs =
kernels.flops mode "bwd", 2.5x the forward's), `pytest` (the GPU tests of
tests/kernels/test_gluon_backward.py; `--skip-pytest` leaves it out).
The default tile and the alternatives in ALTERNATIVES are checked on every
shape; a tile is timed only if all its checks passed. Results go to
<out>/tune_gluon_bwd.json; a table is printed last.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from experiments.stages import json_rows, run as run_child

HEAD_DIMS = (128, 64, 256)
SEQLENS = (1024, 2048, 4096, 8192, 16384)
TOKENS, HIDDEN = 16384, 2048
# batch, seqlen_q, seqlen_k, nheads, nheads_kv: tails everywhere, GQA, seqlen_q > seqlen_k (causal: rows that
# see no key) and seqlen_q < seqlen_k.
CHECK_SHAPES = [(2, 113, 203, 4, 4), (1, 1000, 517, 6, 2), (1, 517, 1000, 4, 1), (1, 1101, 1101, 4, 2),
                (2, 256, 256, 2, 2)]


def _errors(g, r):
    d = g.double() - r
    return d.abs().max().item(), (d.norm() / r.norm()).item()


def check_stage(head_dim, tile_names, dtype_names):
    import torch
    tiles = _tiles(head_dim)
    for name in (n for n in tile_names if n in tiles):
        for dtype in (getattr(torch, n) for n in dtype_names):
            for causal in (False, True):
                for shape in CHECK_SHAPES:
                    _check_one(shape, head_dim, dtype, causal, name, tiles[name])


def _check_one(shape, head_dim, dtype, causal, tile_name, tile):
    import torch
    from kernels.gluon.bwd import attention_backward
    from kernels.reference import attention_ref, attention_ref_grads
    from kernels.triton import attention_backward_triton
    b, sq, sk, h, h_kv = shape
    q = torch.randn(b, sq, h, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(b, sk, h_kv, head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    out, lse = attention_ref(q, k, v, causal, dtype=torch.float32)
    out = out.to(dtype)
    scale = head_dim ** -0.5
    # NaN-filled blocks freed just before the launch: the allocator hands them to dk/dv.
    poison = [torch.full_like(t, float("nan")) for t in (k, v)]
    del poison
    grads = attention_backward(dout, q, k, v, out, lse, scale, causal, tile=tile)
    torch.cuda.synchronize()
    ref = attention_ref_grads(q, k, v, dout, causal, torch.float64)[2:]
    low = attention_ref_grads(q, k, v, dout, causal, dtype)[2:]
    tri = attention_backward_triton(dout, q, k, v, out, lse, scale, causal)
    row = dict(stage="check", head_dim=head_dim, dtype=str(dtype).removeprefix("torch."), causal=causal,
               shape=list(shape), tile=tile_name, ok=True)
    for name, g, r, lo, t in zip("qkv", grads, ref, low, tri):
        err, rel = _errors(g, r)
        err_lo, rel_lo = _errors(lo, r)
        rounding = (r.to(dtype).double() - r).abs().max().item()
        ok = bool(torch.isfinite(g).all()) and err <= 2 * err_lo + 2 * rounding and rel <= 2 * rel_lo + 1e-5
        row[f"d{name}"] = dict(ok=ok, err=err, rel=rel, err_pytorch=err_lo, rel_pytorch=rel_lo,
                               err_triton=_errors(t, r)[0])
        row["ok"] &= ok
    print(json.dumps(row), flush=True)


def stats_stage():
    import torch
    from kernels.gluon.bwd import BwdVariant, compile_backward
    for d in HEAD_DIMS:
        for causal in (False, True):
            for name, tile in _tiles(d).items():
                ck = compile_backward(BwdVariant(torch.bfloat16, d, causal, tile))
                ck._init_handles()
                print(json.dumps(dict(stage="stats", head_dim=d, causal=causal, tile=name, n_regs=ck.n_regs,
                                      n_spills=ck.n_spills, shared=ck.metadata.shared,
                                      num_warps=ck.metadata.num_warps)), flush=True)


def _time(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


# Tile variants timed next to the default (kernels.gluon.bwd_report.alternative_tiles): split warpgroups lost
# 10-16% with the atomics (B3) and 16-25% with TMA reduce-adds (B6); B4's prefetched S^T and register dQ lost 1-20%
# and were removed; the other dK order (B5) and the other way of adding dQ_partial (B6), alone and together, are
# timed at each head dim, the causal masked blocks in a loop of their own or not (`ml`, `noml`, B9), and at hd64
# the 64-row tile that FA3's 128 rows replaced (B9), and at hd256 dQ_partial in a hand-over buffer of its own (one
# ring slot) instead of the ring slots (B10).
ALTERNATIVES = ("dkfirst", "fa3dk", "dqtma", "dqatomic", "dqtma_dkfirst", "dqtma_fa3dk", "dqatomic_dkfirst",
                "dqatomic_fa3dk", "ml", "noml", "m64", "m64_ml", "ownhandover")


def _tiles(head_dim):
    """The default and its variants in ALTERNATIVES that this head dim has
    (kernels.gluon.bwd_report.alternative_tiles: the dK order and the dQ adds the default does not use, ...)."""
    from kernels.gluon.bwd import BWD_TILES
    from kernels.gluon.bwd_report import alternative_tiles
    return dict(default=BWD_TILES[head_dim], **{name: tile for name, tile in alternative_tiles(head_dim).items()
                                                if name in ALTERNATIVES})


def _bench(batch, seqlen, nheads, head_dim, causal, tile_names, section_mbs=()):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.gluon.bwd import attention_backward, default_tile
    from kernels.gluon.bwd_report import distinct_tiles
    from kernels.triton import attention_backward_triton, attention_forward_triton
    q, k, v, dout = (torch.randn(batch, seqlen, nheads, head_dim, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    scale = head_dim ** -0.5
    out, lse = attention_forward_triton(q, k, v, scale, causal)
    flops = attention_flops(batch, seqlen, nheads, head_dim, causal, mode="bwd")
    row = dict(stage="bench", batch=batch, seqlen=seqlen, nheads=nheads, head_dim=head_dim, causal=causal)
    known = _tiles(head_dim) | {"default": default_tile(head_dim, causal, seqlen)}  # what the launch picks
    tiles = distinct_tiles({n: known[n] for n in tile_names if n in known}, causal)
    timed = {"triton": lambda: attention_backward_triton(dout, q, k, v, out, lse, scale, causal)}
    for name, tile in tiles.items():
        timed["gluon" if name == "default" else f"gluon_{name}"] = (
            lambda tile=tile: attention_backward(dout, q, k, v, out, lse, scale, causal, tile=tile))
    for mb in section_mbs if causal else ():  # the causal order's L2 budget (kernels.gluon.bwd.causal_section_heads)
        timed[f"gluon_l2_{mb}mb"] = (
            lambda b=mb * 2**20: attention_backward(dout, q, k, v, out, lse, scale, causal, section_l2_bytes=b))
    for name, fn in timed.items():
        try:
            ms = _time(fn)
            row[f"{name}_ms"], row[f"{name}_tflops"] = ms, tflops_per_s(flops, ms)
        except Exception as e:  # report and go on
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
    qt, kt, vt, dot = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v, dout))
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            ms = _time(lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True))
        row["cudnn_ms"], row["cudnn_tflops"] = ms, tflops_per_s(flops, ms)
    except RuntimeError as e:
        row["cudnn_error"] = str(e)[:200]
    print(json.dumps(row), flush=True)


def bench_stage(seqlens, tile_names, head_dims=HEAD_DIMS, section_mbs=()):
    for d in head_dims:
        for causal in (False, True):
            for s in seqlens:
                _bench(TOKENS // s, s, HIDDEN // d, d, causal, tile_names, section_mbs)


def _run_stage(args, timeout, log):
    out, _, _ = run_child([sys.executable, "-m", "experiments.tune_gluon_bwd", *args], timeout, log, " ".join(args))
    return json_rows(out)


def _table(rows):
    checks = [r for r in rows if r["stage"] == "check"]
    print(f"\ncorrectness: {sum(r['ok'] for r in checks)}/{len(checks)} checks passed")
    for r in checks:
        if not r["ok"]:
            print("  FAIL", json.dumps(r))
    for r in rows:
        if r["stage"] == "stats":
            print(f"  stats hd{r['head_dim']} causal={r['causal']} {r['tile']}: regs {r['n_regs']} "
                  f"spills {r['n_spills']} smem {r['shared']} warps {r['num_warps']}")
    print("\nbackward TFLOPs/s (16k tokens, hidden 2048; ratio = gluon / cudnn)")
    print(f"  {'hd':>4} {'causal':>6} {'seqlen':>6} {'gluon':>7} {'cudnn':>7} {'ratio':>6} {'triton':>7}")
    nan = float("nan")
    for r in rows:
        if r["stage"] == "bench":
            g, c, t = r.get("gluon_tflops", nan), r.get("cudnn_tflops", nan), r.get("triton_tflops", nan)
            alts = " ".join(f"{n}:{r[f'gluon_{n}_tflops']:.0f} ({r[f'gluon_{n}_tflops'] / g:.3f}x gluon, "
                            f"{r[f'gluon_{n}_tflops'] / c:.2f}x cudnn)" for n in ALTERNATIVES if f"gluon_{n}_tflops" in r)
            errors = " ".join(f"{k}: {v}" for k, v in r.items() if k.endswith("_error"))
            print(f"  {r['head_dim']:>4} {str(r['causal']):>6} {r['seqlen']:>6} {g:7.1f} {c:7.1f} {g / c:6.2f}"
                  f" {t:7.1f}  {alts} {errors}")


def main():
    parser = argparse.ArgumentParser(prog="python -m experiments.tune_gluon_bwd", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--stage", choices=["check", "stats", "bench"])
    parser.add_argument("--head-dim", type=int, help="check: the head dim; bench: only this one")
    parser.add_argument("--tiles", default="default", help="check, bench: tile names, comma-separated")
    parser.add_argument("--seqlens", default=",".join(map(str, SEQLENS)), help="bench seqlens, comma-separated")
    parser.add_argument("--skip-pytest", action="store_true", help="leave out the GPU tests (default tile only)")
    parser.add_argument("--causal-section-mb", default="",
                        help="bench: also time the default tile, causal, with these L2 budgets (MiB, comma-separated)")
    parser.add_argument("--check-dtypes", default="bfloat16,float16", help="check: dtypes, comma-separated")
    args = parser.parse_args()
    if args.stage == "check":
        return check_stage(args.head_dim, args.tiles.split(","), args.check_dtypes.split(","))
    if args.stage == "stats":
        return stats_stage()
    if args.stage == "bench":
        return bench_stage([int(x) for x in args.seqlens.split(",")], args.tiles.split(","),
                           (args.head_dim,) if args.head_dim else HEAD_DIMS,
                           [int(x) for x in args.causal_section_mb.split(",") if x])

    import torch
    import triton
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    rows = []
    with open(out / "tune_gluon_bwd.log", "w") as log:
        names = ("default", ) + ALTERNATIVES  # the default first: a hang of an alternative spares its checks
        for d in HEAD_DIMS:
            rows += _run_stage(["--stage", "check", "--head-dim", str(d), "--tiles", ",".join(names),
                                "--check-dtypes", args.check_dtypes], 150, log)
        rows += _run_stage(["--stage", "stats"], 60, log)
        # A tile that failed or hung any check is not timed.
        per_head_dim = len(args.check_dtypes.split(",")) * 2 * len(CHECK_SHAPES)
        passed = [n for n in names
                  if sum(r["ok"] for r in rows if r["stage"] == "check" and r["tile"] == n)
                  == per_head_dim * sum(n in _tiles(d) for d in HEAD_DIMS)]
        if passed:
            rows += _run_stage(["--stage", "bench", "--seqlens", args.seqlens, "--tiles", ",".join(passed)], 330, log)
        (out / "tune_gluon_bwd.json").write_text(json.dumps(rows, indent=1))
        if not args.skip_pytest:
            pytest_out, _, _ = run_child([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                          "tests/kernels/test_gluon_backward.py"], 150, log, "pytest")
    _table(rows)
    if not args.skip_pytest:
        print("\npytest (GPU tests, default tile):", (pytest_out.strip().splitlines() or ["no output"])[-1])


if __name__ == "__main__":
    main()
