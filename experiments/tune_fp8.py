"""One-shot H200 run for FP8 attention (issue 4): pre-pass and forward sweeps, timing grid, Table 3, GPU tests.

    PYTHONUNBUFFERED=1 python -m experiments.tune_fp8 --out $OUT [--steps tests,prepass,prepass_grid,sweep,grid,table3,
                                                                          gluon]

  tests    the FP8 test files on the GPU (KERNELS_IMPL=triton), pytest-xdist; log in OUT/tests.log.
  prepass  pre-pass tiles at 16k tokens x hidden 2048, per head dim: time, GB/s moved (bf16 read once,
           fp8 + scales written once) against a device-to-device copy's GB/s; each checked against
           kernels.quant's reference (scales, fp8 codes).
  prepass_grid  the pre-pass alone at the grid's shapes, with the tiles in use (after `prepass`: its winners),
           checked against the reference. Both pre-pass steps also time it replayed from a CUDA graph (graph_ms):
           do_bench's ~0.1 ms there can hold host launch work.
  sweep    Triton FP8 forward tiles (key tile = FP8Config.block_n = 128) at seqlen 4k, non-causal; every
           variant is checked against the FP8 scheme's reference.
  grid     16k tokens x hidden 2048, head dims 64/128/256, seqlen 4k-16k (GRID_SEQLENS), non-causal (and
           causal with --causal), with the winners of the steps run before: pre-pass alone, FP8 forward
           alone, pre-pass + forward from bf16 (flash_attn_fp8_func), our BF16 Triton forward, cuDNN SDPA
           BF16; TFLOPs/s by kernels.flops (FP8 counted like BF16). KERNELS_IMPL=triton throughout.
  table3   experiments.paper.table3_numerics on the kernels, and its FP8 rows on the reference path.
  gluon    a time-limited probe of kernels.gluon.fp8_attention_forward.
Nsight Compute on the pre-pass and the Triton FP8 forward (the `profile` step until 2026-12-04):
`python -m experiments.profile_kernels --targets triton_fp8_hd128_4k`.
Kernels are compiled by a process pool first; timings are medians of triton.testing.do_bench.
Every step is guarded (a failing variant or problem is recorded, not fatal); OUT/tune_fp8_<steps>.json is
rewritten after each step, and a summary is printed last. Log of what was seen: docs/fp8.md.
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/kernels/test_hadamard.py", "tests/kernels/test_quant.py", "tests/kernels/test_fp8_attention.py"]
TOKENS, HIDDEN = 16384, 2048
HEAD_DIMS = (64, 128, 256)
GRID_SEQLENS = (4096, 8192, 16384)
SWEEP_SEQLEN = 4096
# Forward variants per head dim: (block_n, (block_m, num_warps, num_stages, max_regs)); block_n is FP8Config's
# (the key tile); max_regs is Triton's maxnreg.
FWD_CANDIDATES = {
    64: [(128, (64, 4, 3, None)), (128, (64, 4, 3, 128)), (128, (64, 4, 2, 128))],
    128: [(128, (64, 4, 2, None)), (128, (64, 4, 2, 168)), (128, (64, 4, 3, 168))],
    256: [(128, (64, 8, 2, None)), (128, (64, 8, 1, None))],
}
# Pre-pass variants per head dim: (num_warps, num_stages, programs_per_sm, heads_fastest[, v_share[, v_by_dot[,
# flat]]]); each fits its programs per SM in registers and shared memory (compiled for sm_90a on CPU: 107-128
# registers a thread). The first of each is the table's; v_share moves programs between V (no rotation, transposed
# store) and Q/K; v_by_dot transposes V on the tensor cores; flat feeds Q's and K's dot from shared memory, whose
# tile then stays in its buffer through the MMA: two stages take the shared memory three take without it
# (114 / 214 KB at 128 / 256, one load in flight during a block's work instead of two).
PREPASS_CANDIDATES = {
    64: [(4, 3, 4, False, 1.33), (4, 3, 4, False, 1.33, True), (4, 2, 4, False, 1.33, False, True)],
    128: [(8, 3, 2, False, 1.0, True), (8, 3, 2, False, 1.6), (8, 2, 2, False, 1.0, True, True)],
    256: [(16, 3, 1, True, 1.0, True), (16, 3, 1, True, 1.25), (16, 2, 1, True, 1.0, True, True)],
}
# V^T's key order the pre-pass steps time: the op's on the H200 (kernels.fp8.GLUON_FP8_WGMMA_V_ORDER).
PREPASS_V_ORDER = "wgmma"
# Issue 4's targets: FP8 incl. pre-pass >= 1.3x our BF16 Triton forward and >= 750 TFLOPs/s (hd 128/256, >= 4k).
TARGET_SPEEDUP, TARGET_TFLOPS = 1.3, 750.0
TESTS_TIMEOUT_S, GLUON_TIMEOUT_S = 120, 60


def shape(head_dim, seqlen):
    return TOKENS // seqlen, seqlen, HIDDEN // head_dim, head_dim


def inputs(b, s, h, d, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))


def bench(fn, warmup=25, rep=100):
    from triton.testing import do_bench
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graph_ms(fn):
    """Median ms per call of fn replayed from a CUDA graph: the GPU's time without the host's launch work (which
    do_bench's events include whenever the host takes longer than its L2 flush), or the error as a string."""
    from triton.testing import do_bench_cudagraph
    try:
        return do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception as err:
        return short(err)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def short(err):
    return f"{type(err).__name__}: {str(err)[:300]}"


def _compile_job(job):
    """Run one kernel configuration once in a worker, so that the main process finds it in Triton's cache."""
    kind, d, causal, tiles = job
    import kernels
    from kernels.quant import FP8Config
    from kernels.triton.fp8_fwd import FP8FwdTiles, fp8_attention_forward_triton
    from kernels.triton.fp8_quant import PrepassTiles, quantize_qkv_triton
    q, k, v = inputs(*shape(d, SWEEP_SEQLEN))
    try:
        if kind == "quant":
            quantize_qkv_triton(q, k, v, FP8Config(), tiles=PrepassTiles(*tiles) if tiles else None,
                                v_key_order=PREPASS_V_ORDER)
        elif kind == "bf16":
            os.environ["KERNELS_IMPL"] = "triton"
            kernels.flash_attn_func(q, k, v, causal=causal)
        else:
            block_n, fwd = tiles
            x = quantize_qkv_triton(q, k, v, FP8Config(block_n=block_n))
            fp8_attention_forward_triton(x, d ** -0.5, causal, torch.bfloat16, tiles=FP8FwdTiles(*fwd))
        torch.cuda.synchronize()
        return None
    except Exception as err:  # the main process records the variant's error when it gets there
        return f"{job}: {short(err)}"


def precompile(jobs, workers=12):
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(_compile_job, jobs) if e]
    print(f"precompiled {len(jobs)} variants in {time.time() - t0:.0f}s; {len(errors)} failed", flush=True)
    return errors


def prepass_mismatch(got, want):
    """Largest relative scale difference and the share of fp8 codes that differ (by more than one step: inf)."""
    scale_err = max(((getattr(got, n) - getattr(want, n)).abs() / getattr(want, n).abs()).max().item()
                    for n in ("q_scale", "k_scale", "v_scale"))
    differ, step_max, total = 0, 0, 0
    for n in ("q", "k", "v_t"):
        a, b = getattr(got, n).view(torch.uint8).int(), getattr(want, n).view(torch.uint8).int()
        ord_a = torch.where(a >= 0x80, -(a & 0x7F), a & 0x7F)
        ord_b = torch.where(b >= 0x80, -(b & 0x7F), b & 0x7F)
        dist = (ord_a - ord_b).abs()
        differ += int((dist > 0).sum())
        step_max = max(step_max, int(dist.max()))
        total += dist.numel()
    return scale_err, differ / total, step_max


def copy_rate(numel=2 ** 28):
    """GB/s (bytes read + written) of a device-to-device copy of `numel` bf16 values: the pre-pass's ceiling."""
    src = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / bench(lambda: dst.copy_(src)) / 1e6


def step_prepass(log, summary):
    from kernels.quant import FP8Config, quantize_qkv_ref
    from kernels.triton import fp8_quant
    from kernels.triton.fp8_quant import PrepassTiles, quantize_qkv_triton
    log["prepass_compile_errors"] = precompile([("quant", d, False, t) for d, cands in PREPASS_CANDIDATES.items()
                                               for t in cands])
    rows = log.setdefault("prepass", [])
    copy_gbs = log["copy_gb_per_s"] = copy_rate()
    summary.append(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    cfg = FP8Config()
    for d, cands in PREPASS_CANDIDATES.items():
        q, k, v = inputs(*shape(d, SWEEP_SEQLEN))
        want = quantize_qkv_ref(q, k, v, cfg, PREPASS_V_ORDER)
        n = q.numel()
        scales = 3 * n // (d * cfg.block_m)
        moved = 3 * n * 2 + 3 * n + 4 * scales  # bf16 read once, fp8 and fp32 scales written once
        best = None
        for t in cands:
            row = {"prepass_head_dim": d, "tiles": t, "floor_ms": moved / copy_gbs / 1e6}
            try:
                tiles = PrepassTiles(*t)
                run = functools.partial(quantize_qkv_triton, q, k, v, cfg, tiles=tiles, v_key_order=PREPASS_V_ORDER)
                got = run()
                row["scale_rel_err"], row["codes_differ"], row["codes_max_steps"] = prepass_mismatch(got, want)
                row["ms"] = bench(run)
                row["graph_ms"] = graph_ms(run)
                row["gb_per_s"] = moved / row["ms"] / 1e6
                ok = row["scale_rel_err"] < 1e-6 and row["codes_max_steps"] <= 1 and row["codes_differ"] < 1e-3
                row["ok"] = ok
                if ok and (best is None or row["ms"] < best[0]):
                    best = (row["ms"], tiles)
            except Exception as err:
                row["error"] = short(err)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if d == 128:  # what a cast alone costs: the kernel without the rotation, and PyTorch's cast kernels
            for name, fn in (("no hadamard", lambda: quantize_qkv_triton(q, k, v, FP8Config(hadamard=False))),
                             ("torch .to(fp8) x3", lambda: [t.to(torch.float8_e4m3fn) for t in (q, k, v)])):
                try:
                    ms = bench(fn)
                    rows.append({"prepass_head_dim": d, "ablation": name, "ms": ms, "gb_per_s": moved / ms / 1e6})
                    summary.append(f"prepass hd{d} {name}: {ms:.4f} ms = {moved / ms / 1e6:.0f} GB/s")
                except Exception as err:
                    summary.append(f"prepass hd{d} {name}: {short(err)}")
        del want
        if best:
            fp8_quant.PREPASS_TILES_SM90[d] = best[1]
            summary.append(f"prepass hd{d}: best {best[1]} {best[0]:.4f} ms = {moved / best[0] / 1e6:.0f} GB/s "
                           f"(floor at copy rate {moved / copy_gbs / 1e6:.4f} ms)")
    summary.extend(f"prepass hd{r['prepass_head_dim']} {r['tiles']}: "
                   + (f"{r['ms']:.4f} ms {r['gb_per_s']:.0f} GB/s ok={r['ok']} graph {r['graph_ms']}" if "ms" in r
                      else r["error"])
                   for r in rows if "tiles" in r)
    log["prepass_tiles_in_use"] = {d: str(t) for d, t in fp8_quant.PREPASS_TILES_SM90.items()}


def step_prepass_grid(log, summary):
    from kernels.quant import FP8Config, quantize_qkv_ref
    from kernels.triton.fp8_quant import PREPASS_TILES_SM90, quantize_qkv_triton
    cfg = FP8Config()
    rows = log.setdefault("prepass_grid", [])
    for d in HEAD_DIMS:
        for s in GRID_SEQLENS:
            q, k, v = inputs(*shape(d, s), seed=1)
            row = {"head_dim": d, "seqlen": s, "tiles": str(PREPASS_TILES_SM90[d])}
            try:
                got = quantize_qkv_triton(q, k, v, cfg)
                row["scale_rel_err"], row["codes_differ"], row["codes_max_steps"] = prepass_mismatch(
                    got, quantize_qkv_ref(q, k, v, cfg))
                row["ms"] = bench(lambda: quantize_qkv_triton(q, k, v, cfg))
                row["graph_ms"] = graph_ms(lambda: quantize_qkv_triton(q, k, v, cfg))
                row["gb_per_s"] = (9 * q.numel() + 3 * 4 * got.q_scale.numel()) / row["ms"] / 1e6
            except Exception as err:
                row["error"] = short(err)
            rows.append(row)
            print(json.dumps(row), flush=True)
            summary.append(f"prepass_grid hd{d} s{s}: " + (f"{row['ms']:.4f} ms {row['gb_per_s']:.0f} GB/s, graph "
                           f"{row['graph_ms']}, scale err "
                           f"{row['scale_rel_err']:.1e}, codes differ {row['codes_differ']:.1e} (max "
                           f"{row['codes_max_steps']} step)" if "ms" in row else row["error"]))


def step_sweep(log, summary):
    from kernels.quant import FP8Config, fp8_forward_ref
    from kernels.triton import fp8_fwd
    from kernels.triton.fp8_fwd import FP8FwdTiles, fp8_attention_forward_triton
    from kernels.triton.fp8_quant import quantize_qkv_triton
    log["sweep_compile_errors"] = precompile([("fwd", d, False, c) for d, cands in FWD_CANDIDATES.items()
                                              for c in cands])
    rows = log.setdefault("sweep", [])
    for d, cands in FWD_CANDIDATES.items():
        b, s, h, _ = shape(d, SWEEP_SEQLEN)
        q, k, v = inputs(b, s, h, d)
        flops = 4 * b * h * s * s * d
        best = None
        for block_n in sorted({bn for bn, _ in cands}, reverse=True):
            x = quantize_qkv_triton(q, k, v, FP8Config(block_n=block_n))
            ref, _ = fp8_forward_ref(x, d ** -0.5, False)
            for bn, t in cands:
                if bn != block_n:
                    continue
                tiles = FP8FwdTiles(*t)
                row = {"head_dim": d, "block_n": bn, "tiles": t}
                try:
                    out, _ = fp8_attention_forward_triton(x, d ** -0.5, False, torch.bfloat16, tiles=tiles)
                    row["err_vs_scheme"] = rel_err(out, ref)
                    row["ms"] = bench(lambda: fp8_attention_forward_triton(x, d ** -0.5, False, torch.bfloat16,
                                                                           tiles=tiles), warmup=10, rep=50)
                    row["tflops"] = flops / row["ms"] / 1e9
                    # Only the default key tile goes into the table (FP8Config.block_n = 128).
                    if bn == 128 and row["err_vs_scheme"] < 1e-2 and (best is None or row["tflops"] > best[0]):
                        best = (row["tflops"], tiles)
                except Exception as err:
                    row["error"] = short(err)
                rows.append(row)
                print(json.dumps(row), flush=True)
        if best:
            fp8_fwd.FWD_TILES_SM90[d] = best[1]
            summary.append(f"fwd hd{d}: best {best[1]} {best[0]:.0f} TFLOPs/s")
    summary.extend(f"fwd hd{r['head_dim']} block_n {r['block_n']} {r['tiles']}: "
                   + (f"{r['tflops']:.0f} TFLOPs/s, err {r['err_vs_scheme']:.1e}" if "tflops" in r else r["error"])
                   for r in rows)
    log["fwd_tiles_in_use"] = {d: str(t) for d, t in fp8_fwd.FWD_TILES_SM90.items()}


def step_grid(log, summary, causals=(False,)):
    from dataclasses import astuple

    from kernels.triton import fp8_fwd, fp8_quant
    precompile([("fwd", d, c, (128, astuple(fp8_fwd.FWD_TILES_SM90[d]))) for d in HEAD_DIMS for c in causals]
               + [("quant", d, False, astuple(fp8_quant.PREPASS_TILES_SM90[d])) for d in HEAD_DIMS]
               + [("bf16", d, c, None) for d in HEAD_DIMS for c in causals])
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    import kernels
    from kernels import FP8Config, flash_attn_fp8_func, fp8_attention_forward, quantize_qkv
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.quant import fp8_forward_ref
    os.environ["KERNELS_IMPL"] = "triton"
    cfg = FP8Config()
    rows = log.setdefault("grid", [])
    for d in HEAD_DIMS:
        for s in GRID_SEQLENS:
            for causal in causals:
                b, _, h, _ = shape(d, s)
                row = {"head_dim": d, "seqlen": s, "batch": b, "nheads": h, "causal": causal}
                try:
                    q, k, v = inputs(b, s, h, d)
                    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                    x = quantize_qkv(q, k, v, cfg)
                    out8 = flash_attn_fp8_func(q, k, v, causal=causal, config=cfg)
                    out16 = kernels.flash_attn_func(q, k, v, causal=causal)
                    row["fp8_vs_bf16_rel_err"] = rel_err(out8, out16)
                    if s == SWEEP_SEQLEN:
                        row["fp8_vs_scheme_rel_err"] = rel_err(out8, fp8_forward_ref(x, d ** -0.5, causal)[0])
                    timed = {
                        "prepass": lambda: quantize_qkv(q, k, v, cfg),
                        "fp8_fwd": lambda: fp8_attention_forward(x, causal=causal),
                        "fp8_total": lambda: flash_attn_fp8_func(q, k, v, causal=causal, config=cfg),
                        "bf16_triton": lambda: kernels.flash_attn_func(q, k, v, causal=causal),
                    }
                    for name, fn in timed.items():
                        row[name + "_ms"] = bench(fn)
                    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                        row["sdpa_cudnn_ms"] = bench(lambda: sdpa(qt, kt, vt, is_causal=causal))
                    flops = attention_flops(b, s, h, d, causal, "fwd")
                    moved = 3 * q.numel() * 3 + 3 * 4 * x.q_scale.numel()  # bf16 in, fp8 and fp32 scales out
                    row["prepass_gb_per_s"] = moved / row["prepass_ms"] / 1e6
                    for name in ("fp8_fwd", "fp8_total", "bf16_triton", "sdpa_cudnn"):
                        row[name + "_tflops"] = tflops_per_s(flops, row[name + "_ms"])
                    row["total_over_bf16"] = row["bf16_triton_ms"] / row["fp8_total_ms"]
                    row["total_over_cudnn"] = row["sdpa_cudnn_ms"] / row["fp8_total_ms"]
                except Exception as err:
                    row["error"] = short(err)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary.append("| hd | seqlen | causal | prepass ms | prepass GB/s | FP8 fwd TF/s | FP8 total TF/s | "
                   "BF16 Triton TF/s | cuDNN TF/s | total/BF16 | fp8 vs bf16 err | target |")
    summary.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            summary.append(f"| {r['head_dim']} | {r['seqlen']} | {r['causal']} | ERROR {r['error'][:300]} |")
            continue
        target = r["head_dim"] in (128, 256) and r["seqlen"] >= 4096 and not r["causal"]
        ok = r["fp8_total_tflops"] >= TARGET_TFLOPS and r["total_over_bf16"] >= TARGET_SPEEDUP
        verdict = ("PASS" if ok else "FAIL") if target else ""
        summary.append(
            f"| {r['head_dim']} | {r['seqlen']} | {int(r['causal'])} | {r['prepass_ms']:.3f} "
            f"| {r['prepass_gb_per_s']:.0f} | {r['fp8_fwd_tflops']:.0f} | {r['fp8_total_tflops']:.0f} "
            f"| {r['bf16_triton_tflops']:.0f} | {r['sdpa_cudnn_tflops']:.0f} | {r['total_over_bf16']:.2f} "
            f"| {r['fp8_vs_bf16_rel_err']:.3f} | {verdict} |")


def step_table3(log, summary):
    from experiments.paper import table3_numerics
    os.environ["KERNELS_IMPL"] = "triton"
    rows = table3_numerics.run(quick=False, device="cuda")
    log["table3"] = rows
    os.environ["KERNELS_IMPL"] = "reference"
    agree = []
    for i, shp in enumerate(table3_numerics.SHAPES):
        try:
            ref_rows = {r["method"]: r["rmse"] for r in table3_numerics.measure(shp, i, torch.device("cuda"))}
        except Exception as err:
            agree.append({"shape": shp, "error": short(err)})
            continue
        for r in rows:
            if (r["batch"], r["seqlen"], r["nheads"], r["headdim"]) == shp and r["method"].startswith("ours FP8"):
                agree.append({"shape": shp, "method": r["method"], "kernel": r["rmse"],
                              "reference": ref_rows[r["method"]], "ratio": r["rmse"] / ref_rows[r["method"]]})
    os.environ["KERNELS_IMPL"] = "triton"
    log["table3_agreement"] = agree
    summary.append(table3_numerics.markdown(rows))
    for c in table3_numerics.must_show(rows):
        summary.append(f"{'PASS' if c['ok'] else 'FAIL'} {c['shape']}: rmse {c['rmse']:.2e}, gain {c['gain']:.2f}x")
    summary.append("table3 kernel/reference RMSE ratios: "
                   + str([round(a["ratio"], 4) if "ratio" in a else a["error"] for a in agree]))


def step_tests(log, summary, out):
    env = dict(os.environ, KERNELS_IMPL="triton")
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "8", "-p", "no:cacheprovider", "-p", "no:benchmark",
           "-rfE", "--tb=short", *TEST_FILES]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text, code = f"timed out after {TESTS_TIMEOUT_S}s\n{err.stdout or ''}", "timeout"
    (out / "tests.log").write_text(text)
    lines = text.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("E ")][:40]
    log["tests"] = {"returncode": code, "seconds": round(time.time() - t0), "tail": lines[-25:], "errors": errors}
    summary.append(f"tests: exit {code} in {log['tests']['seconds']}s")
    summary.extend(ln for ln in lines[-25:] if "passed" in ln or "failed" in ln or ln.startswith("FAILED"))
    summary.extend(errors[:15])


GLUON_PROBE = """
import json, time, torch
from kernels import FP8Config, quantize_qkv
from kernels.gluon import fp8_attention_forward
from kernels.quant import fp8_forward_ref
for d in (64, 128, 256):
    b, s, h = 4, 4096, 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    x = quantize_qkv(q, k, v, FP8Config())
    t0 = time.time()
    out, _ = fp8_attention_forward(x, d ** -0.5, False, torch.bfloat16)
    torch.cuda.synchronize()
    err = ((out.float() - fp8_forward_ref(x, d ** -0.5, False)[0]).norm() / out.float().norm()).item()
    from triton.testing import do_bench
    ms = do_bench(lambda: fp8_attention_forward(x, d ** -0.5, False, torch.bfloat16), return_mode="median")
    print(json.dumps({"head_dim": d, "first_call_s": time.time() - t0, "err_vs_scheme": err, "ms": ms,
                      "tflops": 4 * b * h * s * s * d / ms / 1e9}), flush=True)
"""


def step_gluon(log, summary):
    try:
        proc = subprocess.run([sys.executable, "-c", GLUON_PROBE], cwd=ROOT, capture_output=True, text=True,
                              timeout=GLUON_TIMEOUT_S)
        text = (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired as err:
        text = f"timed out after {GLUON_TIMEOUT_S}s; output so far: {err.stdout or ''}"
    log["gluon_probe"] = text
    summary.append("gluon fp8 probe: " + text.replace("\n", " ")[-1200:])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.tune_fp8", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/tune_fp8")
    p.add_argument("--steps", default="tests,prepass,sweep,grid,table3")
    p.add_argument("--causal", action="store_true", help="grid: causal rows too")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton
    log = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print(json.dumps(log), flush=True)
    summary = []
    causals = (False, True) if args.causal else (False,)
    steps = {"prepass": step_prepass, "prepass_grid": step_prepass_grid, "sweep": step_sweep,
             "grid": lambda log, summary: step_grid(log, summary, causals), "table3": step_table3,
             "tests": lambda log, summary: step_tests(log, summary, out), "gluon": step_gluon}
    for name in args.steps.split(","):
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            steps[name](log, summary)
        except Exception as err:
            log[name + "_error"] = short(err)
            summary.append(f"step {name} failed: {log[name + '_error']}")
        summary.append(f"== {name} took {time.time() - t0:.0f}s")
        print(summary[-1], flush=True)
        (out / f"tune_fp8_{args.steps.replace(',', '_')}.json").write_text(json.dumps(log, indent=1, default=str))
    print("\n== SUMMARY\n" + "\n".join(summary), flush=True)


if __name__ == "__main__":
    main()
