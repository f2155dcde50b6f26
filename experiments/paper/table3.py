"""Table 3: numerical error of BF16/FP16 and FP8 attention, our measurements beside the paper's.

The measurement lives in `table3_numerics` (run(quick, device) -> rows with
method, shape, backend, rmse, paper_rmse, ...; owned by the FP8 work); this
module writes the CSV, markdown, PNG and W&B outputs every paper table has.
"""
import math
from pathlib import Path

from matplotlib.figure import Figure

from experiments import writers
from experiments.paper import outputs, paper_figures

NAME = "table3"
TITLE = "Table 3: attention forward RMSE against FP64 (inputs with outliers)"


def _numerics():
    try:
        from experiments.paper import table3_numerics
    except ImportError as err:
        return None, f"experiments.paper.table3_numerics not available: {err}"
    return table3_numerics, None


def run(opts):
    numerics, missing = _numerics()
    rows = numerics.run(quick=opts.quick, device=opts.device()) if numerics else []
    out_dir = Path(opts.out) / NAME
    prov = opts.provenance
    columns = list(dict.fromkeys(k for r in rows for k in r))
    paths = [writers.write_csv(out_dir / f"{NAME}.csv", rows, columns, prov),
             writers.write_text(out_dir / f"{NAME}.md", _markdown(numerics, rows, prov, missing)),
             _plot(out_dir / f"{NAME}.png", rows, prov)]
    if opts.wandb and rows:
        writers.log_wandb(NAME, rows, columns, [paths[-1]], prov, out_dir, group="paper")
    for p in paths:
        print(f"wrote {p}")
    if missing:
        print(f"ERROR: {missing}")
        return 1
    return 0


def _markdown(numerics, rows, prov, missing):
    notes = [(numerics.__doc__ or "").split("\n", 1)[0] if numerics else f"**Not measured**: {missing}",
             f"Paper numbers: {paper_figures.PAPER}, Table 3 ({paper_figures.SOURCES['table3']}). "
             f"{paper_figures.NOTES['table3']}"]
    text = writers.preamble(TITLE, prov, notes)
    if rows:
        text += "\n## Ours (RMSE per shape: batch, seqlen, heads, head dim)\n\n" + numerics.markdown(rows) + "\n"
        checks = numerics.must_show(rows)
        text += "\n" + "\n".join(
            f"- {'PASS' if c['ok'] else 'FAIL'} {c['shape']}: ours FP8 RMSE {c['rmse']:.2e} "
            f"(target <= {numerics.TARGET_RMSE:.1e}), {c['gain']:.2f}x below baseline FP8 "
            f"(target >= {numerics.TARGET_GAIN}x)" for c in checks) + "\n"
    paper = [[name, f"{value:.1e}"] for name, value in paper_figures.TABLE3_RMSE.items()]
    text += "\n## Paper (H100)\n\n" + writers.markdown_table(["method", "RMSE"], paper) + "\n"
    return text


def _plot(path, rows, prov):
    """Grouped bars on a log axis: one group per method, one bar per shape, the paper's value hatched."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shapes = list(dict.fromkeys((r["batch"], r["seqlen"], r["nheads"], r["headdim"]) for r in rows))
    by_key = {(r["method"], (r["batch"], r["seqlen"], r["nheads"], r["headdim"])): r for r in rows}
    series = {f"ours b{b} s{s} h{h} d{d}": [by_key[m, (b, s, h, d)]["rmse"] for m in methods] for b, s, h, d in shapes}
    paper = "H100 paper"
    paper_values = [next((r["paper_rmse"] for r in rows if r["method"] == m), None) for m in methods]
    if any(v is not None for v in paper_values):
        series[paper] = paper_values
    figure = Figure(figsize=(max(8, 1.1 * len(methods)), 5), layout="constrained")
    ax = figure.subplots()
    if series:
        outputs.grouped_bars(ax, methods, series, outputs.bar_styles(series, hatched=(paper,)))
        ax.set_yscale("log")
        for label in ax.get_xticklabels():
            label.set(rotation=30, ha="right", rotation_mode="anchor", fontsize=7)
        ax.legend(fontsize=7)
    ax.set_ylabel("RMSE vs FP64")
    finite = [v for values in series.values() for v in values if v and not math.isnan(v)]
    if finite:
        ax.set_ylim(min(finite) / 2, max(finite) * 3)
    writers.title_with_provenance(figure, TITLE, prov)
    return writers.save_figure(figure, path)
