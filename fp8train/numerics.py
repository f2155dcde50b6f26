"""How far the run's attention is from exact, on the model's own activations as training moves them.

At each evaluation the model runs a few validation sequences once more, with every layer's attention
backend wrapped to keep its inputs and output; each layer's output is then compared with float64
attention on the same q, k, v. FP8 error grows with outliers in q and k (what the Hadamard rotation
spreads), so each layer's peak-to-RMS ratio of q and k is reported beside it.
"""
from contextlib import contextmanager

import torch

from kernels import attention_ref


@contextmanager
def recorded_attention(model: torch.nn.Module):
    """Yields a list that fills with (q, k, v, out) per attention call while the model runs; every block's
    backend is restored afterwards."""
    calls, swapped = [], []

    def recorder(backend):
        def run(q, k, v, causal):
            out = backend(q, k, v, causal)
            calls.append((q.detach(), k.detach(), v.detach(), out.detach()))
            return out
        return run

    try:
        for block in model.blocks:
            swapped.append((block.attn, block.attn.backend))
            block.attn.backend = recorder(block.attn.backend)
        yield calls
    finally:
        for attn, backend in swapped:
            attn.backend = backend


def peak_to_rms(x: torch.Tensor) -> float:
    x = x.double()
    return (x.abs().max() / x.square().mean().sqrt()).item()


@torch.no_grad()
def attention_errors(model: torch.nn.Module, x: torch.Tensor, autocast) -> dict:
    """{metric: value} for the causal attention of every layer on token ids x: `attn_rel_rmse/L{i}`
    (||out - exact|| / ||exact||, exact = float64 attention of the layer's own q, k, v), its max and mean
    over layers, and `q_peak_to_rms/L{i}`, `k_peak_to_rms/L{i}`. `autocast` is the context the run
    trains under. Runs the model in eval mode, eagerly (a compiled model would recompile for the wrapped
    backends), and restores its mode."""
    training = model.training
    model.eval()
    try:
        with torch.compiler.set_stance("force_eager"), recorded_attention(model) as calls, autocast:
            model(x)
    finally:
        model.train(training)
    row = {}
    errors = []
    for i, (q, k, v, out) in enumerate(calls):
        # One sequence at a time: float64 scores of all of them at once would be (N, heads, T, T) x 8 bytes.
        exact = torch.cat([attention_ref(q[j:j + 1], k[j:j + 1], v[j:j + 1], causal=True, dtype=torch.float64)[0]
                           for j in range(len(q))])
        errors.append(((out.double() - exact).norm() / exact.norm()).item())
        row[f"attn_rel_rmse/L{i}"] = errors[-1]
        row[f"q_peak_to_rms/L{i}"] = peak_to_rms(q)
        row[f"k_peak_to_rms/L{i}"] = peak_to_rms(k)
    row["attn_rel_rmse_max"] = max(errors)
    row["attn_rel_rmse_mean"] = sum(errors) / len(errors)
    return row
