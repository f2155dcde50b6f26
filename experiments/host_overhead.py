"""Host overhead of our attention entry points against the GPU time they launch (one GPU call).

    PYTHONUNBUFFERED=1 python -m experiments.host_overhead --out $OUT

For each path and shape three numbers:
- `host_us`: Python/driver time per call, from the wall clock over calls that
  are queued without synchronizing (the GPU never stalls the host here), the
  median of 5 windows of 50 calls;
- `bench_ms`: triton.testing.do_bench's median, what the tables report: it
  includes GPU idle time whenever the host cannot keep the queue full;
- `graph_ms`: the same calls replayed from a CUDA graph, the GPU time alone.
bench_ms well above graph_ms means the path is host-bound at that shape.
Forward + backward paths come three ways: as users call them, with the
backward on the calling thread (`_1thread`: autograd's multithreading off,
so no hand-over to the engine's CUDA device thread), and `autograd_floor`, a
clone/identity autograd.Function's round trip (the engine's own cost). The
backward alone comes as the paper tables time it, through autograd over a
kept forward graph (`*_bwd_retained`), and as the direct call. The FP8 op
comes as its pre-pass, forward, forward + backward and backward (`fp8_*`).
`--paths` times only the paths named.
Writes <out>/host_overhead.json and prints a table. `--profile` also writes
<out>/host_profile.txt: cProfile's top functions (by own time) over the calls
of each path at the first shape asked for, to show where the host time goes.
`--timeline` adds to each graphable path's row (and the printed table)
each GPU kernel of one call with its median duration and the median idle time
before it (torch.profiler over calls that each follow an L2 flush, as in
do_bench), which shows whether a multi-kernel path (the FP8 op: pre-pass, then
forward) waits for the host between its kernels.
"""
import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch
import triton

# (name, batch, seqlen, heads, head dim, causal): GPT-2 small's attention at its training shape, and the paper's
# 16k-token shapes at 1k keys (short: the host's share is largest; the 1k cells where the Gluon forward read
# 0.88-0.99x cuDNN in session 22) and 4k keys, where the FP8 bar (>= 750 TFLOPs/s including the pre-pass) is hardest.
SHAPES = [("gpt2", 32, 1024, 12, 64, True), ("hd128_1k", 16, 1024, 16, 128, False),
          ("hd128_1k_causal", 16, 1024, 16, 128, True), ("hd64_1k", 16, 1024, 32, 64, False),
          ("hd64_1k_causal", 16, 1024, 32, 64, True),
          ("hd128_4k", 4, 4096, 16, 128, False), ("hd256_4k", 4, 4096, 8, 256, False)]
# On request only: the backward bar's longest cells (~8 ms a call), and the shakespeare_char preset's attention
# (256 keys: the shortest GPU time per call, so the most host-bound).
EXTRA_SHAPES = [("hd128_16k", 1, 16384, 16, 128, False), ("hd128_16k_causal", 1, 16384, 16, 128, True),
                ("shakespeare", 64, 256, 6, 64, True)]
CALLS = 50
WINDOWS = 5


def host_us(fn):
    """Median over WINDOWS windows of CALLS calls (one window's figure moved by +-30% between runs)."""
    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(WINDOWS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        per_call.append((t1 - t0) / CALLS * 1e6)
    return statistics.median(per_call)


def graph_ms(fn):
    """Median GPU time of fn replayed from a CUDA graph (warmed up on a side stream, as capture requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=40, return_mode="median")


def profile(fn, top=25):
    """cProfile's top functions by own time over CALLS calls of fn (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(CALLS):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def timeline(fn, calls=30):
    """[{kernel, gpu_us, idle_before_us}] for one call of fn: medians over `calls` calls, each after an L2 flush
    (a 256 MB memset, do_bench's; its kernel is not listed, the idle time after it is the first kernel's)."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        flush.zero_()
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    per_call = len(events) // calls
    if per_call * calls != len(events):
        raise RuntimeError(f"{len(events)} GPU events over {calls} calls: not the same kernels every call")
    groups = [events[i * per_call:(i + 1) * per_call] for i in range(calls)]
    rows = []
    for j in range(1, per_call):  # j = 0 is the flush
        rows.append(dict(kernel=groups[0][j].name[:60],
                         gpu_us=statistics.median(g[j].time_range.end - g[j].time_range.start for g in groups),
                         idle_before_us=statistics.median(g[j].time_range.start - g[j - 1].time_range.end
                                                          for g in groups)))
    return rows


class _Identity(torch.autograd.Function):
    """The cheapest autograd round trip with one saved tensor: a clone forward, an identity backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.saved_tensors
        return grad


def paths(batch, seqlen, heads, d, causal):
    """(name, fn, graphable) of the entry points at one shape; inputs drawn once, fresh per shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import kernels
    from kernels.fp8 import _fp8_bwd_impl as fp8_backward
    from kernels.fp8 import _fp8_fwd_impl as fp8_forward
    from kernels.ops import gluon_kernels
    from kernels.triton import attention_forward_triton
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    from kernels.triton.fp8_quant import quantize_qkv_triton
    q, k, v = (torch.randn(batch, seqlen, heads, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    scale = d ** -0.5
    out = [("sdpa_cudnn_fwd", cudnn, True), ("ours_fwd", lambda: kernels.flash_attn_func(q, k, v, causal=causal), True),
           # the same dispatch without the torch.library custom op around it
           ("ours_fwd_no_custom_op", lambda: kernels.attention_forward(q, k, v, scale, causal), True)]
    gluon = gluon_kernels()
    if gluon is not None:
        out.append(("gluon_fwd_direct", lambda: gluon.attention_forward(q, k, v, None, causal), True))
    out.append(("triton_fwd_direct", lambda: attention_forward_triton(q, k, v, scale, causal), True))
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)
    qtg, ktg, vtg = (t.transpose(1, 2) for t in (qg, kg, vg))

    def cudnn_fwd_bwd():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(qtg, ktg, vtg, is_causal=causal)
        torch.autograd.grad(o, (qtg, ktg, vtg), dout.transpose(1, 2))

    def ours_fwd_bwd():
        torch.autograd.grad(kernels.flash_attn_func(qg, kg, vg, causal=causal), (qg, kg, vg), dout)

    def one_thread(fn):
        """fn with the autograd engine running the backward on the calling thread, not its CUDA device thread."""
        def wrapped():
            with torch.autograd.set_multithreading_enabled(False):
                fn()
        return wrapped

    o, lse = kernels.attention_forward(q, k, v, scale, causal)
    # The backward alone through autograd, as the paper tables time it (the forward's graph kept).
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o_cudnn = torch.nn.functional.scaled_dot_product_attention(qtg, ktg, vtg, is_causal=causal)
    o_ours = kernels.flash_attn_func(qg, kg, vg, causal=causal)
    out += [("sdpa_cudnn_bwd_retained",
             lambda: torch.autograd.grad(o_cudnn, (qtg, ktg, vtg), dout.transpose(1, 2), retain_graph=True), False),
            ("ours_bwd_retained", lambda: torch.autograd.grad(o_ours, (qg, kg, vg), dout, retain_graph=True), False),
            ("ours_bwd_retained_1thread",
             one_thread(lambda: torch.autograd.grad(o_ours, (qg, kg, vg), dout, retain_graph=True)), False)]
    out += [("sdpa_cudnn_fwd_bwd", cudnn_fwd_bwd, False), ("ours_fwd_bwd", ours_fwd_bwd, False),
            ("autograd_floor", lambda: torch.autograd.grad(_Identity.apply(qg), qg, dout), False),
            ("sdpa_cudnn_fwd_bwd_1thread", one_thread(cudnn_fwd_bwd), False),
            ("ours_fwd_bwd_1thread", one_thread(ours_fwd_bwd), False),
            ("ours_bwd_no_custom_op", lambda: kernels.attention_backward(dout, q, k, v, o, lse, scale, causal), True)]
    if d in (64, 128, 256):
        cfg = kernels.FP8Config()
        x = quantize_qkv_triton(q, k, v, cfg)
        out += [("fp8_prepass", lambda: quantize_qkv_triton(q, k, v, cfg), True),
                ("fp8_fwd_on_prepassed", lambda: kernels.fp8_attention_forward(x, None, causal), True),
                ("triton_fp8_fwd_direct", lambda: fp8_attention_forward_triton(x, scale, causal, q.dtype), True),
                ("fp8_fwd", lambda: kernels.flash_attn_fp8_func(q, k, v, causal=causal, config=cfg), True)]
        # The FP8 op's backward (the saved pre-pass outputs dequantized, the BF16 backward, dQ and dK rotated back):
        # through autograd as users call it, and its implementation called directly (graphable: its GPU time).
        fields = (cfg.block_m, cfg.block_n, cfg.hadamard, cfg.granularity, cfg.fmt, cfg.seed, x.v_key_order)
        o_fp8, lse_fp8, *saved = fp8_forward(q, k, v, scale, causal, *fields, False, "fp8_operands")
        out += [("fp8_fwd_bwd", lambda: torch.autograd.grad(
                    kernels.flash_attn_fp8_func(qg, kg, vg, causal=causal, config=cfg), (qg, kg, vg), dout), False),
                ("fp8_bwd_direct",
                 lambda: fp8_backward(dout, *saved, o_fp8, lse_fp8, scale, causal, *fields, False), True)]
    return out


def main():
    parser = argparse.ArgumentParser(prog="python -m experiments.host_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--profile", action="store_true", help="cProfile each path at the first shape asked for")
    parser.add_argument("--timeline", action="store_true", help="GPU kernels and idle gaps of each graphable path")
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES),
                        help=f"comma-separated shape names of {[s[0] for s in SHAPES + EXTRA_SHAPES]}")
    parser.add_argument("--paths", default=None, help="comma-separated path names to time (default: all)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    shapes = [shape for shape in SHAPES + EXTRA_SHAPES if shape[0] in args.shapes.split(",")]
    if args.profile:
        name, b, s, h, d, causal = shapes[0]
        with open(Path(args.out) / "host_profile.txt", "w") as f:
            for path, fn, _ in paths(b, s, h, d, causal):
                f.write(f"===== {name} {path} ({CALLS} calls)\n{profile(fn)}\n")
    rows = []
    for name, b, s, h, d, causal in shapes:
        for path, fn, graphable in paths(b, s, h, d, causal):
            if args.paths and path not in args.paths.split(","):
                continue
            row = dict(shape=name, path=path, host_us=host_us(fn),
                       bench_ms=triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
            if graphable:
                try:
                    row["graph_ms"] = graph_ms(fn)
                except Exception as e:  # a path that cannot be captured is reported, not fatal
                    row["graph_error"] = f"{type(e).__name__}: {e}"[:200]
            if args.timeline and graphable:
                try:
                    row["timeline"] = timeline(fn)
                except RuntimeError as e:  # e.g. a path whose kernels differ between calls
                    row["timeline_error"] = str(e)[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    (Path(args.out) / "host_overhead.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'shape':16} {'path':22} {'host us':>8} {'bench ms':>9} {'graph ms':>9} {'bench/graph':>11}")
    for r in rows:
        g = r.get("graph_ms", float("nan"))
        print(f"{r['shape']:16} {r['path']:22} {r['host_us']:8.0f} {r['bench_ms']:9.3f} {g:9.3f} "
              f"{r['bench_ms'] / g:11.2f}")
        for k in r.get("timeline", []):
            print(f"{'':39} {k['kernel'][:40]:40} {k['gpu_us']:8.1f} us, idle before {k['idle_before_us']:6.1f} us")


if __name__ == "__main__":
    main()
