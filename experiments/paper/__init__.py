"""The FlashAttention-3 paper's figures and tables on this machine: `python -m experiments.paper NAME`.

One module per table/figure (fwd, bwd, fp8, ablation, table3), a shared
runner (grid, timing, rows), the candidate implementations (ours and peers),
the writers (CSV, markdown, PNG, W&B) and the paper's own numbers.
"""
