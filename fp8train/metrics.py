"""Throughput figures: model FLOPs per token, MFU against a table of GPU peaks, attention TFLOPs/s, peak memory."""
import resource
import sys

import torch

from kernels import attention_flops, tflops_per_s

# Dense BF16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by substring of
# the device name, first match wins: so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989.5e12),
    ("H200", 989.5e12),
    ("H100", 989.5e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """Peak FLOP/s of one device: the override, else the table entry for a CUDA device, else None (unknown)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6N for the weights plus 12*L*H*Q*T for attention."""
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size, in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb_or_bytes / (1e9 if sys.platform == "darwin" else 1e6)


def attention_tflops(backend, batch: int, seq_len: int, n_head: int, n_kv_head: int, head_dim: int,
                     device: torch.device, dtype: torch.dtype, iters: int = 10) -> float | None:
    """The backend's causal forward + backward TFLOPs/s at the run's shape, timed with CUDA events; None off CUDA.

    Timed apart from the training step, which mixes attention with every other kernel.
    """
    if device.type != "cuda":
        return None
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
               for heads in (n_head, n_kv_head, n_kv_head))
    grad = torch.randn_like(q)

    def step():
        backend(q, k, v, True).backward(grad)

    for _ in range(3):  # warm-up: compilation and autotuning stay out of the timing
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    end.synchronize()
    flops = attention_flops(batch, seq_len, n_head, head_dim, causal=True, mode="fwd_bwd")
    return tflops_per_s(flops, start.elapsed_time(end) / iters)
