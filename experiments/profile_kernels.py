"""Nsight Compute on our attention kernels, cuDNN SDPA's and FA3's at the paper's shapes (one GPU call).

    PYTHONUNBUFFERED=1 python -m experiments.profile_kernels --out $OUT/ncu [--targets NAME,...]

Each target runs in its own `ncu --clock-control none --profile-from-start off`
child: inputs of 16k tokens x hidden 2048, three warm-up calls, then one call
between cudaProfilerStart/Stop, so every kernel that call launches is
profiled and nothing else. Per target the report (`NAME.ncu-rep`), its
details page (`NAME.txt`: speed of light, pipe utilization, warp states,
scheduler and instruction statistics) and its SASS with the sampled warp
stalls of every instruction (`NAME_sass.csv`); `summary.txt` holds the
headline figures of every kernel side by side. Clocks are left alone (the
H200 sits at its power cap under these loads, METHOD.md), so durations move
by a few percent between runs; the ratios within one kernel are the point.
"""
import argparse
import csv
import io
import subprocess
import sys
import time
from pathlib import Path

from experiments.paper import candidates

ROOT = Path(__file__).resolve().parents[1]
TOKENS, HIDDEN = 16384, 2048
SECTIONS = ("SpeedOfLight", "ComputeWorkloadAnalysis", "WarpStateStats", "SchedulerStats", "SourceCounters",
            "InstructionStats", "Occupancy", "LaunchStats", "MemoryWorkloadAnalysis")
# (name, head dim, seqlen, pass, experiments.paper.candidates column): the forward at the lengths where its bars
# are missed; FA3's kernels beside ours where an FA3 wheel is installed (experiments/fa3_wheel.sh).
TARGETS = {
    "gluon_fwd_hd128_16k": (128, 16384, "fwd", "ours-gluon"),
    "cudnn_fwd_hd128_16k": (128, 16384, "fwd", "sdpa-cudnn"),
    "fa3_fwd_hd128_16k": (128, 16384, "fwd", "fa3"),
    "gluon_fp8_hd128_4k": (128, 4096, "fwd", "ours-fp8-gluon"),
    "triton_fp8_hd128_4k": (128, 4096, "fwd", "ours-fp8-triton"),
    "gluon_fp8kernel_hd128_16k": (128, 16384, "fwd", "ours-fp8-kernel"),
    "fa3_fp8_hd128_16k": (128, 16384, "fwd", "fa3-fp8"),
    "triton_fwd_hd128_8k": (128, 8192, "fwd", "ours-triton"),
    "gluon_fwd_hd256_16k": (256, 16384, "fwd", "ours-gluon"),
    "cudnn_fwd_hd256_16k": (256, 16384, "fwd", "sdpa-cudnn"),
    "fa3_fwd_hd256_16k": (256, 16384, "fwd", "fa3"),
    "gluon_bwd_hd128_8k": (128, 8192, "bwd", "ours-gluon"),
    "cudnn_bwd_hd128_8k": (128, 8192, "bwd", "sdpa-cudnn"),
    "triton_bwd_hd128_8k": (128, 8192, "bwd", "ours-triton"),
}
# The child: build inputs and the candidate's call (its environment set by the parent), warm up, profile one call.
CHILD = """
import sys, torch
from experiments.paper import candidates
from experiments.paper.runner import Problem
d, s, what, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
problem = Problem({tokens} // s, s, {hidden} // d, d, causal=False)
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(problem.batch, s, problem.nheads, d, device="cuda", dtype=torch.bfloat16, generator=gen,
                       requires_grad=what == "bwd") for _ in range(3))
call = candidates.by_name(name).build(problem, q, k, v)
if what == "bwd":
    out = call()
    grad = torch.randn_like(out)
    def call():
        return torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
for _ in range(3):
    call()
torch.cuda.synchronize()
torch.cuda.profiler.start()
call()
torch.cuda.synchronize()
torch.cuda.profiler.stop()
"""
# Details-page rows copied into summary.txt.
HEADLINES = ("Duration", "Compute (SM) Throughput", "Memory Throughput", "Registers Per Thread",
             "Issue Slots Busy", "Issued Ipc Active", "No Eligible", "Warp Cycles Per Issued Instruction",
             "Avg. Active Threads Per Warp", "Achieved Occupancy", "Dynamic Shared Memory Per Block")


def run(cmd, log, timeout):
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text, rc = f"timeout after {timeout} s: {err.stdout or ''}{err.stderr or ''}", -1
    log.write(f"$ {' '.join(cmd[:12])} ... rc={rc} {time.time() - t0:.0f} s\n{text[-4000:]}\n")
    log.flush()
    return text, rc


def top_stalls(sass_csv: str, top=30):
    """Per kernel in the source page's CSV: the SASS instructions with the most sampled warp stalls, each with
    its share of the kernel's samples."""
    rows = list(csv.reader(io.StringIO(sass_csv)))
    lines, header, body = [], None, []

    def flush():
        if header is None or not body:
            return
        col = next((i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All")), None)
        if col is None:
            lines.append(f"(no stall column in {header[:8]})")
            return
        total = sum(num(r[col]) for r in body) or 1.0
        src = header.index("Source") if "Source" in header else 0
        for r in sorted(body, key=lambda r: -num(r[col]))[:top]:
            lines.append(f"{100 * num(r[col]) / total:5.1f}%  {r[src]}")

    for r in rows:
        if "Source" in r and any(c.startswith("Warp Stall Sampling") for c in r):
            flush()
            header, body = r, []
            lines.append("-- kernel")
        elif header is not None and len(r) == len(header):
            body.append(r)
    flush()
    return lines or ["(no source table)"]


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/ncu")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of: {', '.join(TARGETS)}")
    p.add_argument("--timeout", type=int, default=150, help="seconds per target")
    p.add_argument("--budget", type=int, default=0, help="start no target after this many seconds (0: no limit)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    child = CHILD.format(tokens=TOKENS, hidden=HIDDEN)
    summary = []
    with open(out / "ncu_log.txt", "w") as log:
        start = time.time()
        for name in args.targets.split(","):
            if args.budget and time.time() - start > args.budget:
                summary.append(f"== {name}: not run (budget of {args.budget} s spent)")
                continue
            d, s, what, column = TARGETS[name]
            env = [f"{key}={value}" for key, value in candidates.by_name(column).env]
            rep = out / name
            cmd = ["env", *env, "ncu", "--clock-control", "none", "--profile-from-start", "off", "-f", "-o",
                   str(rep), *[a for sec in SECTIONS for a in ("--section", sec)],
                   sys.executable, "-c", child, str(d), str(s), what, column]
            text, rc = run(cmd, log, args.timeout)
            print(f"== {name}: rc {rc}", flush=True)
            if not rep.with_suffix(".ncu-rep").exists():
                summary.append(f"== {name}: no report (rc {rc}): {text[-300:]}")
                continue
            details, _ = run(["ncu", "-i", str(rep.with_suffix(".ncu-rep")), "--page", "details",
                              "--print-details", "all"], log, 120)
            (out / f"{name}.txt").write_text(details)
            sass, _ = run(["ncu", "-i", str(rep.with_suffix(".ncu-rep")), "--page", "source", "--csv",
                           "--print-source", "sass"], log, 120)
            (out / f"{name}_sass.csv").write_text(sass)
            summary.append(f"== {name}")
            summary += [ln.rstrip() for ln in details.splitlines()
                        if "Context" in ln and "Device" in ln or any(key in ln for key in HEADLINES)]
            summary += top_stalls(sass)
            (out / "summary.txt").write_text("\n".join(summary) + "\n")
            print("\n".join(summary[-45:]), flush=True)
        (out / "summary.txt").write_text("\n".join(summary) + "\n")


if __name__ == "__main__":
    main()
