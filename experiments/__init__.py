"""Experiments: the paper's tables and figures, run comparisons, sweep summaries and the results report.

They read what `kernels` and `fp8train` produce (the kernels' public API, run
directories with `metrics.jsonl`) and write tables, plots and reports; nothing
here is imported by the framework or the kernels.
"""
