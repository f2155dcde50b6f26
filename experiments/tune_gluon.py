"""One-shot H200 run for the Gluon forward: correctness, compile stats, speed against cuDNN SDPA.

    PYTHONUNBUFFERED=1 python -m experiments.tune_gluon --out $OUT

Stages run as child processes with their own time limits, so a kernel that
hangs or faults costs its stage, not the run:
- `check`: the default variants (causal and not at each head dim, the
  ablation switches at hd128, FP8) against the float64 reference on a few odd
  shapes, outputs NaN-poisoned; FP8 also against the FP8 scheme's oracle and
  the Triton FP8 path. `check --group G`: the tile candidates of
  CANDIDATES[G] likewise (group "fp8perm": FP8 on V^T in natural key order,
  against the default's wgmma order from the Triton pre-pass; "fp8trim",
  "fp8trim1": the default FP8 tiles without their consumer trims). All
  checks run at once, next to the GPU test suite
  (tests/kernels/test_gluon_attention.py; `--skip-gpu-tests` leaves it out),
  so that they also fill Triton's cache for the benchmarks in parallel.
- `sanitize`: if a candidate group's check failed or crashed, one tiny launch
  of its first candidate under compute-sanitizer (memcheck).
- `bench`: median times (triton.testing.do_bench) of the FA3 paper's Table 2
  ablation shape and of WAVE_SHAPE, then FP8 and BF16 at 16k tokens x hidden
  2048 per shape, the defaults and the candidates side by side, next to cuDNN
  SDPA and our Triton kernels; FP8 alone and including the Triton pre-pass
  from bf16. `--fp8-only` times only the FP8 sweep (hd128/256 at --fp8-seqlens, causal at the longest).
- `stats`: registers, spills, shared memory of the default kernels.
Results go to <out>/tune_gluon.json; a table is printed last.
"""
import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.stages import json_rows, run as run_child

HEAD_DIMS = (64, 128, 256)
SEQLENS = (1024, 2048, 4096, 8192, 16384)
FP8_SEQLENS = (4096, 8192, 16384)
TOKENS, HIDDEN = 16384, 2048
ABLATION = dict(batch=4, seqlen=8448, nheads=16, head_dim=128)  # FA3 paper, Table 2
SWITCHES = {"full": {}, "no_ws": dict(warp_specialize=False), "no_pipeline": dict(pipeline=False),
            "no_pingpong": dict(pingpong=False)}
# The last shape has 352-512 tiles, several per persistent program (ring phases, turns and Q reuse across tiles).
CHECK_SHAPES = [(2, 113, 203, 4, 4), (1, 1000, 517, 6, 2), (1, 1101, 1101, 4, 2), (4, 2048, 2048, 8, 2)]
# Tile candidates by group: (name, dtype, head dim, changes to that head dim's default kernels.gluon TileConfig),
# each checked and timed next to the default. "sync": the three synchronization options together ("sync") and,
# at hd128, each alone; "q": a second Q buffer (the next tile's Q loads during the current tile), where shared
# memory allows it; "tile": FP8 hd128 rings and 128-row hd64 tiles (short causal sequences waste less on the
# diagonal).
SYNC = dict(branch_fence=True, named_turn=True, split_q=True)
NO_TRIMS = dict(fast_v_ratio=False, thread_row_sum=False, unmasked_loop=False)
# FP8 hd256's tile before session 27 (128 keys, not overlapped), from the overlapped default's.
UNOVERLAPPED_256 = dict(overlap=False, split_kv=False, thread_arrive=False, named_turn=False)
CANDIDATES = {
    "sync": [("sync", "bf16", 128, SYNC), ("fence", "bf16", 128, dict(branch_fence=True)),
             ("turn", "bf16", 128, dict(named_turn=True)), ("split_q", "bf16", 128, dict(split_q=True)),
             ("sync", "bf16", 64, SYNC), ("sync", "bf16", 256, SYNC), ("sync", "fp8", 128, SYNC),
             ("sync", "fp8", 256, SYNC)],
    "q": [("q2_s2_split", "bf16", 128, dict(q_stages=2, stages=2, split_kv=True)),
          ("q2_n64_s4", "bf16", 128, dict(q_stages=2, block_n=64, stages=4)),
          ("q2", "bf16", 64, dict(q_stages=2)), ("q2_s3", "bf16", 64, dict(q_stages=2, stages=3)),
          ("q2", "fp8", 128, dict(q_stages=2)), ("q2", "fp8", 256, dict(q_stages=2))],
    "tile": [("s4", "fp8", 128, dict(stages=4)), ("s2_split", "fp8", 128, dict(stages=2, split_kv=True)),
             ("s3_split", "fp8", 128, dict(stages=3, split_kv=True)),
             ("m128_s3", "bf16", 64, dict(block_m=128, stages=3, split_kv=False)),
             ("m128_s3_sync", "bf16", 64, dict(SYNC, block_m=128, stages=3, split_kv=False))],
    # The FP8 default (V^T in wgmma key order, the consumer trims; docs/tuning-gluon.md entries 17-18) ablated: the
    # natural key order (V_KEY_ORDERS), no trims (both, then each trim off at hd128). Separate groups so that
    # their checks run in parallel children.
    "fp8perm": [("natural_v", "fp8", 128, {}), ("natural_v", "fp8", 256, {})],
    "fp8trim": [("untrimmed", "fp8", 128, NO_TRIMS), ("untrimmed", "fp8", 256, NO_TRIMS),
                ("natural_v_untrimmed", "fp8", 128, NO_TRIMS)],
    "fp8trim1": [("no_rcp", "fp8", 128, dict(fast_v_ratio=False)),
                 ("no_lsum", "fp8", 128, dict(thread_row_sum=False)),
                 ("no_nomask", "fp8", 128, dict(unmasked_loop=False))],
    # The row-sum and loop trims on the bf16 kernels (fast_v_ratio is FP8's V-scale ratio only): on by default at
    # hd128/256 since docs/tuning-gluon.md entry 30, so timed off there and on at hd64.
    "bf16trim": [("trim", "bf16", 64, dict(thread_row_sum=True, unmasked_loop=True))]
                + [("untrimmed", "bf16", d, dict(thread_row_sum=False, unmasked_loop=False)) for d in (128, 256)],
    # FP8 key tiles twice as wide (FA3: 128 x 224 at hd128, 128 x 128 at hd256): each block's fixed latency (S wait,
    # row reductions, turn) spread over twice the GEMM work. They fit the registers only without the overlap
    # (overlapped they spill 448 B at hd128); hd128's 256-key tile needs 256-key scale blocks (kv_block). hd256's
    # default has been such a tile since entry 22 of docs/tuning-gluon.md (overlapped since session 27): its group
    # times the one before (64 keys, overlapped), both on UNOVERLAPPED_256. "fp8wide_ctl": each change alone. Three
    # groups so that their checks run in parallel children.
    "fp8wide128": [("n256_nopipe", "fp8", 128, dict(block_n=256, stages=2, overlap=False, kv_block=256)),
                   ("n256_nopipe_split", "fp8", 128,
                    dict(block_n=256, stages=2, split_kv=True, overlap=False, kv_block=256))],
    "fp8wide256": [("n64_overlap", "fp8", 256, dict(UNOVERLAPPED_256, block_n=64, stages=3, overlap=True)),
                   ("n128_split", "fp8", 256, dict(UNOVERLAPPED_256, split_kv=True))],
    "fp8wide_ctl": [("kv256", "fp8", 128, dict(kv_block=256)), ("nopipe", "fp8", 128, dict(overlap=False)),
                    ("n64_nopipe", "fp8", 256, dict(UNOVERLAPPED_256, block_n=64, stages=3))],
    # FP8 hd128 with three consumer warpgroups (192 query rows), not overlapped (overlapped they spill): at hd128
    # each consumer's 64 exp2 per thread and block keep the MUFU busy as long as its two GEMMs keep the tensor
    # cores, so a third warpgroup's GEMMs are there to hide the other two's softmax.
    "fp8rows": [("m192_s3", "fp8", 128, dict(block_m=192, stages=3, overlap=False)),
                ("m192_s2", "fp8", 128, dict(block_m=192, stages=2, overlap=False)),
                ("m192_s4", "fp8", 128, dict(block_m=192, stages=4, overlap=False))],
    # The causal mask's cost (docs/tuning-gluon.md entries 46-47 and 50): blocks below the diagonal in a loop
    # without the mask test (TileConfig.causal_unmasked_loop), the mask itself by one compare per score
    # (row_bound_mask), each set both ways; the setting equal to a tile's default (both on at hd64 and FP8 hd128,
    # both off elsewhere) times that default again, a gauge of the run's noise. No-ops in the non-causal rows.
    "causal_mask": [(name, dt, d, dict(causal_unmasked_loop=split, row_bound_mask=bound))
                    for dt, dims in (("bf16", HEAD_DIMS), ("fp8", (128,))) for d in dims
                    for name, split, bound in (("neither", False, False), ("split", True, False),
                                               ("bound", False, True), ("split_bound", True, True))],
    # FP8 hd256's 128-key tile overlapped, as FA3 runs it (the default since session 27, docs/tuning-gluon.md
    # entries 48 and 50: split K/V release for two stages, per-thread arrives and named-barrier turns, without which
    # the overlapped loop spills): against the previous default (none of the four), the overlap with the rescale
    # under the next QK^T (FP8 hd128's order; 16 reloads a block here) or with mbarrier turns, and the sync options
    # without the overlap.
    "fp8ov256": [("unoverlapped", "fp8", 256, UNOVERLAPPED_256),
                 ("under_s", "fp8", 256, dict(rescale_under_s=True)),
                 ("single_turn", "fp8", 256, dict(named_turn=False)),
                 ("sync_plain", "fp8", 256, dict(overlap=False, split_kv=False)),
                 ("split_sync_plain", "fp8", 256, dict(overlap=False))],
}
# A candidate's change that is not a TileConfig field: the FP8 scale block of K and V (FP8Config.block_n).
KV_BLOCK_KEY = "kv_block"
# V^T key order by candidate name prefix (kernels.quant.FP8QKV.v_key_order); others get the default's.
V_KEY_ORDERS = {"natural_v": "natural"}
MASKS = {"full": False, "causal": True}  # --masks names -> the causal flag
# hd128 non-causal with whole waves of tiles: 132 m-blocks x 16 heads = 16 tiles per SM on 132 SMs (the 16k
# sweep shape has 2048 tiles, 15.5 waves).
WAVE_SHAPE = dict(batch=1, seqlen=16896, nheads=16, head_dim=128)
GROUP_ORDER = ("sync", "q", "tile", "fp8perm", "fp8trim", "fp8trim1", "bf16trim", "fp8wide128", "fp8wide256",
               "fp8wide_ctl", "fp8rows", "causal_mask", "fp8ov256")


def parse_masks(text):
    """"full,causal" -> (False, True): the causal flags that --masks names; ValueError for a name not in MASKS."""
    names = text.split(",")
    unknown = sorted(set(names) - MASKS.keys())
    if unknown:
        raise ValueError(f"--masks: unknown {', '.join(unknown)} (choose from {', '.join(MASKS)})")
    return tuple(MASKS[m] for m in names)


def _default_v_order():
    """The V^T key order flash_attn_fp8_func gives the Gluon FP8 forward (kernels.fp8.GLUON_FP8_WGMMA_V_ORDER)."""
    from kernels.fp8 import GLUON_FP8_WGMMA_V_ORDER
    return "wgmma" if GLUON_FP8_WGMMA_V_ORDER else "natural"


def _v_key_order(name):
    """{"v_key_order": ...} for a candidate whose name starts with a V_KEY_ORDERS key, else {}."""
    return next(({"v_key_order": order} for prefix, order in V_KEY_ORDERS.items() if name.startswith(prefix)), {})


def _tile(dtype, head_dim, causal, changes):
    """The default TileConfig of (dtype, head dim, mask) with `changes` (its TileConfig fields) applied."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    fields = {k: v for k, v in changes.items() if k != KV_BLOCK_KEY}
    return replace(default_tile(1 if dtype == "fp8" else 2, head_dim, causal), **fields)


def _call_kwargs(dtype, head_dim, causal, changes):
    """Keyword arguments of the forward for a candidate: its tile, and for FP8 its FP8Config."""
    kwargs = dict(tile=_tile(dtype, head_dim, causal, changes))
    if dtype == "fp8":
        from kernels.quant import FP8Config
        kwargs["config"] = FP8Config(block_n=changes.get(KV_BLOCK_KEY, FP8Config.block_n))
    return kwargs


def _poisoned(run, out_shape, out_dtype):
    """run() with NaN-filled blocks of out's and lse's sizes freed just before, which the caching allocator hands
    to the outputs; returns (out, lse, whether they did land there)."""
    import torch
    b, sq, h, _ = out_shape
    out_poison = torch.full(out_shape, float("nan"), device="cuda", dtype=out_dtype)
    lse_poison = torch.full((b, h, sq), float("nan"), device="cuda")
    ptrs = out_poison.data_ptr(), lse_poison.data_ptr()
    del out_poison, lse_poison
    out, lse = run()
    torch.cuda.synchronize()
    return out, lse, (out.data_ptr(), lse.data_ptr()) == ptrs


def _check_bf16(head_dim, causal, shape, name, **kwargs):
    import torch
    from kernels.gluon import attention_forward
    from kernels.reference import attention_ref
    b, sq, sk, h, h_kv = shape
    q = torch.randn(b, sq, h, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, h_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    out, lse, poisoned = _poisoned(lambda: attention_forward(q, k, v, None, causal, **kwargs), q.shape, q.dtype)
    ref, lse_ref = attention_ref(q, k, v, causal)
    ref_pt, _ = attention_ref(q, k, v, causal, dtype=q.dtype)
    err = (out.double() - ref).abs().max().item()
    err_pt = (ref_pt.double() - ref).abs().max().item()
    finite = torch.isfinite(lse_ref)
    lse_err = (lse.double() - lse_ref)[finite].abs().max().item()
    inf_ok = torch.equal(torch.isinf(lse), ~finite)
    ok = err <= 2 * err_pt + 1e-5 and lse_err <= 1e-3 and inf_ok and poisoned
    print(json.dumps(dict(stage="check", dtype="bf16", head_dim=head_dim, variant=name, causal=causal, shape=shape,
                          ok=ok, err=err, err_pytorch=err_pt, lse_err=lse_err, inf_rows_ok=inf_ok,
                          poisoned=poisoned)), flush=True)


def _check_fp8(head_dim, causal, shape, name, v_key_order=None, config=None, **kwargs):
    """FP8 forward vs the scheme's oracle (kernels.quant) and the Triton FP8 path, errors against float64.

    v_key_order (default: the public op's, _default_v_order) "wgmma": the kernel reads V^T in that order from the
    Triton pre-pass, whose V codes must be the natural order's, permuted (prepass_v_ok); the oracles read the
    natural order."""
    import torch
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, fp8_forward_ref, quantize_qkv_ref, to_wgmma_key_order
    from kernels.reference import attention_ref
    from kernels.triton.fp8_quant import quantize_qkv_triton
    b, sq, sk, h, h_kv = shape
    q = torch.randn(b, sq, h, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, h_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    config = config or FP8Config()
    x = quantize_qkv_ref(q, k, v, config)
    x_run, prepass_v_ok = x, True
    v_key_order = v_key_order or _default_v_order()
    if v_key_order != "natural":
        x_run = quantize_qkv_triton(q, k, v, config, v_key_order=v_key_order)
        natural_v_t = quantize_qkv_triton(q, k, v, config).v_t
        prepass_v_ok = torch.equal(x_run.v_t.view(torch.uint8), to_wgmma_key_order(natural_v_t).view(torch.uint8))
    scale = head_dim ** -0.5
    out, lse, poisoned = _poisoned(lambda: fp8_attention_forward(x_run, scale, causal, torch.bfloat16, **kwargs),
                                   q.shape, torch.bfloat16)
    exact, lse_exact = attention_ref(q, k, v, causal)
    out8, lse8 = fp8_forward_ref(x, scale, causal)
    err = (out.double() - exact).abs().max().item()
    err8 = (out8.double() - exact).abs().max().item()
    try:  # the Triton FP8 path, when it imports and runs in this tree
        from kernels.triton.fp8_fwd import fp8_attention_forward_triton
        out_tr, _ = fp8_attention_forward_triton(x, scale, causal, torch.bfloat16)
        err_tr = (out_tr.double() - exact).abs().max().item()
    except Exception:
        err_tr = float("inf")
    # LSE against float64, like O: the kernel's key tile may be a fraction of the scheme's scale block (hd256),
    # which moves its LSE off the oracle's by about 1e-3 on long causal rows without being less accurate.
    finite = torch.isfinite(lse_exact)
    lse_err = (lse.double() - lse_exact)[finite].abs().max().item()
    lse_err8 = (lse8.double() - lse_exact)[finite].abs().max().item()
    inf_ok = torch.equal(torch.isinf(lse), ~finite)
    ok = (err <= 1.25 * min(err8, err_tr) + 1e-3 and lse_err <= 1.25 * lse_err8 + 1e-3 and inf_ok and poisoned
          and prepass_v_ok)
    print(json.dumps(dict(stage="check", dtype="fp8", head_dim=head_dim, variant=name, causal=causal, shape=shape,
                          ok=ok, err=err, err_fp8_scheme=err8, err_triton_fp8=err_tr, lse_err=lse_err,
                          lse_err_fp8_scheme=lse_err8, poisoned=poisoned, prepass_v_ok=prepass_v_ok)), flush=True)


def _check_fp8_long(head_dim, seqlen=8192):
    """FP8 at a long key range, by relative RMSE against float64: the Gluon kernel accumulates P V across key
    blocks inside the FP8 wgmma accumulator, the Triton path adds each block's P V in fp32."""
    import torch
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, fp8_forward_ref, quantize_qkv_ref
    from kernels.reference import attention_ref
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    q, k, v = (torch.randn(1, seqlen, 2, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    x = quantize_qkv_ref(q, k, v, FP8Config())
    scale = head_dim ** -0.5
    exact, _ = attention_ref(q, k, v, False)

    def rmse(out):
        return ((out.double() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()).item()

    err = rmse(fp8_attention_forward(x, scale, False, torch.bfloat16)[0])
    err8 = rmse(fp8_forward_ref(x, scale, False)[0])
    err_tr = rmse(fp8_attention_forward_triton(x, scale, False, torch.bfloat16)[0])
    print(json.dumps(dict(stage="check", dtype="fp8", head_dim=head_dim, variant="fp8_long_rmse", causal=False,
                          shape=[1, seqlen, seqlen, 2, 2], ok=err <= 1.1 * min(err8, err_tr), err=err,
                          err_fp8_scheme=err8, err_triton_fp8=err_tr)), flush=True)


def check_stage(head_dim, group):
    if group is None:  # the defaults at one head dim; the ablation switches where the ablation runs
        for name, switches in SWITCHES.items():
            for causal in (False, True) if name == "full" else (False, ):
                if name == "full" or head_dim == ABLATION["head_dim"]:
                    for shape in CHECK_SHAPES:
                        _check_bf16(head_dim, causal, list(shape), name, **switches)
        for causal in (False, True):
            for shape in (CHECK_SHAPES[1], CHECK_SHAPES[-1]):
                _check_fp8(head_dim, causal, list(shape), "fp8")
        _check_fp8_long(head_dim)
        return
    for name, dtype, d, changes in CANDIDATES[group]:
        check = _check_fp8 if dtype == "fp8" else _check_bf16
        order = _v_key_order(name)
        for causal in (False, True):
            for shape in CHECK_SHAPES[1:]:
                check(d, causal, list(shape), name, **_call_kwargs(dtype, d, causal, changes), **order)


def tiny_stage(group):
    """One small launch of the group's first candidate (run under compute-sanitizer)."""
    import torch
    name, dtype, d, changes = CANDIDATES[group][0]
    check = _check_fp8 if dtype == "fp8" else _check_bf16
    order = _v_key_order(name)
    check(d, True, [1, 300, 517, 2, 1], name, **_call_kwargs(dtype, d, True, changes), **order)
    torch.cuda.synchronize()


def stats_stage():
    """Resources of the compiled default kernels as the driver loaded them."""
    import torch
    from kernels.gluon import Variant
    for d in HEAD_DIMS:  # FP8 first: its kernels are in the cache after an --fp8-only run
        for v_wgmma_keys, name in ((False, "fp8"), (True, "fp8wg")):
            _stats_row(Variant(torch.float8_e4m3fn, d, False, out_dtype=torch.bfloat16, q_scale_block=128,
                               kv_scale_block=128, v_wgmma_keys=v_wgmma_keys), name)
    for d in HEAD_DIMS:
        for causal in (False, True):
            _stats_row(Variant(torch.bfloat16, d, causal), "full")


def _stats_row(variant, name):
    from kernels.gluon import compile_forward
    ck = compile_forward(variant)
    ck._init_handles()
    print(json.dumps(dict(stage="stats", head_dim=variant.head_dim, causal=variant.causal, variant=name,
                          n_regs=ck.n_regs, n_spills=ck.n_spills, shared=ck.metadata.shared,
                          num_warps=ck.metadata.num_warps)), flush=True)


def _time(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


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
    for name, changes in tiles:
        try:
            kwargs = _call_kwargs("bf16", head_dim, causal, changes)
            ms = _time(lambda: attention_forward(q, k, v, None, causal, **kwargs))
            row.setdefault("tiles", []).append(dict(tile=name, tflops=tflops_per_s(flops, ms)))
        except Exception as e:  # a candidate that does not compile or launch here is reported, not fatal
            row.setdefault("tiles", []).append(dict(tile=name, error=f"{type(e).__name__}: {e}"[:200]))
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


def _bench_fp8(batch, seqlen, nheads, head_dim, causal, tiles=(), default=True):
    """FP8 forward alone (on pre-pass outputs) and including the Triton pre-pass from bf16 q, k, v; the default
    tile unless `default` is False, then the candidate tiles."""
    import torch
    from kernels.flops import attention_flops, tflops_per_s
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    from kernels.triton.fp8_quant import quantize_qkv_triton
    cfg = FP8Config()
    q, k, v = _inputs(batch, seqlen, nheads, head_dim)
    order = _default_v_order()
    x = quantize_qkv_triton(q, k, v, cfg, v_key_order=order)
    x_natural = quantize_qkv_triton(q, k, v, cfg)  # the Triton FP8 forward's own order
    flops = attention_flops(batch, seqlen, nheads, head_dim, causal)
    scale = head_dim ** -0.5
    row = dict(stage="bench", dtype="fp8", batch=batch, seqlen=seqlen, nheads=nheads, head_dim=head_dim,
               causal=causal)
    row["prepass_ms"] = _time(lambda: quantize_qkv_triton(q, k, v, cfg, v_key_order=order))
    if default:
        ms = _time(lambda: fp8_attention_forward(x, scale, causal, torch.bfloat16))
        row["gluon_full_ms"], row["gluon_full_tflops"] = ms, tflops_per_s(flops, ms)
        ms = _time(lambda: fp8_attention_forward(quantize_qkv_triton(q, k, v, cfg, v_key_order=order), scale, causal,
                                                 torch.bfloat16))
        row["gluon_with_prepass_ms"], row["gluon_with_prepass_tflops"] = ms, tflops_per_s(flops, ms)
    for name, changes in tiles:
        try:
            kwargs = _call_kwargs("fp8", head_dim, causal, changes)
            own_cfg = kwargs.pop("config")
            own = _v_key_order(name).get("v_key_order", order)
            if own != order or own_cfg != cfg:  # the pre-pass's output differs too: time it, and the two composed
                xc = quantize_qkv_triton(q, k, v, own_cfg, v_key_order=own)
                ms = _time(lambda: fp8_attention_forward(xc, scale, causal, torch.bfloat16, **kwargs))
                prepass_ms = _time(lambda: quantize_qkv_triton(q, k, v, own_cfg, v_key_order=own))
                total_ms = _time(lambda: fp8_attention_forward(quantize_qkv_triton(q, k, v, own_cfg, v_key_order=own),
                                                               scale, causal, torch.bfloat16, **kwargs))
            else:
                ms = _time(lambda: fp8_attention_forward(x, scale, causal, torch.bfloat16, **kwargs))
                prepass_ms, total_ms = row["prepass_ms"], ms + row["prepass_ms"]
            row.setdefault("tiles", []).append(dict(tile=name, tflops=tflops_per_s(flops, ms), prepass_ms=prepass_ms,
                                                    with_prepass_tflops=tflops_per_s(flops, total_ms)))
        except Exception as e:
            row.setdefault("tiles", []).append(dict(tile=name, error=f"{type(e).__name__}: {e}"[:200]))
    ms = _time(lambda: fp8_attention_forward_triton(x_natural, scale, causal, torch.bfloat16))
    row["triton_ms"], row["triton_tflops"] = ms, tflops_per_s(flops, ms)
    print(json.dumps(row), flush=True)


def _key(name, dtype, head_dim):
    return f"{name}/{dtype}/{head_dim}"


def _candidates(keys, dtype, head_dim):
    """(name, changes) of the candidates named in keys (see _key) for dtype and head dim."""
    return [(name, ch) for g in GROUP_ORDER for name, dt, d, ch in CANDIDATES[g]
            if dt == dtype and d == head_dim and _key(name, dt, d) in keys]


def _clean_candidates(group, rows):
    """Keys of the group's candidates whose every check ran and passed (a crash loses only those after it)."""
    n_checks = 2 * len(CHECK_SHAPES[1:])
    return [_key(name, dt, d) for name, dt, d, _ in CANDIDATES[group]
            if sum(r["ok"] for r in rows if _key(r["variant"], r["dtype"], r["head_dim"]) == _key(name, dt, d))
            == n_checks]


def bench_stage(seqlens, fp8_seqlens, keys, skip_head_dims=(), fp8_only=False, masks=(False, True)):
    """skip_head_dims: head dims whose default kernels failed their checks; only candidates are timed there.
    fp8_only: only the FP8 sweep (hd128 and hd256 at fp8_seqlens non-causal, and causal at the longest).
    masks: the causal settings timed otherwise; (True,) leaves out every non-causal row (Table 2's shape, whole
    waves, the FP8 sweep) for candidates that change only the causal kernels."""
    def full(d):
        return [] if d in skip_head_dims else ["full"]

    if fp8_only:
        for d in (128, 256):
            for s in fp8_seqlens:
                _bench_fp8(TOKENS // s, s, HIDDEN // d, d, False, _candidates(keys, "fp8", d), bool(full(d)))
            s = max(fp8_seqlens)  # and causal at the longest
            _bench_fp8(TOKENS // s, s, HIDDEN // d, d, True, _candidates(keys, "fp8", d), bool(full(d)))
        return
    if False in masks:
        a = ABLATION
        hd128_tiles = _candidates(keys, "bf16", 128)
        _bench_bf16(a["batch"], a["seqlen"], a["nheads"], a["head_dim"], False,
                    list(SWITCHES) if full(a["head_dim"]) else [], hd128_tiles)
        w = WAVE_SHAPE
        _bench_bf16(w["batch"], w["seqlen"], w["nheads"], w["head_dim"], False, full(w["head_dim"]), hd128_tiles)
        for d in (128, 256):
            for s in fp8_seqlens:
                tiles = _candidates(keys, "fp8", d)
                _bench_fp8(TOKENS // s, s, HIDDEN // d, d, False, tiles, bool(full(d)))
        if full(64):
            _bench_fp8(TOKENS // 16384, 16384, HIDDEN // 64, 64, False)
    if True in masks:  # FP8 causal at 16k, with the candidates (the non-causal sweep above has them too)
        for d in (128, 256):
            _bench_fp8(TOKENS // 16384, 16384, HIDDEN // d, d, True, _candidates(keys, "fp8", d), bool(full(d)))
    for causal in masks:
        for d in HEAD_DIMS:
            for s in seqlens:
                tiles = _candidates(keys, "bf16", d)
                _bench_bf16(TOKENS // s, s, HIDDEN // d, d, causal, full(d), tiles)


def _run_stage(args, timeout, log):
    """Run one stage as a child; returns (its JSON rows, whether it exited cleanly)."""
    out, _, status = run_child([sys.executable, "-m", "experiments.tune_gluon", *args], timeout, log, " ".join(args))
    return json_rows(out), status == "rc=0"


def _table(rows):
    checks = [r for r in rows if r["stage"] == "check"]
    print(f"\ncorrectness: {sum(r['ok'] for r in checks)}/{len(checks)} checks passed")
    for r in checks:
        if not r["ok"]:
            print("  FAIL", r)
    for r in rows:
        if r["stage"] in ("sanitize", "crash", "check_failed", "pytest"):
            print(" ", r)
    print("\ncompile stats:")
    for r in rows:
        if r["stage"] == "stats":
            print(f"  hd{r['head_dim']:<4}{'causal' if r['causal'] else 'full':7}{r['variant']:6} regs {r['n_regs']:4} "
                  f"spills {r['n_spills']:4} smem {r['shared']:7} warps {r['num_warps']}")
    print("\nforward TFLOPs/s (16k tokens, hidden 2048; ratio = best gluon / cudnn; fp8: triton = our Triton FP8, "
          "+pre = gluon including the pre-pass)")
    nan = float("nan")
    for r in rows:
        if r["stage"] != "bench" or "gluon_no_ws_tflops" in r:
            continue
        g, c, t = r.get("gluon_full_tflops", nan), r.get("cudnn_tflops", nan), r.get("triton_tflops", nan)
        best = max([g] + [x["tflops"] for x in r.get("tiles", []) if "tflops" in x])
        tiles = " ".join(f"{x['tile']}:{x.get('tflops', nan):.0f}" +
                         (f" (+pre {x['with_prepass_tflops']:.0f})" if "with_prepass_tflops" in x else "")
                         for x in r.get("tiles", []))
        extra = f"+pre {r['gluon_with_prepass_tflops']:.0f} " if "gluon_with_prepass_tflops" in r else ""
        print(f"  {r['dtype']:5} hd{r['head_dim']:<4} {'causal' if r['causal'] else 'full':6} {r['seqlen']:>6} "
              f"gluon {g:6.1f} cudnn {c:6.1f} ratio {best / c:5.2f} triton {t:6.1f} {extra} {tiles}")
    for r in rows:
        if r["stage"] == "bench" and "gluon_no_ws_tflops" in r:
            tiles = " ".join(f"{x['tile']}:{x.get('tflops', nan):.0f}" for x in r.get("tiles", []))
            print("\nTable 2 ablation (b4 s8448 h16 d128, non-causal) TFLOPs/s: " +
                  ", ".join(f"{n} {r[f'gluon_{n}_tflops']:.0f}" for n in SWITCHES) +
                  f"; cudnn {r.get('cudnn_tflops', nan):.0f}; tiles {tiles}")


def main():
    parser = argparse.ArgumentParser(prog="python -m experiments.tune_gluon", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--stage", choices=["check", "tiny", "stats", "bench"])
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--group", choices=sorted(CANDIDATES))
    parser.add_argument("--groups", default=",".join(GROUP_ORDER), help="candidate groups to check and time")
    parser.add_argument("--candidates", default="", help="bench: candidates to time, name/dtype/head_dim")
    parser.add_argument("--skip-default-check", action="store_true", help="check candidates only")
    parser.add_argument("--skip-gpu-tests", action="store_true", help="leave out tests/kernels/test_gluon_attention.py")
    parser.add_argument("--fp8-only", action="store_true",
                        help="bench: only the FP8 sweep (hd128/256 at --fp8-seqlens, and causal at the longest)")
    parser.add_argument("--skip-head-dims", default="", help="bench: head dims timed without their defaults")
    parser.add_argument("--seqlens", default=",".join(map(str, SEQLENS)), help="BF16 sweep seqlens, comma-separated")
    parser.add_argument("--fp8-seqlens", default=",".join(map(str, FP8_SEQLENS)), help="FP8 sweep seqlens")
    parser.add_argument("--masks", default="full,causal", help="bench: the masks timed (full, causal), comma-separated;"
                        " causal alone leaves out every non-causal row")
    args = parser.parse_args()
    try:
        masks = parse_masks(args.masks)
    except ValueError as err:
        parser.error(str(err))
    groups = [g for g in args.groups.split(",") if g]
    if args.stage == "check":
        return check_stage(args.head_dim, args.group)
    if args.stage == "tiny":
        return tiny_stage(args.group)
    if args.stage == "stats":
        return stats_stage()
    if args.stage == "bench":
        return bench_stage([int(x) for x in args.seqlens.split(",")], [int(x) for x in args.fp8_seqlens.split(",")],
                           args.candidates.split(","), [int(x) for x in args.skip_head_dims.split(",") if x],
                           args.fp8_only, masks)

    import torch
    import triton
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    rows = []
    with open(out / "tune_gluon.log", "w") as log:
        # All checks at once, one child each: they compile every variant the benchmarks run (into Triton's
        # cache) in parallel, and a fault or hang stays in its child.
        stages = [["--stage", "check", "--head-dim", str(d)] for d in (() if args.skip_default_check else HEAD_DIMS)]
        stages += [["--stage", "check", "--group", g] for g in groups]
        with ThreadPoolExecutor(len(stages) + 1) as pool:
            if not args.skip_gpu_tests:
                tests = pool.submit(run_child, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                "tests/kernels/test_gluon_attention.py"], 200, log, "GPU tests")
            results = list(pool.map(lambda a: _run_stage(a, 120, log), stages))
            if not args.skip_gpu_tests:
                text, _, status = tests.result()
                rows.append(dict(stage="pytest", status=status, summary=text.strip().splitlines()[-1:]))
        clean = []  # groups all of whose checks passed
        keys = []  # candidates all of whose checks passed
        failed_head_dims = []
        for stage, (got, exited) in zip(stages, results):
            rows += got
            if "--group" not in stage:
                if not (exited and got and all(r["ok"] for r in got)):
                    failed_head_dims.append(stage[-1])
                    rows.append(dict(stage="crash" if not exited else "check_failed", group=f"hd{stage[-1]}"))
                continue
            g = stage[-1]
            keys += _clean_candidates(g, got)
            if exited and got and all(r["ok"] for r in got):
                clean.append(g)
            else:
                rows.append(dict(stage="crash" if not exited else "check_failed", group=g))
        for g in [g for g in groups if g not in clean][:1]:  # one sanitizer run: it is slow
            cmd = ["compute-sanitizer", "--tool", "memcheck", sys.executable, "-m", "experiments.tune_gluon",
                   "--stage", "tiny", "--group", g]
            text, err, status = run_child(cmd, 60, log, f"sanitize {g}")
            rows.append(dict(stage="sanitize", group=g, status=status, tail=(text + err)[-1500:]))
        rows += _run_stage(["--stage", "bench", "--seqlens", args.seqlens, "--fp8-seqlens", args.fp8_seqlens,
                            "--candidates", ",".join(keys), "--skip-head-dims", ",".join(failed_head_dims),
                            "--masks", args.masks]
                           + (["--fp8-only"] if args.fp8_only else []), 200, log)[0]
        rows += _run_stage(["--stage", "stats"], 30, log)[0]
    (out / "tune_gluon.json").write_text(json.dumps(rows, indent=1))
    _table(rows)


if __name__ == "__main__":
    main()
