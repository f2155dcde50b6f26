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
import shutil
import subprocess
import sys
import time
from pathlib import Path

from experiments.paper import candidates

ROOT = Path(__file__).resolve().parents[1]
TOKENS, HIDDEN = 16384, 2048
SECTIONS = ("SpeedOfLight", "ComputeWorkloadAnalysis", "WarpStateStats", "SchedulerStats", "SourceCounters",
            "InstructionStats", "Occupancy", "LaunchStats", "MemoryWorkloadAnalysis")
# (name, head dim, seqlen, pass, experiments.paper.candidates column, causal): the forward at the lengths where its
# bars are missed, and at hd64 where FA3 leads it; FA3's kernels beside ours where an FA3 wheel is installed
# (experiments/fa3_wheel.sh).
TARGETS = {
    "gluon_fwd_hd128_16k": (128, 16384, "fwd", "ours-gluon", False),
    "cudnn_fwd_hd128_16k": (128, 16384, "fwd", "sdpa-cudnn", False),
    "fa3_fwd_hd128_16k": (128, 16384, "fwd", "fa3", False),
    "gluon_fp8_hd128_4k": (128, 4096, "fwd", "ours-fp8-gluon", False),
    "triton_fp8_hd128_4k": (128, 4096, "fwd", "ours-fp8-triton", False),
    "gluon_fp8kernel_hd128_16k": (128, 16384, "fwd", "ours-fp8-kernel", False),
    "fp8op_hd256_16k": (256, 16384, "fwd", "ours-fp8-gluon", False),  # the pre-pass and the forward it feeds
    "fa3_fp8_hd128_16k": (128, 16384, "fwd", "fa3-fp8", False),
    "triton_fwd_hd128_8k": (128, 8192, "fwd", "ours-triton", False),
    "gluon_fwd_hd256_16k": (256, 16384, "fwd", "ours-gluon", False),
    "cudnn_fwd_hd256_16k": (256, 16384, "fwd", "sdpa-cudnn", False),
    "fa3_fwd_hd256_16k": (256, 16384, "fwd", "fa3", False),
    "gluon_bwd_hd128_8k": (128, 8192, "bwd", "ours-gluon", False),
    "cudnn_bwd_hd128_8k": (128, 8192, "bwd", "sdpa-cudnn", False),
    "gluon_bwd_hd64_8k": (64, 8192, "bwd", "ours-gluon", False),
    "cudnn_bwd_hd64_8k": (64, 8192, "bwd", "sdpa-cudnn", False),
    "triton_bwd_hd128_8k": (128, 8192, "bwd", "ours-triton", False),
    "gluon_bwd_hd256_8k": (256, 8192, "bwd", "ours-gluon", False),
    "cudnn_bwd_hd256_8k": (256, 8192, "bwd", "sdpa-cudnn", False),
    "gluon_fwd_hd64_8k": (64, 8192, "fwd", "ours-gluon", False),
    "fa3_fwd_hd64_8k": (64, 8192, "fwd", "fa3", False),
    "gluon_fwd_hd64_causal_16k": (64, 16384, "fwd", "ours-gluon", True),
    "fa3_fwd_hd64_causal_16k": (64, 16384, "fwd", "fa3", True),
}
# The child: build inputs and the candidate's call (its environment set by the parent), warm up, profile one call.
CHILD = """
import sys, torch
from experiments.paper import candidates
from experiments.paper.runner import Problem
d, s, what, name, causal = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
problem = Problem({tokens} // s, s, {hidden} // d, d, causal=causal)
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


def source_tables(sass_csv: str):
    """(header, rows) of each kernel's table in the source page's CSV, in launch order."""
    header, body = None, []
    for r in csv.reader(io.StringIO(sass_csv)):
        if "Source" in r and any(c.startswith("Warp Stall Sampling") for c in r):
            if header is not None:
                yield header, body
            header, body = r, []
        elif header is not None and len(r) == len(header):
            body.append(r)
    if header is not None:
        yield header, body


def top_stalls(sass_csv: str, top=30):
    """Per kernel in the source page's CSV: the SASS instructions with the most sampled warp stalls, each with
    its share of the kernel's samples."""
    lines = []
    for header, body in source_tables(sass_csv):
        lines.append("-- kernel")
        col = next((i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All")), None)
        if col is None:
            lines.append(f"(no stall column in {header[:8]})")
            continue
        total = sum(num(r[col]) for r in body) or 1.0
        src = header.index("Source")
        for r in sorted(body, key=lambda r: -num(r[col]))[:top]:
            lines.append(f"{100 * num(r[col]) / total:5.1f}%  {r[src]}")
    return lines or ["(no source table)"]


def opcodes(header, body):
    """{opcode: [warp instructions executed, share of sampled stalls]} of one kernel's table (predicates and
    modifiers dropped: `@!P0 SYNCS.ARRIVE.TRANS64` counts as SYNCS)."""
    src, ex = header.index("Source"), header.index("Instructions Executed")
    stall = next(i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All"))
    counts, total = {}, sum(num(r[stall]) for r in body) or 1.0
    for r in body:
        words = [w for w in r[src].split() if not w.startswith("@")]
        if words:
            entry = counts.setdefault(words[0].split(".")[0], [0.0, 0.0])
            entry[0] += num(r[ex])
            entry[1] += num(r[stall]) / total
    return counts


def compare_opcodes(name_a: str, csv_a: str, name_b: str, csv_b: str, min_share=0.004):
    """Lines comparing the instruction mix of the busiest kernel of two profiles (executed warp instructions by
    opcode, millions, and each opcode's share of stall samples), largest excess of b over a first."""
    def busiest(text):
        tables = list(source_tables(text))
        if not tables:
            raise ValueError("no source table in the profile")
        return opcodes(*max(tables, key=lambda t: sum(num(r[t[0].index("Instructions Executed")]) for r in t[1])))
    a, b = busiest(csv_a), busiest(csv_b)
    total_a, total_b = sum(v[0] for v in a.values()), sum(v[0] for v in b.values())
    zero = [0.0, 0.0]
    lines = [f"{'opcode':10} {name_a[:24]:>24} {name_b[:24]:>24} {'b - a':>8}   stalls a / b"]
    for op in sorted(set(a) | set(b), key=lambda o: a.get(o, zero)[0] - b.get(o, zero)[0]):
        ea, eb = a.get(op, zero), b.get(op, zero)
        if max(ea[0], eb[0]) >= min_share * total_b:
            lines.append(f"{op:10} {ea[0] / 1e6:24.1f} {eb[0] / 1e6:24.1f} {(eb[0] - ea[0]) / 1e6:8.1f}   "
                         f"{100 * ea[1]:5.1f}% / {100 * eb[1]:5.1f}%")
    lines.append(f"{'total':10} {total_a / 1e6:24.1f} {total_b / 1e6:24.1f} {(total_b - total_a) / 1e6:8.1f}")
    return lines


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.profile_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/ncu")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of: {', '.join(TARGETS)}")
    p.add_argument("--timeout", type=int, default=150, help="seconds per target")
    p.add_argument("--budget", type=int, default=0, help="start no target after this many seconds (0: no limit)")
    p.add_argument("--compare", default="", help="A:B,... pairs of targets whose instruction mixes opcodes.txt "
                   "sets side by side (profiled now or earlier into --out); with --targets '' only the comparison")
    args = p.parse_args(argv)
    if args.targets and shutil.which("ncu") is None:  # --targets '' only compares earlier profiles
        raise SystemExit(f"{p.prog}: error: Nsight Compute's `ncu` is not on PATH (it comes with the CUDA toolkit)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    child = CHILD.format(tokens=TOKENS, hidden=HIDDEN)
    summary = []
    with open(out / "ncu_log.txt", "w") as log:
        start = time.time()
        for name in filter(None, args.targets.split(",")):
            if args.budget and time.time() - start > args.budget:
                summary.append(f"== {name}: not run (budget of {args.budget} s spent)")
                continue
            d, s, what, column, causal = TARGETS[name]
            env = [f"{key}={value}" for key, value in candidates.by_name(column).env]
            rep = out / name
            cmd = ["env", *env, "ncu", "--clock-control", "none", "--profile-from-start", "off", "-f", "-o",
                   str(rep), *[a for sec in SECTIONS for a in ("--section", sec)],
                   sys.executable, "-c", child, str(d), str(s), what, column, str(int(causal))]
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
        if summary:
            (out / "summary.txt").write_text("\n".join(summary) + "\n")
    comparisons = []
    for pair in filter(None, args.compare.split(",")):
        a, b = pair.split(":")
        comparisons += [f"== {a} vs {b}"] + compare_opcodes(a, (out / f"{a}_sass.csv").read_text(),
                                                           b, (out / f"{b}_sass.csv").read_text())
    if comparisons:
        (out / "opcodes.txt").write_text("\n".join(comparisons) + "\n")
        print("\n".join(comparisons), flush=True)


if __name__ == "__main__":
    main()
