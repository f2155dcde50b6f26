"""Paper-style outputs of the throughput figures: per-panel markdown tables and grouped-bar plots."""
from matplotlib.figure import Figure

from experiments import writers
from experiments.paper import paper_figures

# Bar colours: ours in strong colours, peers muted, the paper hatched.
OURS_COLORS = ("#7b3294", "#c2185b", "#e66101", "#5e3c99")
PEER_COLORS = ("#1f78b4", "#33a02c", "#a6cee3", "#b2df8a", "#fdbf6f", "#999999", "#cab2d6")
PAPER_COLOR = "#dddddd"
PAPER_HATCHES = ("//", "\\\\", "xx", "..")


def _cell(row):
    if row is None:
        return "n/a"
    if row["status"] in ("ok", "paper"):
        return f"{row['tflops']:.0f}" if row["tflops"] >= 100 else f"{row['tflops']:.3g}"
    return {"oom": "OOM", "error": "ERROR"}.get(row["status"], "skip")


def panel_title(headdim, causal):
    return f"head dim {headdim}, {'causal' if causal else 'non-causal'}"


def throughput_markdown(fig, rows, candidates, problems, prov, timing_note):
    """Per panel (head dim x causal): TFLOPs/s of every implementation, ours/best-peer, and the paper's H100 bars."""
    notes = [
        f"Timing: {timing_note}.",
        f"Paper columns: {paper_figures.PAPER}, values read from transcriptions of the figure "
        f"({paper_figures.SOURCES[fig.paper_key]}). {paper_figures.NOTES[fig.paper_key]}",
        "Cells are TFLOPs/s; `skip` = not available here (reasons below), `OOM` = out of memory, "
        "`ERROR` = our kernel failed, `n/a` = the paper has no such bar.",
    ]
    text = [writers.preamble(fig.title, prov, notes)]
    index = {(r["headdim"], r["causal"], r["seqlen"], r["impl"]): r for r in rows}
    ours = [c.name for c in candidates if c.kind == "ours"]
    for hd, causal in sorted({(p.headdim, p.causal) for p in problems}, key=lambda x: (x[1], x[0])):
        paper = [f"H100 paper: {s}" for s in paper_figures.SERIES
                 if s in paper_figures.paper_series(fig.paper, hd, causal)]
        header = (["seqlen", "batch", "heads"] + [c.name for c in candidates]
                  + [f"{o} / best peer" for o in ours] + paper)
        body = []
        for p in (p for p in problems if (p.headdim, p.causal) == (hd, causal)):
            cells = [p.seqlen, p.batch, p.nheads]
            cells += [_cell(index.get((hd, causal, p.seqlen, c.name))) for c in candidates]
            for o in ours:
                r = index.get((hd, causal, p.seqlen, o))
                cells.append(f"{r['vs_best_peer']:.2f}x ({r['best_peer']})" if r and r.get("vs_best_peer") else "n/a")
            cells += [_cell(index.get((hd, causal, p.seqlen, name))) for name in paper]
            body.append(cells)
        text += [f"## {panel_title(hd, causal)}", "", writers.markdown_table(header, body), ""]
    text.append(_accuracy_and_skips(rows))
    return "\n".join(text)


def _accuracy_and_skips(rows):
    measured = [r for r in rows if r["kind"] != "paper"]
    worst, backends = {}, {}
    for r in measured:
        if r.get("max_abs_err") is not None:
            worst[r["impl"]] = max(worst.get(r["impl"], 0.0), r["max_abs_err"])
            backends.setdefault(r["impl"], set()).add(r.get("backend") or "-")
    checked = "dq, dk, dv" if any(r.get("mode") == "bwd" for r in measured) else "out"
    text = ["## Accuracy check", "",
            f"Largest max |{checked} - float32 reference| over all problems (batch 0, head 0 of each), and which of "
            "our kernels ran. In 16-bit outputs the largest error is mostly that element's own rounding, so correct "
            "implementations often read the same figure: this column catches bugs, it does not rank kernels.", "",
            writers.markdown_table(["implementation", "max abs error", "our backend"],
                                   [[k, f"{v:.3g}", ", ".join(sorted(backends[k]))] for k, v in worst.items()]),
            ""]
    reasons = {}
    for r in measured:
        if r["status"] != "ok":
            key = (r["impl"], r["status"], r.get("reason", ""))
            reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        text += ["## Not measured", "",
                 writers.markdown_table(["implementation", "status", "reason", "problems"],
                                        [[i, s, reason.replace("|", "/"), n] for (i, s, reason), n in reasons.items()]),
                 ""]
    return "\n".join(text)


def bar_styles(names, hatched=()):
    """{name: (color, hatch)}, fixed per name so that a series looks the same in every panel."""
    styles, counts = {}, {"ours": 0, "peer": 0, "paper": 0}
    for name in names:
        kind = "paper" if name in hatched else "ours" if name.startswith("ours") else "peer"
        i = counts[kind]
        counts[kind] += 1
        styles[name] = {"paper": (PAPER_COLOR, PAPER_HATCHES[i % len(PAPER_HATCHES)]),
                        "ours": (OURS_COLORS[i % len(OURS_COLORS)], None),
                        "peer": (PEER_COLORS[i % len(PEER_COLORS)], None)}[kind]
    return styles


def grouped_bars(ax, groups, series, styles):
    """Paper-style grouped bars: one group per x label, one bar per series, its value printed on top.

    series: {name: [value or None per group]} in legend order; styles: bar_styles() of the names.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        color, hatch = styles[name]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=name, color=color, hatch=hatch,
                      edgecolor="black", linewidth=0.3)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.2g}", (bar.get_x() + bar.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=5, rotation=90, xytext=(0, 1),
                            textcoords="offset points")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])


def seqlen_label(s):
    return f"{s // 1024}k" if s >= 1024 and s % 1024 == 0 else str(s)


def throughput_plot(path, fig, rows, problems, prov):
    """One panel per (causal, head dim) as in the paper: bars per seqlen, ours + peers + the paper's FA3 hatched."""
    panels = sorted({(p.causal, p.headdim) for p in problems})
    causals = sorted({c for c, _ in panels})
    headdims = sorted({d for _, d in panels})
    figure = Figure(figsize=(5.5 * len(headdims), 3.8 * len(causals)), layout="constrained")
    axes = figure.subplots(len(causals), len(headdims), squeeze=False)
    index = {(r["headdim"], r["causal"], r["seqlen"], r["impl"]): r for r in rows}
    measured = list(dict.fromkeys(r["impl"] for r in rows if r["kind"] != "paper" and r["status"] == "ok"))
    paper_fa3 = f"H100 paper: {paper_figures.FA3}"
    styles = bar_styles(measured + [paper_fa3], hatched=(paper_fa3,))
    legend = {}
    for causal, hd in panels:
        ax = axes[causals.index(causal)][headdims.index(hd)]
        seqlens = [p.seqlen for p in problems if (p.causal, p.headdim) == (causal, hd)]
        series = {}
        for name in measured + [paper_fa3]:
            values = [index.get((hd, causal, s, name)) for s in seqlens]
            values = [r["tflops"] if r and r["status"] in ("ok", "paper") else None for r in values]
            if any(v is not None for v in values):
                series[name] = values
        grouped_bars(ax, [seqlen_label(s) for s in seqlens], series, styles)
        ax.set_title(panel_title(hd, causal), fontsize=9)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOPs/s")
        ax.margins(y=0.12)  # room for the value labels
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:  # one legend for all panels, below them
        figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 6),
                      fontsize=7)
    writers.title_with_provenance(figure, fig.title, prov)
    return writers.save_figure(figure, path)
