"""One-shot GPU run for the Triton attention kernels: GPU tests, tile sweeps, a table against SDPA.

    PYTHONUNBUFFERED=1 python -m experiments.tune_triton --out $OUT

Stages run as child processes with their own time limits (a hung kernel costs
its stage, not the run):
- `tests`: the `gpu`-marked tests of tests/kernels/test_triton_attention.py and test_compile.py
  (`--tests-filter`: only those whose names match, pytest's -k).
- `sweep`: every candidate config (tiles, `exp2_poly`, `warp_specialize`) at
  the sweep seqlens (default 8k) per head dim (`--sweep-head-dims`) and
  causality, forward and/or backward (`--sweep-kinds`), in the paper's setup
  (batch x seqlen = 16k tokens, hidden 2048, heads = 2048 / headdim, bf16);
  each config's output is checked against cuDNN SDPA's before it is timed.
  All candidates compile in parallel first. Winners: highest mean TFLOPs/s
  over the sweep seqlens.
- `table`: the winners (or the tuned tables when no sweep ran) next to SDPA's
  cuDNN and flash backends over seqlens (`--quick`: hd128 1k-16k, hd64/256 at
  8k and 16k), forward and backward, in TFLOPs/s (kernels.flops: the FA3
  paper's counts) and ratios.
Times are triton.testing.do_bench medians after warm-up. Everything goes to
<out>/tune_triton.json and .log, the table also to <out>/triton_vs_sdpa.md
with its provenance (results/h200/triton_vs_sdpa/kernels.md is one); tables
are printed last. This is the development tool behind
kernels/triton/tiles.py (log: docs/tuning-triton.md).
"""
import argparse
import contextlib
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.stages import json_rows, run as run_child

ROOT = Path(__file__).resolve().parents[1]
TOKENS, HIDDEN = 16384, 2048
HEAD_DIMS = (64, 128, 256)
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)

# Candidates: Tiles fields in order (block_m, block_n, num_warps, num_stages, max_regs, exp2_poly,
# warp_specialize, persistent, lazy_rescale). Pruned
# on CPU by compiling for sm_90 (docs/tuning-triton.md): no or few spills, programs per SM from registers
# and shared memory, and whether ptxas serializes the wgmmas (C7512: each one waited on at once, as at
# hd128 (128, 64, 8 warps) under a 128-register cap, which still measured among the fastest).
# Warp-specialized (Triton's pass: a TMA producer and two 64-row consumer warpgroups, 12 warps, 1 program per
# SM, no spill; `python -m kernels.triton.ws_report --all`): num_stages = K/V buffers, shared memory 99/132 KB
# at hd64, 197 KB (128, 128, 2) / 131 KB (128, 64, 2) / 164 KB (128, 64, 3) at hd128, 197 KB at hd256.
WS = (None, 0, True)
FWD_CANDIDATES = {
    # Warp-specialized at 3 stages gave wrong outputs on the H200 (hd64 (128, 128), hd128 (128, 64): NaN).
    64: [(128, 128, 8, 3, 128), (128, 64, 8, 4, 128), (64, 128, 4, 1), (64, 64, 4, 1), (128, 128, 4, 2, *WS)],
    # Warp-specialized with exp2_poly: one exp2 in 8 (4) on the FMA pipe, unmasked loops only (ws_report).
    128: [(64, 128, 4, 1, 168), (128, 64, 8, 2, 128), (64, 128, 4, 1), (64, 64, 4, 1), (64, 64, 4, 3),
          (128, 128, 8, 3), (128, 32, 8, 3, 128), (64, 128, 4, 1, 168, 8),
          (128, 128, 4, 2, *WS), (128, 64, 4, 2, *WS), (128, 128, 4, 2, None, 8, True),
          (128, 128, 4, 2, None, 4, True),
          # Persistent (one program per SM walks the tiles; 224 KB of shared memory with the epilogue's buffer).
          (128, 128, 4, 2, None, 8, True, True), (128, 128, 4, 2, None, 0, True, True),
          # Lazy O rescale (docs/tuning-triton.md step 10): the tuned non-causal tile.
          (128, 128, 4, 2, None, 8, True, True, True)],
    256: [(128, 64, 8, 2), (64, 64, 4, 1), (64, 64, 4, 2), (128, 64, 4, 1, *WS), (128, 32, 4, 2, *WS),
          (128, 64, 4, 1, *WS, True), (128, 64, 4, 1, *WS, False, True), (128, 64, 4, 1, *WS, True, True)],
}
# dK/dV kernel: block_m query rows per step, block_n keys per program; dQ kernel: the reverse. The first of
# each list is the pair the other list's candidates run with (so the tuned pair comes first).
DKDV_CANDIDATES = {
    64: [(64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 3)],  # warp-specialized (64, 128, 4, 2): -6 to -12%
    128: [(64, 128, 4, 2, None, 8, True), (32, 64, 4, 3), (32, 64, 4, 3, None, 8), (32, 64, 4, 3, None, 4),
          (32, 64, 4, 2),
          # Warp-specialized by Triton (a TMA producer and two 4-warp consumers of 64 keys each, 12 warps,
          # one program per SM); num_stages = Q/dO buffers. Compiled for sm_90 on CPU: 164 KB of shared
          # memory at (64, 128, 2) (ptxas: 8 B spill stores, 60 B loads), 197 KB at (64, 128, 3); no spill
          # at block_m 32: 148 KB at (32, 128, 3), 164 KB at (32, 128, 4), but with GQA (8 / 2 heads) those
          # gave wrong dK on the H200 (the sweep has no GQA), as did (64, 128, 3). Block_m 128 crashes the pass.
          (64, 128, 4, 2, None, 0, True), (64, 128, 4, 2, None, 4, True)],
    256: [(64, 64, 8, 2)],
}
DQ_CANDIDATES = {
    64: [(128, 64, 8, 2), (64, 64, 4, 2)],
    # ptxas (sm_90a): (128, 32, 8, 3) 115 KB of shared memory, one program per SM; (128, 32, 8, 2) 98 KB and
    # 128 registers, two; (128, 64, 8, 2) 131 KB, 160 registers, one.
    128: [(128, 32, 8, 3), (64, 64, 4, 2), (64, 64, 4, 2, None, 8), (64, 32, 4, 3), (128, 32, 8, 3, None, 8),
          (128, 32, 8, 2), (128, 32, 8, 2, None, 8), (128, 64, 8, 2)],
    256: [(128, 32, 8, 2), (128, 64, 8, 1)],
}
# --quick table: the targets' shapes (hd128 over seqlens) and the other head dims at the long seqlens.
QUICK_SEQLENS = {64: (8192, 16384), 128: (1024, 2048, 4096, 8192, 16384), 256: (8192, 16384)}


def _time(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _shape(head_dim, seqlen):
    return TOKENS // seqlen, seqlen, HIDDEN // head_dim  # batch, seqlen, nheads


def _inputs(batch, seqlen, nheads, head_dim, seed=0):
    import torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, seqlen, nheads, head_dim, generator=g, device="cuda", dtype=torch.bfloat16)
            for _ in range(4)]  # q, k, v, dout


def _rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


@contextlib.contextmanager
def _compile_only(workers):
    """Inside, `kernel[grid](...)` compiles (in parallel threads) instead of launching."""
    import triton
    from triton.runtime.jit import JITFunction
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda self, grid: functools.partial(self.warmup, grid=grid)
    try:
        with triton.AsyncCompileMode(ThreadPoolExecutor(workers), ignore_errors=True):
            yield
    finally:
        JITFunction.__getitem__ = original


def _fwd_tiles(spec):
    from kernels.triton.tiles import Tiles
    return Tiles(*spec)


def _bwd_tiles(spec):
    """spec: [dK/dV tiles, dQ tiles]."""
    from kernels.triton.tiles import BwdTiles, Tiles
    return BwdTiles(Tiles(*spec[0]), Tiles(*spec[1]))


def _bwd_candidates(head_dim):
    """dK/dV variants with the first dQ tiles, then dQ variants with the first dK/dV tiles."""
    dkdv, dq = DKDV_CANDIDATES[head_dim], DQ_CANDIDATES[head_dim]
    return [[c, dq[0]] for c in dkdv] + [[dkdv[0], c] for c in dq[1:]]


def sweep_stage(head_dims, seqlens, kinds):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.triton import attention_backward_triton, attention_forward_triton

    work = []
    for d in head_dims:
        fwds = FWD_CANDIDATES[d] if "fwd" in kinds else []
        bwds = _bwd_candidates(d) if "bwd" in kinds else []
        for seqlen in seqlens:
            batch, s, h = _shape(d, seqlen)
            q, k, v, do = _inputs(batch, s, h, d)
            for causal in (False, True):
                work.append((d, causal, q, k, v, do, fwds, bwds))
    t0 = time.time()
    with _compile_only(os.cpu_count()):
        for d, causal, q, k, v, do, fwds, bwds in work:
            out, lse = torch.empty_like(q), torch.zeros(q.shape[0], q.shape[2], q.shape[1], device="cuda")
            for spec in fwds:
                attention_forward_triton(q, k, v, d ** -0.5, causal, tiles=_fwd_tiles(spec))
            for spec in bwds:
                attention_backward_triton(do, q, k, v, out, lse, d ** -0.5, causal, tiles=_bwd_tiles(spec))
    print(json.dumps(dict(stage="sweep", event="compiled", seconds=round(time.time() - t0, 1))), flush=True)

    for d, causal, q, k, v, do, fwds, bwds in work:
        batch, s, h = q.shape[0], q.shape[1], q.shape[2]
        qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            ref_grads = torch.autograd.grad(ref, (qt, kt, vt), do.transpose(1, 2)) if bwds else []
        ref, ref_grads = ref.transpose(1, 2), [g.transpose(1, 2) for g in ref_grads]
        base = dict(stage="sweep", head_dim=d, causal=causal, batch=batch, seqlen=s, nheads=h)
        if fwds:  # cuDNN's forward on the same inputs, for the ratio the targets are set in
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                base["cudnn_tflops"] = tflops_per_s(attention_flops(batch, s, h, d, causal, "fwd"), _time(
                    lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)))
        if bwds:  # the backward candidates' inputs: the tuned forward's out and lse
            out, lse = attention_forward_triton(q, k, v, d ** -0.5, causal)
        for kind, specs in (("fwd", fwds), ("bwd", bwds)):
            flops = attention_flops(batch, s, h, d, causal, kind)
            for spec in specs:
                row = dict(base, kind=kind, tiles=spec)
                t = _fwd_tiles(spec) if kind == "fwd" else _bwd_tiles(spec)
                try:
                    if kind == "fwd":
                        fn = functools.partial(attention_forward_triton, q, k, v, d ** -0.5, causal, tiles=t)
                        row["err"] = _rel(fn()[0], ref)
                    else:
                        fn = functools.partial(attention_backward_triton, do, q, k, v, out, lse, d ** -0.5, causal,
                                               tiles=t)
                        row["err"] = max(_rel(g, r) for g, r in zip(fn(), ref_grads))
                    row["ok"] = row["err"] < 5e-2  # bf16 vs bf16; a broken config is off by O(1)
                    row["ms"] = _time(fn)
                    row["tflops"] = tflops_per_s(flops, row["ms"])
                except Exception as e:  # a config that does not fit (shared memory) or fails to compile
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                print(json.dumps(row), flush=True)


def table_stage(head_dims, seqlens, winners, quick=False, rounds=1):
    """rounds > 1: every timing of a shape is repeated that many times, the implementations taking turns (ours,
    cuDNN, flash; forward, then backward), and the row holds the median over the rounds plus each one's
    min and max: a GPU whose clock drifts during the run then weighs on all of them alike."""
    import statistics
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.triton import attention_backward_triton, attention_forward_triton

    sdpa = torch.nn.functional.scaled_dot_product_attention
    for d in head_dims:
        for causal in (False, True):
            w = winners.get(f"{d}/{causal}", {})
            fwd_t = _fwd_tiles(w["fwd"]) if "fwd" in w else None  # None: the tuned table in tiles.py
            bwd_t = _bwd_tiles(w["bwd"]) if "bwd" in w else None
            for seqlen in (QUICK_SEQLENS[d] if quick else seqlens):
                batch, s, h = _shape(d, seqlen)
                q, k, v, do = _inputs(batch, s, h, d, seed=seqlen)
                row = dict(stage="table", head_dim=d, causal=causal, batch=batch, seqlen=s, nheads=h,
                           fwd_tiles=w.get("fwd"), bwd_tiles=w.get("bwd"))
                flops = {kind: attention_flops(batch, s, h, d, causal, kind) for kind in ("fwd", "bwd")}
                out, lse = attention_forward_triton(q, k, v, d ** -0.5, causal, tiles=fwd_t)
                timed = {"triton_fwd": lambda: attention_forward_triton(q, k, v, d ** -0.5, causal, tiles=fwd_t),
                         "triton_bwd": lambda: attention_backward_triton(do, q, k, v, out, lse, d ** -0.5, causal,
                                                                         tiles=bwd_t)}
                qt, kt, vt = (t.transpose(1, 2).requires_grad_() for t in (q, k, v))  # SDPA's (b, h, s, d) view
                for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel(backend):
                            o = sdpa(qt, kt, vt, is_causal=causal)
                    except RuntimeError as e:
                        row[f"{name}_error"] = str(e)[:200]
                        continue
                    timed[f"{name}_fwd"] = functools.partial(_under, backend, lambda: sdpa(qt, kt, vt, is_causal=causal))
                    timed[f"{name}_bwd"] = functools.partial(_under, backend, functools.partial(
                        torch.autograd.grad, o, (qt, kt, vt), do.transpose(1, 2), retain_graph=True))
                order = sorted(timed, key=lambda key: key.endswith("_bwd"))  # forwards first, ours first within
                got = {key: [] for key in order}
                for _ in range(rounds):
                    for key in order:
                        got[key].append(tflops_per_s(flops[key[-3:]], _time(timed[key])))
                for key, values in got.items():
                    row[key] = statistics.median(values)
                    if rounds > 1:
                        row[f"{key}_range"] = [min(values), max(values)]
                print(json.dumps(row), flush=True)


def _under(backend, fn):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(backend):
        return fn()


def _run_stage(args, timeout, log):
    out, _, _ = run_child([sys.executable, "-m", "experiments.tune_triton", *args], timeout, log, args[1])
    return json_rows(out)


def _fastest(rows, tiles_of=lambda r: r["tiles"]):
    """tiles_of(row) with the highest mean TFLOPs/s over the rows (one per sweep seqlen) that hold it."""
    by_tiles = {}
    for r in rows:
        by_tiles.setdefault(json.dumps(tiles_of(r)), []).append(r["tflops"])
    return json.loads(max(by_tiles, key=lambda t: sum(by_tiles[t]) / len(by_tiles[t])))


def _winners(rows):
    """Per (head dim, causal): the fastest correct forward tiles and backward tiles.

    Backward candidates vary the dK/dV tiles (dQ tiles fixed) or the dQ tiles
    (dK/dV fixed); the fastest of each are combined, since the two kernels
    run one after the other.
    """
    ok = [r for r in rows if r.get("stage") == "sweep" and r.get("ok") and "tflops" in r]  # checked and timed
    winners = {}
    for key in sorted({f"{r['head_dim']}/{r['causal']}" for r in ok}):
        mine = [r for r in ok if f"{r['head_dim']}/{r['causal']}" == key]
        w = winners[key] = {}
        fwd = [r for r in mine if r["kind"] == "fwd"]
        if fwd:
            w["fwd"] = _fastest(fwd)
        head_dim = int(key.split("/")[0])
        dkdv0, dq0 = list(DKDV_CANDIDATES[head_dim][0]), list(DQ_CANDIDATES[head_dim][0])
        dkdv_rows = [r for r in mine if r["kind"] == "bwd" and r["tiles"][1] == dq0]
        dq_rows = [r for r in mine if r["kind"] == "bwd" and r["tiles"][0] == dkdv0]
        if dkdv_rows and dq_rows:
            w["bwd"] = [_fastest(dkdv_rows, lambda r: r["tiles"][0]), _fastest(dq_rows, lambda r: r["tiles"][1])]
    return winners


def _print_tables(rows, winners):
    sweep = [r for r in rows if r.get("stage") == "sweep" and "kind" in r]
    if sweep:
        print("\nsweep (ms, TFLOPs/s, [fwd: ratio to cuDNN's forward], rel err vs cuDNN):")
        for r in sweep:
            res = f"{r['ms']:7.3f} ms {r['tflops']:6.1f}" if "ms" in r else r.get("error", "")[:90]
            if "ms" in r and r["kind"] == "fwd" and "cudnn_tflops" in r:
                res += f" ({r['tflops'] / r['cudnn_tflops']:.2f}x cuDNN {r['cudnn_tflops']:.0f})"
            print(f"  hd{r['head_dim']:<4}{'causal' if r['causal'] else 'full':7}{r['seqlen']:>6} {r['kind']} {r['tiles']} "
                  f"{res} err {r.get('err', float('nan')):.1e}{'' if r.get('ok') else ' BAD'}")
        print("\nwinners (paste into kernels/triton/tiles.py):")
        for key, w in sorted(winners.items()):
            print(f"  {key}: fwd {w.get('fwd')} bwd {w.get('bwd')}")
    table = [r for r in rows if r.get("stage") == "table"]
    if table:
        print("\nTFLOPs/s, bf16, 16k tokens, hidden 2048 (ratio = triton / cudnn):")
        print(f"  {'hd':>3} {'causal':>6} {'seqlen':>6} | {'fwd':>5} {'cudnn':>5} {'flash':>5} {'ratio':>5} | "
              f"{'bwd':>5} {'cudnn':>5} {'flash':>5} {'ratio':>5}")
        nan = float("nan")
        for r in table:
            cf, cb = r.get("cudnn_fwd", nan), r.get("cudnn_bwd", nan)
            print(f"  {r['head_dim']:>3} {str(r['causal']):>6} {r['seqlen']:>6} | {r['triton_fwd']:5.0f} {cf:5.0f} "
                  f"{r.get('flash_fwd', nan):5.0f} {r['triton_fwd'] / cf:5.2f} | {r['triton_bwd']:5.0f} "
                  f"{cb:5.0f} {r.get('flash_bwd', nan):5.0f} {r['triton_bwd'] / cb:5.2f}")


def _table_markdown(rows, record, rounds):
    """The table stage as a results file: provenance, then one row per shape (TFLOPs/s; ratio = ours / cuDNN)."""
    from experiments.provenance import markdown
    nan = float("nan")
    lines = ["# Triton attention vs SDPA (cuDNN, flash) on one GPU", "", markdown(record), "",
             "bf16, batch x seqlen = 16k tokens, hidden 2048 (heads = 2048 / headdim), TFLOPs/s with the FA3 "
             "paper's FLOP counts (kernels.flops), triton.testing.do_bench medians. Backward = dQ, dK, dV from "
             "saved out/LSE (ours) or autograd through SDPA. Tiles: the sweep's winners where a sweep ran "
             "(listed), else kernels/triton/tiles.py.", "",
             "| hd | causal | seqlen | fwd | cuDNN | flash | fwd / cuDNN | bwd | cuDNN | flash | bwd / cuDNN | "
             "fwd tiles | bwd tiles |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table = [r for r in rows if r.get("stage") == "table"]
    ranged = ("triton_fwd", "cudnn_fwd", "triton_bwd", "cudnn_bwd")
    if any("triton_fwd_range" in r for r in table):
        lines[4] += (f" Medians over {rounds} rounds, the implementations taking turns; "
                     "the last columns give each one's min-max over the rounds.")
        lines[6] += "".join(f" {key.replace('triton', 'ours').replace('_', ' ')} range |" for key in ranged)
        lines[7] += " --- |" * len(ranged)
    for r in table:
        cf, cb = r.get("cudnn_fwd", nan), r.get("cudnn_bwd", nan)
        lines.append(f"| {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seqlen']} | {r['triton_fwd']:.0f} | "
                     f"{cf:.0f} | {r.get('flash_fwd', nan):.0f} | {r['triton_fwd'] / cf:.2f} | {r['triton_bwd']:.0f} | "
                     f"{cb:.0f} | {r.get('flash_bwd', nan):.0f} | {r['triton_bwd'] / cb:.2f} | "
                     f"{r['fwd_tiles'] or 'table'} | {r['bwd_tiles'] or 'table'} |" +
                     "".join(" {:.0f}-{:.0f} |".format(*r[f"{key}_range"]) for key in ranged if f"{key}_range" in r))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(prog="python -m experiments.tune_triton", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "tune_out"))
    parser.add_argument("--stages", default="tests,sweep,table", help="comma-separated subset of tests,sweep,table")
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--seqlens", type=int, nargs="+", default=list(SEQLENS))
    parser.add_argument("--sweep-seqlens", type=int, nargs="+", default=[8192])
    parser.add_argument("--sweep-head-dims", type=int, nargs="+", help="head dims to sweep (default: --head-dims)")
    parser.add_argument("--sweep-kinds", nargs="+", choices=["fwd", "bwd"], default=["fwd", "bwd"])
    parser.add_argument("--tests-filter", help="run only the GPU tests whose names match (pytest -k)")
    parser.add_argument("--quick", action="store_true", help="table over QUICK_SEQLENS instead of --seqlens")
    parser.add_argument("--rounds", type=int, default=1,
                        help="table: time every shape this many times, implementations taking turns (median)")
    parser.add_argument("--timeouts", type=int, nargs=3, default=[130, 140, 130], metavar=("TESTS", "SWEEP", "TABLE"))
    parser.add_argument("--stage", choices=["sweep", "table"], help=argparse.SUPPRESS)  # child-process entry
    parser.add_argument("--winners", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "sweep":
        return sweep_stage(args.head_dims, args.sweep_seqlens, args.sweep_kinds)
    if args.stage == "table":
        return table_stage(args.head_dims, args.seqlens, json.loads(args.winners), args.quick, args.rounds)

    import torch
    import triton
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    stages = args.stages.split(",")
    dims = [str(d) for d in args.head_dims]
    rows, winners = [], {}
    with open(out / "tune_triton.log", "w") as log:
        if "tests" in stages:
            tests_out, _, _ = run_child([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                         *(["-k", args.tests_filter] if args.tests_filter else []),
                                         "tests/kernels/test_triton_attention.py", "tests/kernels/test_compile.py"],
                                        args.timeouts[0], log, "tests")
            print(tests_out[-2500:], flush=True)
        if "sweep" in stages:
            sweep_dims = [str(d) for d in args.sweep_head_dims or args.head_dims]
            rows += _run_stage(["--stage", "sweep", "--head-dims", *sweep_dims, "--sweep-seqlens",
                                *map(str, args.sweep_seqlens), "--sweep-kinds", *args.sweep_kinds],
                               args.timeouts[1], log)
            winners = _winners(rows)
        if "table" in stages:
            rows += _run_stage(["--stage", "table", "--head-dims", *dims, "--seqlens", *map(str, args.seqlens),
                                "--winners", json.dumps(winners), "--rounds", str(args.rounds),
                                *(["--quick"] if args.quick else [])],
                               args.timeouts[2], log)
    (out / "tune_triton.json").write_text(json.dumps(dict(winners=winners, rows=rows), indent=1))
    if any(r.get("stage") == "table" for r in rows):
        from experiments.provenance import collect
        (out / "triton_vs_sdpa.md").write_text(_table_markdown(rows, collect(), args.rounds))
    _print_tables(rows, winners)


if __name__ == "__main__":
    main()
