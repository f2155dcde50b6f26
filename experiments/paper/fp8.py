"""Figure 7: FP8 attention forward throughput from BF16 inputs, our quantization pre-pass included.

`ours-fp8` times what a model pays: Hadamard rotation + block quantization of
BF16 Q, K, V, then the FP8 kernel. `ours-fp8-kernel` times the FP8 kernel
alone on inputs quantized beforehand, as the paper times FP8 kernels (and as
FA3's FP8 peer is timed here); BF16 rows show what FP8 buys.
"""
import torch

from experiments.paper import candidates, paper_figures
from experiments.paper.runner import ThroughputFigure, run_figure

FIGURE = ThroughputFigure(
    name="fp8",
    title="Figure 7: attention forward, FP8 (ours incl. quantization pre-pass)",
    mode="fwd",
    dtype=torch.bfloat16,
    roster=candidates.FP8_ROSTER,
    paper=paper_figures.FIG7_FWD_FP8,
    paper_key="fig7",
)


def run(opts):
    return run_figure(FIGURE, opts)
