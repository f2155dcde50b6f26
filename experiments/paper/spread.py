"""python -m experiments.paper.spread RUN_A RUN_B [--threshold 0.08] [--out FILE]: how far two paper-table runs differ.

RUN_A and RUN_B are `python -m experiments.paper all --out DIR` directories of the same code (or of two
commits). For the throughput tables (fwd, bwd, fp8, ablation) every cell both runs timed (`status` ok)
is matched on figure, shape, mask and implementation; the report gives, per table and implementation, the
median and largest relative change of TFLOPs/s from A to B, then every cell that moved by more than
--threshold. Rerunning the same code measures the tables' run-to-run spread: a change between two commits
smaller than it is noise.
"""
import argparse
import csv
import statistics
import sys
from pathlib import Path

from experiments.paper.runner import ROW_COLUMNS

TABLES = ("fwd", "bwd", "fp8", "ablation")
CELL = ROW_COLUMNS[:ROW_COLUMNS.index("impl") + 1]  # what a throughput row measures: figure, shape, mask, impl


def load(run: Path) -> dict:
    """{cell key: TFLOPs/s} of the timed cells of a run directory (tables it lacks are skipped)."""
    cells = {}
    for table in TABLES:
        path = run / table / f"{table}.csv"
        if not path.is_file():
            continue
        with path.open() as f:
            for row in csv.DictReader(f):
                if row["status"] == "ok" and row["tflops"]:
                    cells[tuple(row[c] for c in CELL)] = float(row["tflops"])
    return cells


def changes(a: dict, b: dict) -> dict:
    """{cell key: B / A - 1} over the cells both runs timed."""
    return {key: b[key] / a[key] - 1 for key in sorted(a.keys() & b.keys()) if a[key] > 0}


def report(run_a: Path, run_b: Path, threshold: float) -> str:
    a, b = load(run_a), load(run_b)
    moved = changes(a, b)
    if not moved:
        raise SystemExit(f"no timed cell in common between {run_a} and {run_b}")
    lines = ["# Spread between paper-table runs", "", f"- A: `{run_a}`", f"- B: `{run_b}`",
             f"- cells timed in both: {len(moved)} (A only: {len(a.keys() - b.keys())}, "
             f"B only: {len(b.keys() - a.keys())})", "",
             "| table | impl | cells | median abs change | max abs change | mean change |", "|---|---|---|---|---|---|"]
    groups = {}
    for key, d in moved.items():
        groups.setdefault((key[0], key[-1]), []).append(d)
    for (table, impl), ds in sorted(groups.items()):
        size = [abs(d) for d in ds]
        lines.append(f"| {table} | {impl} | {len(ds)} | {statistics.median(size):.1%} | {max(size):.1%} | "
                     f"{statistics.mean(ds):+.1%} |")
    lines += ["", f"## Cells that moved by more than {threshold:.0%}", ""]
    big = [(key, d) for key, d in moved.items() if abs(d) > threshold]
    if big:
        lines += ["| table | impl | head dim | causal | seqlen | A | B | change |", "|---|---|---|---|---|---|---|---|"]
        for key, d in sorted(big, key=lambda kd: kd[1]):
            cell = dict(zip(CELL, key))
            lines.append(f"| {cell['figure']} | {cell['impl']} | {cell['headdim']} | {cell['causal']} | "
                         f"{cell['seqlen']} | {a[key]:.0f} | {b[key]:.0f} | {d:+.0%} |")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.paper.spread", description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--threshold", type=float, default=0.08, help="list cells that moved by more (default: 0.08)")
    p.add_argument("--out", type=Path, help="also write the report there")
    args = p.parse_args(argv)
    text = report(args.run_a, args.run_b, args.threshold)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
