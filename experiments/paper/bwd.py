"""Figure 6: attention backward throughput, BF16, on the forward figure's grid."""
import torch

from experiments.paper import candidates, paper_figures
from experiments.paper.runner import ThroughputFigure, run_figure

FIGURE = ThroughputFigure(
    name="bwd",
    title="Figure 6: attention backward, BF16",
    mode="bwd",
    dtype=torch.bfloat16,
    roster=candidates.BF16_ROSTER,
    paper=paper_figures.FIG6_BWD_BF16,
    paper_key="fig6",
)


def run(opts):
    return run_figure(FIGURE, opts)
