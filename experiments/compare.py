"""python -m experiments.compare RUN_DIR ... : overlaid loss curves and a gap table for training runs.

Each RUN_DIR is a run directory (with metrics.jsonl) or a directory holding
several (a Hydra multirun). Runs are grouped into arms -- by --labels (one per
RUN_DIR), by --group-by config keys, or by default by the attention backend and
its options -- and the seeds of an arm are shown as mean ± std. The runs of
an arm must differ only in trainer.seed (an lr or model sweep is refused:
split it with --group-by, or use experiments.sweep_summary). Gaps are
relative to the first arm, or to --baseline. Writes OUT/compare.png (with a
third panel, the attention error against float64 over training, where runs
measured it: trainer.attn_error_sequences), OUT/summary.md and
OUT/summary.csv. Definitions: experiments.summary.
"""
import argparse
import shlex
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

from experiments import provenance, runs, summary, writers

PROG = "python -m experiments.compare"
COLORS = ("#1f78b4", "#e66101", "#33a02c", "#7b3294", "#b2182b", "#666666", "#a6761d", "#1b9e77")


def smooth(values, window):
    """Trailing moving average over `window` points (1: unchanged)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _x(rows, axis, step_to_tokens):
    if axis == "step":
        return [r["step"] for r in rows]
    return [r.get("tokens", step_to_tokens.get(r["step"])) for r in rows]


def mean_band(curves):
    """Mean and std across runs at the x values all runs share: (xs, means, stds)."""
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    means = [statistics.fmean(c[x] for c in curves) for x in shared]
    stds = [statistics.stdev(c[x] for c in curves) if len(curves) > 1 else 0.0 for x in shared]
    return shared, means, stds


ERROR_KEY = "attn_rel_rmse_max"  # fp8train.numerics, at evaluations of runs with trainer.attn_error_sequences


def plot(path, arms, opts, prov):
    """Train and validation loss, and where runs measured it, their attention error against float64."""
    errors = any(ERROR_KEY in r for arm_runs in arms.values() for run in arm_runs for r in run.val)
    figure = Figure(figsize=(18 if errors else 12, 4.5), layout="constrained")
    axes = figure.subplots(1, 3 if errors else 2)
    train_ax, val_ax = axes[:2]
    panels = [(train_ax, "loss", lambda r: r.train, opts.smooth), (val_ax, "val_loss", lambda r: r.val, 1)]
    if errors:
        panels.append((axes[2], ERROR_KEY, lambda r: [row for row in r.val if ERROR_KEY in row], 1))
    for i, (label, arm_runs) in enumerate(arms.items()):
        color = COLORS[i % len(COLORS)]
        for ax, key, rows_of, window in panels:
            curves = []
            for run in arm_runs:
                rows = rows_of(run)
                if rows:
                    tokens = {r["step"]: r.get("tokens") for r in run.train}
                    curves.append(dict(zip(_x(rows, opts.x, tokens), smooth([r[key] for r in rows], window))))
            if not curves:
                continue
            xs, means, stds = mean_band(curves)
            ax.plot(xs, means, color=color, label=f"{label} (n={len(curves)})", linewidth=1.2)
            if len(curves) > 1:
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.2, linewidth=0)
    labels = [(f"train loss (moving average over {opts.smooth} logs)", "loss"), ("validation loss", "loss"),
              ("attention error vs float64, worst layer", "||out - exact|| / ||exact||")]
    for ax, (name, ylabel) in zip(axes, labels):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tokens" if opts.x == "tokens" else "step")
        ax.set_ylabel(ylabel)
        if opts.logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    if errors:
        axes[2].set_yscale("log")
    if train_ax.get_lines() or val_ax.get_lines():
        # One legend under both panels: arm labels (backend + options) are too long for an axes.
        ax = train_ax if train_ax.get_lines() else val_ax
        figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncols=1)
    writers.title_with_provenance(figure, "Training runs: mean ± std over seeds", prov)
    return writers.save_figure(figure, path)


def check_seeds_only(arms, opts):
    """Refuse an arm whose runs differ in more than the seed: its mean ± std would not be a spread over seeds."""
    for label, arm_runs in arms.items():
        differing = runs.config_differences(arm_runs)
        if differing:
            shown = ", ".join(differing[:6]) + (f" and {len(differing) - 6} more" if len(differing) > 6 else "")
            example = " ".join([*(opts.group_by or ["attention.name"]), *differing[:2]])
            raise SystemExit(f"{PROG}: error: the runs of arm `{label}` differ in {shown}, not only in trainer.seed. "
                             f"Split the arms by those keys (e.g. --group-by {example}), or summarize a sweep "
                             "with python -m experiments.sweep_summary.")


def label_runs(paths, opts):
    """(run, label) pairs for the given RUN_DIRs."""
    if opts.labels and len(opts.labels) != len(paths):
        raise SystemExit(f"--labels needs one label per RUN_DIR ({len(paths)}), got {len(opts.labels)}")
    labelled = []
    for i, root in enumerate(paths):
        for run_dir in runs.find_runs([root]):
            run = runs.load_run(run_dir)
            if opts.labels:
                label = opts.labels[i]
            elif opts.group_by:
                label = runs.group_label(run, opts.group_by)
            else:
                label = runs.attention_label(run)
            labelled.append((run, label))
    return labelled


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", help="run directories, or directories holding runs")
    p.add_argument("--labels", nargs="+", help="one arm label per RUN_DIR (same label: seeds of one arm)")
    p.add_argument("--group-by", nargs="+", help="dotted config keys naming an arm, e.g. attention.name")
    p.add_argument("--baseline", help="arm the gaps are measured against (default: the first arm)")
    p.add_argument("--out", default="outputs/compare", help="output directory (default: %(default)s)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window for the train loss (logs)")
    p.add_argument("--x", choices=("step", "tokens"), default="step", help="x axis (default: %(default)s)")
    opts = p.parse_args(argv)
    if opts.smooth < 1:
        p.error("--smooth must be >= 1")
    return opts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = parse(argv)
    prov = provenance.collect(shlex.join(["python", "-m", "experiments.compare", *argv]))
    try:
        labelled = label_runs(opts.run_dirs, opts)
    except FileNotFoundError as err:
        raise SystemExit(f"{PROG}: error: {err}")
    arms = {}
    for run, label in labelled:
        arms.setdefault(label, []).append(run)
    check_seeds_only(arms, opts)
    baseline = summary.pick_baseline(list(arms), opts.baseline) if opts.baseline else next(iter(arms))
    stats = summary.summarize(arms, baseline)
    out = Path(opts.out)
    rows = [summary.as_row(s) for s in stats]
    header, body = summary.markdown_rows(stats)
    notes = [f"Baseline arm: `{baseline}`. Runs: " + ", ".join(f"`{r.path}` ({label})" for r, label in labelled),
             summary.DEFINITIONS]
    md = writers.preamble("Run comparison", prov, notes) + "\n" + writers.markdown_table(header, body) + "\n"
    md += "\n![loss curves](compare.png)\n"
    paths = [writers.write_csv(out / "summary.csv", rows, summary.TABLE_COLUMNS, prov),
             writers.write_text(out / "summary.md", md), plot(out / "compare.png", arms, opts, prov)]
    for p in paths:
        print(f"wrote {p}")
    print(writers.markdown_table(header, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
