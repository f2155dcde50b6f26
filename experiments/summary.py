"""Per-arm statistics of training runs against a baseline arm (shared by compare and sweep_summary).

DEFINITIONS says what each number is; every summary's markdown carries it.
"""
import math
import statistics
from dataclasses import dataclass

DEFINITIONS = (
    "Definitions (validation losses): *final* = a run's last evaluation, *best* = its lowest; "
    "*tokens/s* = median of a run's logged tokens_per_s; mean ± std over the runs (seeds) of an arm "
    "(sample std); *gap* = 100 × (arm mean final − baseline mean final) / baseline mean final, > 0 is worse; "
    "*largest gap* = the gap between the seed-averaged validation curves at the evaluated step where it is "
    "largest in magnitude; *speedup* = arm mean tokens/s / baseline mean tokens/s; *attention error* (runs with "
    "trainer.attn_error_sequences) = at a run's last evaluation, the largest over layers of "
    "||attention - float64 attention|| / ||float64 attention|| on the layer's own q, k, v."
)


@dataclass
class ArmStats:
    label: str
    runs: int
    final_mean: float
    final_std: float
    best_mean: float
    best_std: float
    tokens_per_s_mean: float
    tokens_per_s_std: float
    steps: int                      # last logged step (largest over the arm's runs)
    gap_pct: float = math.nan
    max_gap_pct: float = math.nan
    max_gap_step: int = None
    speedup: float = math.nan
    attn_error_mean: float = math.nan
    attn_error_std: float = math.nan


def mean_std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def val_curve(runs):
    """Seed-averaged validation loss at the steps every run of the arm evaluated: {step: mean}."""
    per_run = [{r["step"]: r["val_loss"] for r in run.val} for run in runs]
    steps = set.intersection(*(set(c) for c in per_run)) if per_run else set()
    return {s: statistics.fmean(c[s] for c in per_run) for s in sorted(steps)}


def _median_speed(run):
    speeds = [r["tokens_per_s"] for r in run.train if r.get("tokens_per_s") is not None]
    return statistics.median(speeds) if speeds else None


def arm_stats(label, runs):
    finals = [run.val[-1]["val_loss"] if run.val else None for run in runs]
    bests = [min(r["val_loss"] for r in run.val) if run.val else None for run in runs]
    speeds = [_median_speed(run) for run in runs]
    steps = max((run.train[-1]["step"] for run in runs if run.train), default=0)
    error_mean, error_std = mean_std([run.val[-1].get("attn_rel_rmse_max") if run.val else None for run in runs])
    return ArmStats(label, len(runs), *mean_std(finals), *mean_std(bests), *mean_std(speeds), steps,
                    attn_error_mean=error_mean, attn_error_std=error_std)


def summarize(arms, baseline):
    """ArmStats for every arm of {label: [runs]}, gaps and speedups relative to the `baseline` label."""
    stats = {label: arm_stats(label, runs) for label, runs in arms.items()}
    base = stats[baseline]
    base_curve = val_curve(arms[baseline])
    for label, s in stats.items():
        s.gap_pct = 100.0 * (s.final_mean - base.final_mean) / base.final_mean
        s.speedup = s.tokens_per_s_mean / base.tokens_per_s_mean if base.tokens_per_s_mean else math.nan
        curve = val_curve(arms[label])
        gaps = {step: 100.0 * (curve[step] - base_curve[step]) / base_curve[step]
                for step in curve.keys() & base_curve.keys()}
        if gaps:
            s.max_gap_step = max(sorted(gaps), key=lambda step: abs(gaps[step]))
            s.max_gap_pct = gaps[s.max_gap_step]
    return list(stats.values())


def pick_baseline(labels, wanted):
    """The arm label equal to `wanted`, else the one label containing every comma-separated part of it."""
    if wanted in labels:
        return wanted
    parts = [p for p in wanted.split(",") if p]
    hits = [label for label in labels if all(p in label for p in parts)]
    if len(hits) != 1:
        raise SystemExit(f"--baseline {wanted!r} matches {len(hits)} arms ({', '.join(hits) or 'none'}); "
                         f"arms are: {', '.join(labels)}")
    return hits[0]


def pm(mean, std, spec=".4f"):
    if math.isnan(mean):
        return "n/a"
    return f"{mean:{spec}} ± {std:{spec}}"


def pct(value):
    return "n/a" if value is None or math.isnan(value) else f"{value:+.2f}%"


TABLE_COLUMNS = ("arm", "runs", "final_val_mean", "final_val_std", "best_val_mean", "best_val_std", "gap_pct",
                 "max_gap_pct", "max_gap_step", "tokens_per_s_mean", "tokens_per_s_std", "speedup", "steps",
                 "attn_error_mean", "attn_error_std")


def as_row(s):
    return dict(arm=s.label, runs=s.runs, final_val_mean=s.final_mean, final_val_std=s.final_std,
                best_val_mean=s.best_mean, best_val_std=s.best_std, gap_pct=s.gap_pct, max_gap_pct=s.max_gap_pct,
                max_gap_step=s.max_gap_step, tokens_per_s_mean=s.tokens_per_s_mean,
                tokens_per_s_std=s.tokens_per_s_std, speedup=s.speedup, steps=s.steps,
                attn_error_mean=s.attn_error_mean, attn_error_std=s.attn_error_std)


def markdown_rows(stats):
    """Header and rows; the attention error column only where some run measured it."""
    header = ["arm", "runs", "final val loss", "best val loss", "gap vs baseline", "largest gap (step)",
              "tokens/s", "speedup"]
    body = [[s.label.replace("|", "/"), s.runs, pm(s.final_mean, s.final_std), pm(s.best_mean, s.best_std),
             pct(s.gap_pct), f"{pct(s.max_gap_pct)} ({s.max_gap_step})" if s.max_gap_step is not None else "n/a",
             pm(s.tokens_per_s_mean, s.tokens_per_s_std, ".0f"),
             "n/a" if math.isnan(s.speedup) else f"{s.speedup:.3f}x"] for s in stats]
    if any(not math.isnan(s.attn_error_mean) for s in stats):
        header.append("attention error")
        for row, s in zip(body, stats):
            row.append(pm(s.attn_error_mean, s.attn_error_std, ".2e"))
    return header, body
