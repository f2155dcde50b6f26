"""One-shot H200 run for the Gluon forward: correctness, compile stats, speed against cuDNN SDPA.

    PYTHONUNBUFFERED=1 python -m experiments.tune_gluon --out $OUT

Stages run as child processes with their own time limits, so a kernel that
hangs costs its stage, not the run: `check` (every variant against the float64
reference on a few odd shapes, outputs NaN-poisoned; FP8 against the FP8
scheme's oracle and the Triton FP8 path), `bench` (median times from
triton.testing.do_bench: the FA3 paper's Table 2 ablation shape, then BF16 and
FP8 at 16k tokens x hidden 2048 per shape next to cuDNN SDPA and our Triton
kernels, with a few tile alternatives), `stats` (registers, spills, shared
memory of the compiled kernels). Results go to <out>/tune_gluon.json; a
table is printed last.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from experiments.stages import json_rows, run as run_child

HEAD_DIMS = (64, 128, 256)
SEQLENS = (1024, 2048, 4096, 8192, 16384)
TILE_SEQLENS = (1024, 16384)
FP8_SEQLENS = (4096, 16384)
TOKENS, HIDDEN = 16384, 2048
ABLATION = dict(batch=4, seqlen=8448, nheads=16, head_dim=128)  # FA3 paper, Table 2
SWITCHES = {"full": {}, "no_ws": dict(warp_specialize=False), "no_pipeline": dict(pipeline=False),
            "no_pingpong": dict(pingpong=False)}
CHECK_SHAPES = [(2, 113, 203, 4, 4), (1, 1000, 517, 6, 2), (1, 1101, 1101, 4, 2)]


def check_stage(head_dim):
    """Every switch setting x causal at one head dim against float64, on NaN-poisoned outputs."""
    import torch
    from kernels.gluon import attention_forward
    from kernels.reference import attention_ref
    for name, switches in SWITCHES.items():
        for causal in (False, True):
            for b, sq, sk, h, h_kv in CHECK_SHAPES:
                q = torch.randn(b, sq, h, head_dim, device="cuda", dtype=torch.bfloat16)
                k = torch.randn(b, sk, h_kv, head_dim, device="cuda", dtype=torch.bfloat16)
                v = torch.randn_like(k)
                poison = torch.full_like(q, float("nan")), torch.full((b, h, sq), float("nan"), device="cuda")
                del poison
                out, lse = attention_forward(q, k, v, None, causal, **switches)
                torch.cuda.synchronize()
                ref, lse_ref = attention_ref(q, k, v, causal)
                ref_pt, _ = attention_ref(q, k, v, causal, dtype=q.dtype)
                err = (out.double() - ref).abs().max().item()
                err_pt = (ref_pt.double() - ref).abs().max().item()
                finite = torch.isfinite(lse_ref)
                lse_err = (lse.double() - lse_ref)[finite].abs().max().item()
                inf_ok = torch.equal(torch.isinf(lse), ~finite)
                ok = err <= 2 * err_pt + 1e-5 and lse_err <= 1e-3 and inf_ok
                print(json.dumps(dict(stage="check", head_dim=head_dim, variant=name, causal=causal,
                                      shape=[b, sq, sk, h, h_kv], ok=ok, err=err, err_pytorch=err_pt,
                                      lse_err=lse_err, inf_rows_ok=inf_ok)), flush=True)
    check_fp8(head_dim)


def check_fp8(head_dim):
    """FP8 forward vs the scheme's oracle (kernels.quant) and the Triton FP8 path, errors against float64."""
    import torch
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, fp8_forward_ref, quantize_qkv_ref
    from kernels.reference import attention_ref
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    b, sq, sk, h, h_kv = CHECK_SHAPES[1]
    for causal in (False, True):
        q = torch.randn(b, sq, h, head_dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, h_kv, head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        x = quantize_qkv_ref(q, k, v, FP8Config())
        scale = head_dim ** -0.5
        poison = torch.full_like(q, float("nan")), torch.full((b, h, sq), float("nan"), device="cuda")
        del poison
        out, lse = fp8_attention_forward(x, scale, causal, torch.bfloat16)
        torch.cuda.synchronize()
        exact, _ = attention_ref(q, k, v, causal)
        out8, lse8 = fp8_forward_ref(x, scale, causal)
        out_tr, _ = fp8_attention_forward_triton(x, scale, causal, torch.bfloat16)
        err = (out.double() - exact).abs().max().item()
        err8 = (out8.double() - exact).abs().max().item()
        err_tr = (out_tr.double() - exact).abs().max().item()
        finite = torch.isfinite(lse8)
        lse_err = (lse - lse8)[finite].abs().max().item()
        ok = err <= 1.25 * min(err8, err_tr) + 1e-3 and lse_err <= 1e-3 and not out.isnan().any().item()
        print(json.dumps(dict(stage="check", head_dim=head_dim, variant="fp8", causal=causal,
                              shape=[b, sq, sk, h, h_kv], ok=ok, err=err, err_fp8_scheme=err8, err_triton_fp8=err_tr,
                              lse_err=lse_err)), flush=True)


def stats_stage():
    """Resources of the compiled kernels as the driver loaded them."""
    import torch
    from kernels.gluon import Variant
    for d in HEAD_DIMS:
        for causal in (False, True):
            for name, switches in SWITCHES.items():
                if causal and name != "full":
                    continue
                _stats_row(Variant(torch.bfloat16, d, causal, **switches), name)
        _stats_row(Variant(torch.float8_e4m3fn, d, False, out_dtype=torch.bfloat16, q_scale_block=128), "fp8")


def _stats_row(variant, name):
    from kernels.gluon import compile_forward
    ck = compile_forward(variant)
    ck._init_handles()
    print(json.dumps(dict(stage="stats", head_dim=variant.head_dim, causal=variant.causal, variant=name,
                          n_regs=ck.n_regs, n_spills=ck.n_spills, shared=ck.metadata.shared,
                          num_warps=ck.metadata.num_warps)), flush=True)


def _time(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def _inputs(batch, seqlen, nheads, head_dim):
    import torch
    return [torch.randn(batch, seqlen, nheads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)]


def _bench_bf16(batch, seqlen, nheads, head_dim, causal, variants, tiles=(), others=True):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.gluon import attention_forward
    q, k, v = _inputs(batch, seqlen, nheads, head_dim)
    flops = attention_flops(batch, seqlen, nheads, head_dim, causal)
    row = dict(stage="bench", dtype="bf16", batch=batch, seqlen=seqlen, nheads=nheads, head_dim=head_dim,
               causal=causal)
    for name in variants:
        ms = _time(lambda: attention_forward(q, k, v, None, causal, **SWITCHES[name]))
        row[f"gluon_{name}_ms"], row[f"gluon_{name}_tflops"] = ms, tflops_per_s(flops, ms)
    for tile in tiles:
        ms = _time(lambda: attention_forward(q, k, v, None, causal, tile=tile))
        row.setdefault("tiles", []).append(dict(tile=list(tile.__dict__.values()), tflops=tflops_per_s(flops, ms)))
    if others:
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # same memory, SDPA's (b, h, s, d) view
        try:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms = _time(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
            row["cudnn_ms"], row["cudnn_tflops"] = ms, tflops_per_s(flops, ms)
        except RuntimeError as e:
            row["cudnn_error"] = str(e)[:200]
        try:
            from kernels.triton import attention_forward_triton
            ms = _time(lambda: attention_forward_triton(q, k, v, head_dim ** -0.5, causal))
            row["triton_ms"], row["triton_tflops"] = ms, tflops_per_s(flops, ms)
        except Exception as e:  # our Triton kernels are optional here
            row["triton_error"] = f"{type(e).__name__}: {e}"[:200]
    print(json.dumps(row), flush=True)


def _bench_fp8(batch, seqlen, nheads, head_dim, causal, tiles=()):
    import torch
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, quantize_qkv_ref
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    x = quantize_qkv_ref(*_inputs(batch, seqlen, nheads, head_dim), FP8Config())
    flops = attention_flops(batch, seqlen, nheads, head_dim, causal)
    scale = head_dim ** -0.5
    row = dict(stage="bench", dtype="fp8", batch=batch, seqlen=seqlen, nheads=nheads, head_dim=head_dim,
               causal=causal)
    ms = _time(lambda: fp8_attention_forward(x, scale, causal, torch.bfloat16))
    row["gluon_full_ms"], row["gluon_full_tflops"] = ms, tflops_per_s(flops, ms)
    for tile in tiles:
        ms = _time(lambda: fp8_attention_forward(x, scale, causal, torch.bfloat16, tile=tile))
        row.setdefault("tiles", []).append(dict(tile=list(tile.__dict__.values()), tflops=tflops_per_s(flops, ms)))
    ms = _time(lambda: fp8_attention_forward_triton(x, scale, causal, torch.bfloat16))
    row["triton_ms"], row["triton_tflops"] = ms, tflops_per_s(flops, ms)
    if tiles and head_dim == 256:  # 64-key scale blocks: half the score registers of the default 128
        x64 = quantize_qkv_ref(*_inputs(batch, seqlen, nheads, head_dim), FP8Config(block_n=64))
        ms = _time(lambda: fp8_attention_forward(x64, scale, causal, torch.bfloat16))
        row["gluon_block_n64_tflops"] = tflops_per_s(flops, ms)
    print(json.dumps(row), flush=True)


def bench_stage(seqlens, fp8_seqlens):
    from kernels.gluon import TileConfig as T
    a = ABLATION
    _bench_bf16(a["batch"], a["seqlen"], a["nheads"], a["head_dim"], False, list(SWITCHES))
    # Tile alternatives (block_m, block_n, stages, o_in_q) where shared memory allows them.
    bf16_tiles = {64: [T(128, 128, 2, False), T(128, 128, 4, False)], 128: [T(128, 128, 2, False)], 256: []}
    fp8_tiles = {64: [T(128, 128, 2, False)], 128: [T(128, 128, 2, False), T(128, 128, 4, False)], 256: []}
    for causal in (False, True):
        for d in HEAD_DIMS:
            for s in seqlens:
                tiles = bf16_tiles[d] if s in TILE_SEQLENS else ()
                _bench_bf16(TOKENS // s, s, HIDDEN // d, d, causal, ["full", "no_pipeline"], tiles)
    for causal in (False, True):
        for d in HEAD_DIMS:
            for s in fp8_seqlens:
                _bench_fp8(TOKENS // s, s, HIDDEN // d, d, causal, fp8_tiles[d] if s == 16384 and not causal else ())


def _run_stage(args, timeout, log):
    """Run one stage as a child; returns its JSON rows (and whatever it printed before a hang)."""
    out, _, _ = run_child([sys.executable, "-m", "experiments.tune_gluon", *args], timeout, log, " ".join(args))
    return json_rows(out)


def _table(rows):
    checks = [r for r in rows if r["stage"] == "check"]
    print(f"\ncorrectness: {sum(r['ok'] for r in checks)}/{len(checks)} checks passed")
    for r in checks:
        if not r["ok"]:
            print("  FAIL", r)
    print("\ncompile stats:")
    for r in rows:
        if r["stage"] == "stats":
            print(f"  hd{r['head_dim']:<4}{'causal' if r['causal'] else 'full':7}{r['variant']:12} regs {r['n_regs']:4} "
                  f"spills {r['n_spills']:4} smem {r['shared']:7} warps {r['num_warps']}")
    print("\nforward TFLOPs/s (16k tokens, hidden 2048; ratio = best gluon / cudnn; fp8 rows: triton = our Triton FP8)")
    print(f"  {'dtype':5} {'hd':>4} {'causal':>6} {'seqlen':>6} {'gluon':>7} {'nopipe':>7} {'cudnn':>7} {'ratio':>6} "
          f"{'triton':>7}  tiles")
    nan = float("nan")
    for r in rows:
        if r["stage"] != "bench" or "gluon_no_ws_tflops" in r:
            continue
        g, c, t = r.get("gluon_full_tflops", nan), r.get("cudnn_tflops", nan), r.get("triton_tflops", nan)
        tiles = " ".join(f"{x['tile']}:{x['tflops']:.0f}" for x in r.get("tiles", []))
        if "gluon_block_n64_tflops" in r:
            tiles += f" block_n=64:{r['gluon_block_n64_tflops']:.0f}"
        npp = r.get("gluon_no_pipeline_tflops", nan)
        print(f"  {r['dtype']:5} {r['head_dim']:>4} {str(r['causal']):>6} {r['seqlen']:>6} {g:7.1f} {npp:7.1f} {c:7.1f} "
              f"{max(g, npp) / c:6.2f} {t:7.1f}  {tiles}")
    for r in rows:
        if r["stage"] == "bench" and "gluon_no_ws_tflops" in r:
            print("\nTable 2 ablation (b4 s8448 h16 d128, non-causal) TFLOPs/s: " +
                  ", ".join(f"{n} {r[f'gluon_{n}_tflops']:.0f}" for n in SWITCHES) +
                  f"; cudnn {r.get('cudnn_tflops', nan):.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--stage", choices=["check", "stats", "bench"])
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--skip-check", action="store_true", help="bench and stats only (checks ran elsewhere)")
    parser.add_argument("--seqlens", default=",".join(map(str, SEQLENS)), help="BF16 sweep seqlens, comma-separated")
    parser.add_argument("--fp8-seqlens", default=",".join(map(str, FP8_SEQLENS)), help="FP8 sweep seqlens")
    args = parser.parse_args()
    if args.stage == "check":
        return check_stage(args.head_dim)
    if args.stage == "stats":
        return stats_stage()
    if args.stage == "bench":
        return bench_stage([int(x) for x in args.seqlens.split(",")], [int(x) for x in args.fp8_seqlens.split(",")])

    import torch
    import triton
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    rows = []
    with open(out / "tune_gluon.log", "w") as log:
        for d in () if args.skip_check else HEAD_DIMS:
            rows += _run_stage(["--stage", "check", "--head-dim", str(d)], 80, log)
        rows += _run_stage(["--stage", "bench", "--seqlens", args.seqlens, "--fp8-seqlens", args.fp8_seqlens], 220, log)
        rows += _run_stage(["--stage", "stats"], 40, log)
    (out / "tune_gluon.json").write_text(json.dumps(rows, indent=1))
    _table(rows)


if __name__ == "__main__":
    main()
