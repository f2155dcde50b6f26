"""python -m experiments.sweep_summary MULTIRUN_DIR ... : which sweep settings train as well as BF16.

Reads every run under the given Hydra multirun directories (pass the BF16
baseline's multirun too, e.g. the bf16_vs_fp8 one, when the sweep has no BF16
arm). An arm is a job's swept overrides minus the seed (or --group-by config
keys); its seeds give mean ± std. The baseline is --baseline (an arm label or
parts of one, e.g. `attention=sdpa`), by default the first arm whose attention
is not FP8. A setting "trains within T% of BF16" when its mean final
validation loss is at most (1 + T/100) x the baseline's. Writes
OUT/sweep_summary.{md,csv,png}.
"""
import argparse
import math
import shlex
import sys
from pathlib import Path

from matplotlib.figure import Figure

from experiments import provenance, runs, summary, writers

FP8_NAME_PREFIX = "fp8"  # attention.name of the FP8 backends; anything else can be a BF16 baseline


def default_baseline(arms):
    for label, arm_runs in arms.items():
        if all(not str(runs.dotted(r.config, "attention.name") or "").startswith(FP8_NAME_PREFIX) for r in arm_runs):
            return label
    raise SystemExit("no BF16 arm among these runs: add the BF16 runs' directory or pass --baseline")


def within(stat, tolerance_pct):
    return not math.isnan(stat.gap_pct) and stat.gap_pct <= tolerance_pct


def plot(path, stats, baseline, tolerance_pct, prov):
    ordered = sorted(stats, key=lambda s: (math.isnan(s.final_mean), s.final_mean))
    figure = Figure(figsize=(10, 1.2 + 0.35 * len(ordered)), layout="constrained")
    ax = figure.subplots()
    base = next(s for s in stats if s.label == baseline)
    colors = ["#999999" if s.label == baseline else "#1b9e77" if within(s, tolerance_pct) else "#d95f02"
              for s in ordered]
    ax.barh(range(len(ordered)), [s.final_mean for s in ordered], xerr=[s.final_std for s in ordered],
            color=colors, edgecolor="black", linewidth=0.3, capsize=2)
    ax.set_yticks(range(len(ordered)), [s.label for s in ordered], fontsize=6)
    ax.invert_yaxis()
    ax.axvline(base.final_mean, color="black", linewidth=0.8, label=f"baseline {base.final_mean:.4f}")
    ax.axvline(base.final_mean * (1 + tolerance_pct / 100), color="black", linestyle="--", linewidth=0.8,
               label=f"baseline + {tolerance_pct:g}%")
    finite = [s.final_mean for s in ordered if not math.isnan(s.final_mean)]
    if finite:
        span = max(finite) - min(finite) or abs(base.final_mean) * 0.01
        ax.set_xlim(min(finite) - span, max(max(finite), base.final_mean * (1 + tolerance_pct / 100)) + span)
    ax.set_xlabel("final validation loss (mean ± std over seeds); green: within tolerance, grey: baseline")
    ax.legend(fontsize=7)
    writers.title_with_provenance(figure, "Sweep summary", prov)
    return writers.save_figure(figure, path)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.sweep_summary", description=__doc__.splitlines()[0])
    p.add_argument("multirun_dirs", nargs="+", help="Hydra multirun directories (or any directories holding runs)")
    p.add_argument("--baseline", help="the BF16 arm: its label or comma-separated parts of it")
    p.add_argument("--group-by", nargs="+", help="dotted config keys naming an arm instead of the overrides")
    p.add_argument("--tolerance", type=float, default=1.0, help="percent above BF16 that counts as within")
    p.add_argument("--out", default="outputs/sweep_summary", help="output directory (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = parse(argv)
    prov = provenance.collect(shlex.join(["python", "-m", "experiments.sweep_summary", *argv]))
    try:
        all_runs = [runs.load_run(d) for d in runs.find_runs(opts.multirun_dirs)]
    except FileNotFoundError as err:
        raise SystemExit(f"python -m experiments.sweep_summary: error: {err}")
    label_of = (lambda r: runs.group_label(r, opts.group_by)) if opts.group_by else runs.override_label
    arms = runs.group(all_runs, label_of)
    baseline = summary.pick_baseline(list(arms), opts.baseline) if opts.baseline else default_baseline(arms)
    stats = summary.summarize(arms, baseline)
    stats.sort(key=lambda s: (s.label != baseline, math.isnan(s.final_mean), s.final_mean))
    settings = [s for s in stats if s.label != baseline]
    good = [s.label for s in settings if within(s, opts.tolerance)]
    bad = [s.label for s in settings if not within(s, opts.tolerance)]
    verdict = (f"**Within {opts.tolerance:g}% of the baseline** (mean final val loss ≤ "
               f"{1 + opts.tolerance / 100:g} × baseline): {', '.join(f'`{g}`' for g in good) or 'none'}.\n\n"
               f"**Not within {opts.tolerance:g}%**: {', '.join(f'`{b}`' for b in bad) or 'none'}.")
    header, body = summary.markdown_rows(stats)
    header.append(f"within {opts.tolerance:g}%")
    for row, s in zip(body, stats):
        row.append("baseline" if s.label == baseline else "yes" if within(s, opts.tolerance) else "no")
    notes = [f"Baseline arm: `{baseline}`. {len(all_runs)} runs in {len(arms)} arms from "
             + ", ".join(f"`{d}`" for d in opts.multirun_dirs) + ".", summary.DEFINITIONS, verdict]
    # Arms are named by overrides, which leave the preset out: runs of two presets can share an arm. Said, not
    # refused (experiments.compare refuses), since a sweep over presets may mean it; its ± is then not seeds'.
    for label, arm_runs in arms.items():
        differing = runs.config_differences(arm_runs)
        if differing:
            warning = (f"arm `{label}` mixes runs that differ in {', '.join(differing[:6])}"
                       f"{' and more' if len(differing) > 6 else ''}, not only in trainer.seed: its ± is not a "
                       "spread over seeds (split it with --group-by)")
            print(f"warning: {warning}", file=sys.stderr)
            notes.append(f"**Warning**: {warning}.")
    md = writers.preamble("Sweep summary", prov, notes) + "\n" + writers.markdown_table(header, body) + "\n"
    md += "\n![final validation loss per setting](sweep_summary.png)\n"
    rows = [dict(summary.as_row(s), within=(s.label != baseline and within(s, opts.tolerance))) for s in stats]
    out = Path(opts.out)
    paths = [writers.write_csv(out / "sweep_summary.csv", rows, summary.TABLE_COLUMNS + ("within",), prov),
             writers.write_text(out / "sweep_summary.md", md),
             plot(out / "sweep_summary.png", stats, baseline, opts.tolerance, prov)]
    for p in paths:
        print(f"wrote {p}")
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
