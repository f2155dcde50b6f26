"""Table 2: what warp specialization and GEMM-softmax pipelining buy our Hopper forward.

The paper's shape (batch 4, seqlen 8448, 16 heads, head dim 128, non-causal),
our Gluon forward in full and with each feature switched off, next to the
peers and the paper's H100 numbers. Asked for by name on a GPU without our
Gluon kernels, the command says so and exits 2; inside `all` (or on CPU) the
variants are reported as skipped rows.
"""
from pathlib import Path

import torch

from experiments import writers
from experiments.paper import candidates, outputs, paper_figures
from experiments.paper.runner import ROW_COLUMNS, Problem, measure

NAME = "ablation"
TITLE = "Table 2: forward ablation, BF16 (warp specialization, GEMM-softmax pipelining)"
QUICK_SHAPE = {"batch": 1, "seqlen": 64, "nheads": 1, "headdim": 64, "causal": False}

# (candidate, key of its paper row in TABLE2_ABLATION or None), in the paper's row order; ping-pong
# scheduling is a third switch of ours that the paper's table does not isolate.
VARIANTS = (
    (candidates.ours_gluon_ablation("ours-gluon"), (True, True)),
    (candidates.ours_gluon_ablation("ours-gluon-no-pipelining", pipeline=False), (True, False)),
    (candidates.ours_gluon_ablation("ours-gluon-no-warp-specialization", warp_specialize=False), (False, True)),
    (candidates.ours_gluon_ablation("ours-gluon-no-pingpong", pingpong=False), None),
)
CONTEXT = (candidates.OURS_TRITON, candidates.SDPA_CUDNN, candidates.SDPA_FLASH, candidates.FA3, candidates.SDPA_MATH)


def run(opts):
    problem = Problem(**(QUICK_SHAPE if opts.quick else paper_figures.TABLE2_SHAPE))
    chosen = opts.pick([c for c, _ in VARIANTS] + list(CONTEXT))
    rows = measure(problem, chosen, "fwd", torch.bfloat16, opts, NAME)
    variants = {c.name: key for c, key in VARIANTS}
    full = next((r for r in rows if r["impl"] == "ours-gluon" and r["status"] == "ok"), None)
    for r in rows:
        if variants.get(r["impl"]):
            paper = paper_figures.TABLE2_ABLATION[variants[r["impl"]]]
            r.update(paper_row=paper["label"], paper_ms=paper["ms"], paper_tflops=paper["tflops"])
        if r["impl"] in variants and full and r["status"] == "ok":
            r["vs_full"] = r["tflops"] / full["tflops"]
    columns = ROW_COLUMNS + ("vs_full", "paper_row", "paper_ms", "paper_tflops")
    out_dir = Path(opts.out) / NAME
    prov = opts.provenance
    paths = [writers.write_csv(out_dir / f"{NAME}.csv", rows, columns, prov)]
    paths.append(writers.write_text(out_dir / f"{NAME}.md", _markdown(problem, rows, prov, opts.timing_note())))
    paths.append(_plot(out_dir / f"{NAME}.png", rows, prov))
    if opts.wandb:
        writers.log_wandb(NAME, rows, columns, [paths[-1]], prov, out_dir, group="paper")
    for p in paths:
        print(f"wrote {p}")
    missing = [r for r in rows if r["impl"] in variants and r["status"] != "ok"]
    if missing and opts.explicit and torch.cuda.is_available():
        print(f"ERROR: the ablation needs our Gluon kernels; not measured: "
              f"{', '.join(r['impl'] + ' (' + r.get('reason', r['status']) + ')' for r in missing)}")
        return 2
    return 1 if any(r["status"] == "error" for r in rows) else 0


def _fmt(value, spec):
    return format(value, spec) if value is not None else "n/a"


def _markdown(problem, rows, prov, timing):
    notes = [f"Shape: batch {problem.batch}, seqlen {problem.seqlen}, {problem.nheads} heads, "
             f"head dim {problem.headdim}, {'causal' if problem.causal else 'non-causal'}.",
             f"Timing: {timing}.",
             f"Paper columns: {paper_figures.PAPER}, Table 2 ({paper_figures.SOURCES['table2']})."]
    body = []
    for r in rows:
        ok = r["status"] == "ok"
        vs_peer = f"{r['vs_best_peer']:.2f} ({r['best_peer']})" if r.get("vs_best_peer") else "n/a"
        body.append([r["impl"], r["kind"], _fmt(r.get("ms") if ok else None, ".3f"),
                     _fmt(r.get("tflops"), ".1f") if ok else r["status"], _fmt(r.get("vs_full"), ".2f"), vs_peer,
                     r.get("paper_row", ""), _fmt(r.get("paper_ms"), ".3f"), _fmt(r.get("paper_tflops"), ".0f"),
                     r.get("reason", "").replace("|", "/")])
    header = ["implementation", "kind", "ms", "TFLOPs/s", "vs full", "vs best peer", "paper row",
              "paper ms (H100)", "paper TFLOPs/s (H100)", "note"]
    return writers.preamble(TITLE, prov, notes) + "\n" + writers.markdown_table(header, body) + "\n"


def _plot(path, rows, prov):
    """Horizontal bars, one per implementation measured here and one per paper row (hatched)."""
    from matplotlib.figure import Figure

    bars = {r["impl"]: r["tflops"] for r in rows if r["status"] == "ok"}
    paper = [f"H100 paper: {p['label']}" for p in paper_figures.TABLE2_ABLATION.values()]
    bars.update(zip(paper, (p["tflops"] for p in paper_figures.TABLE2_ABLATION.values())))
    styles = outputs.bar_styles(bars, hatched=paper)
    figure = Figure(figsize=(9, 1.5 + 0.3 * len(bars)), layout="constrained")
    ax = figure.subplots()
    for i, (name, value) in enumerate(bars.items()):
        color, hatch = styles[name]
        ax.barh(i, value, color=color, hatch=hatch, edgecolor="black", linewidth=0.3)
        ax.annotate(f"{value:.0f}" if value >= 10 else f"{value:.2g}", (value, i), va="center", fontsize=7,
                    xytext=(2, 0), textcoords="offset points")
    ax.set_yticks(range(len(bars)), list(bars), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("TFLOPs/s")
    ax.margins(x=0.1)
    writers.title_with_provenance(figure, TITLE, prov)
    return writers.save_figure(figure, path)
