"""Figure 5: attention forward throughput, BF16, head dim 64/128/256 x causal x seqlen 512..16k."""
import torch

from experiments.paper import candidates, paper_figures
from experiments.paper.runner import ThroughputFigure, run_figure

FIGURE = ThroughputFigure(
    name="fwd",
    title="Figure 5: attention forward, BF16",
    mode="fwd",
    dtype=torch.bfloat16,
    roster=candidates.BF16_ROSTER,
    paper=paper_figures.FIG5_FWD_BF16,
    paper_key="fig5",
)


def run(opts):
    return run_figure(FIGURE, opts)
