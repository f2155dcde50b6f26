"""FLOP counts from the FlashAttention-3 paper (arXiv 2407.08608, section 4.1).

Forward: 4 * batch * nheads * seqlen_q * seqlen_k * headdim (two matmuls, 2 FLOPs
per multiply-add), halved when causal. Backward: 2.5x the forward (five matmuls
instead of two). Benchmarks and the trainer's attention TFLOPs/s share these.
"""

MODES = ("fwd", "bwd", "fwd_bwd")


def attention_flops(batch, seqlen_q, nheads, headdim, causal=False, mode="fwd", seqlen_k=None):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    fwd = 4 * batch * nheads * seqlen_q * seqlen_k * headdim
    if causal:
        fwd //= 2
    return {"fwd": fwd, "bwd": fwd * 5 // 2, "fwd_bwd": fwd * 7 // 2}[mode]


def tflops_per_s(flops, ms):
    """Rate for `flops` done in `ms` milliseconds."""
    return flops / (ms * 1e-3) / 1e12
