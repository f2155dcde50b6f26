"""Sustained throughput, SM clock, power and energy per FLOP of the forwards, ours against cuDNN SDPA's (one GPU call).

    PYTHONUNBUFFERED=1 python -m experiments.power --out $OUT/power [--seconds 3] [--rounds 2]

Why: under these loads the H200 runs at its power cap and lowers its SM clock
(docs/tuning-gluon.md, entry 22), so a kernel that needs more energy per FLOP
runs at a lower clock than its peer in the same table, whatever it does per
cycle. Nsight Compute (experiments/profile_kernels.py) compares cycles; this
compares joules. For every shape and path: `seconds` of back-to-back calls
(no L2 flush, nothing else on the GPU), timed by CUDA events, with the
board's energy counter read before and after (NVML, millijoules) and the SM
clock and power sampled every 10 ms meanwhile; then do_bench's median, as the
tables take it. Paths take turns within a round, the order reversed in odd
rounds, so that neither always follows the other's heat.
Writes <out>/power.json and prints TFLOP/s, mean MHz, mean W, TFLOP/s per GHz
(work per cycle) and GFLOP/J (work per energy).
"""
import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch
import triton

from experiments.paper import candidates
from experiments.paper.candidates import environment
from experiments.paper.runner import Problem

# (name, batch, seqlen, heads, head dim): the paper's 16k tokens x hidden 2048 where the bars are measured.
SHAPES = [("hd128_16k", 1, 16384, 16, 128), ("hd256_16k", 1, 16384, 8, 256), ("hd128_4k", 4, 4096, 16, 128)]
# Path name -> experiments.paper.candidates column; each runs under its candidate's environment (KERNELS_IMPL).
PATHS = {"gluon": "ours-gluon", "cudnn": "sdpa-cudnn", "triton": "ours-triton", "fp8": "ours-fp8",
         "fp8kernel": "ours-fp8-kernel", "fa3": "fa3", "fa3fp8": "fa3-fp8"}
DEFAULT_PATHS = ("gluon", "cudnn", "triton", "fp8")


class Sampler(threading.Thread):
    """SM clock (MHz) and board power (W) every `period` seconds until stopped."""

    def __init__(self, nvml, handle, period=0.01):
        super().__init__(daemon=True)
        self.nvml, self.handle, self.period, self.samples, self.running = nvml, handle, period, [], True

    def run(self):
        while self.running:
            self.samples.append((self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM),
                                 self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000))
            time.sleep(self.period)


def sustained(call, flops, nvml, handle, seconds):
    """Back-to-back calls for about `seconds`: TFLOP/s, mean SM MHz, mean W, joules per call."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    batch = max(1, int(0.05 / ((time.perf_counter() - t) / 3)))  # calls in ~50 ms
    sampler = Sampler(nvml, handle)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    energy0 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    sampler.start()
    start.record()
    calls, t0, pending = 0, time.perf_counter(), None
    while time.perf_counter() - t0 < seconds:
        for _ in range(batch):
            call()
        calls += batch
        done = torch.cuda.Event()
        done.record()
        if pending is not None:  # at most two batches queued: the GPU never idles, the window ends with the work
            pending.synchronize()
        pending = done
    end.record()
    end.synchronize()
    energy1 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    sampler.running = False
    sampler.join()
    ms = start.elapsed_time(end)
    mhz = statistics.mean(s[0] for s in sampler.samples)
    watts = statistics.mean(s[1] for s in sampler.samples)
    return dict(calls=calls, tflops=flops * calls / ms * 1e-9, mhz=mhz, watts=watts,
                joules_per_call=(energy1 - energy0) / 1000 / calls)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.power", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/power")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(f"{p.prog}: error: needs a CUDA GPU")
    try:
        import pynvml  # nvidia-ml-py: on GPU machines only
    except ModuleNotFoundError:
        raise SystemExit(f"{p.prog}: error: needs NVML's Python bindings: pip install nvidia-ml-py")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"power limit {pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000:.0f} W "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    rows = []
    for name, b, s, h, d in [x for x in SHAPES if x[0] in args.shapes.split(",")]:
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        problem = Problem(b, s, h, d, causal=False)
        flops = problem.flops("fwd")
        calls = {}  # path -> (its candidate's environment, the call)
        for path in args.paths.split(","):  # build and compile everything before the first window
            cand = candidates.by_name(PATHS[path])
            try:
                with environment(dict(cand.env)):
                    call = cand.build(problem, q, k, v)
                    call()
                calls[path] = (dict(cand.env), call)
            except candidates.Unavailable as err:
                print(f"{name} {path}: skipped ({err})", flush=True)
        paths = list(calls)
        for r in range(args.rounds):
            for path in (paths if r % 2 == 0 else paths[::-1]):
                env, call = calls[path]
                with environment(env):
                    row = dict(shape=name, path=path, round=r, **sustained(call, flops, pynvml, handle, args.seconds))
                    row["bench_tflops"] = flops / triton.testing.do_bench(call, return_mode="median") * 1e-9
                row["tflops_per_ghz"] = row["tflops"] / (row["mhz"] / 1000)
                row["gflop_per_joule"] = flops / row["joules_per_call"] * 1e-9
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "power.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'shape':10} {'path':9} {'rnd':>3} {'TFLOP/s':>8} {'bench':>7} {'MHz':>6} {'W':>5} {'TF/GHz':>7} "
          f"{'GFLOP/J':>8}")
    for r in rows:
        print(f"{r['shape']:10} {r['path']:9} {r['round']:3d} {r['tflops']:8.1f} {r['bench_tflops']:7.1f} "
              f"{r['mhz']:6.0f} {r['watts']:5.0f} {r['tflops_per_ghz']:7.1f} {r['gflop_per_joule']:8.1f}")


if __name__ == "__main__":
    main()
