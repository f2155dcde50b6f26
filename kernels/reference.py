"""Plain-PyTorch attention: the oracle for every kernel test and the CPU fallback.

Layout is FlashAttention's: q (batch, seqlen_q, nheads, headdim), k and v
(batch, seqlen_k, nheads_kv, headdim) with nheads_kv dividing nheads (GQA/MQA).
Causal masks are aligned bottom-right as in FlashAttention: query i sees key j
iff j <= i + seqlen_k - seqlen_q.
"""
import math

import torch


def causal_mask(seqlen_q: int, seqlen_k: int, device=None) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask, True where a query may attend to a key (bottom-right aligned)."""
    i = torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    return j <= i + (seqlen_k - seqlen_q)


def attention_ref(q, k, v, causal=False, softmax_scale=None, dtype=torch.float64):
    """Attention computed in `dtype` (float64 by default); returns (out, lse).

    out has q's layout in `dtype`; lse is (batch, nheads, seqlen_q) in `dtype`,
    natural log. A query row that sees no key (causal with seqlen_q > seqlen_k)
    gets out = 0 and lse = +inf, FlashAttention's convention, so that
    exp(s - lse) = 0 in a backward pass.
    Pass dtype=q.dtype to get a low-precision baseline (PyTorch's own bf16/fp16
    attention), against which FA-style tests scale their tolerances.
    """
    nheads, nheads_kv = q.shape[2], k.shape[2]
    if nheads % nheads_kv:
        raise ValueError(f"nheads ({nheads}) must be a multiple of nheads_kv ({nheads_kv})")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    group = nheads // nheads_kv
    qd, kd, vd = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (b, h, s, d)
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    s = torch.matmul(qd, kd.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))
    lse = torch.logsumexp(s.to(torch.float64) if dtype == torch.float64 else s.float(), dim=-1)
    seen = torch.isfinite(lse)
    p = torch.softmax(s, dim=-1).masked_fill(~seen[..., None], 0.0)
    out = torch.matmul(p.to(dtype), vd).transpose(1, 2)
    lse = lse.masked_fill(~seen, float("inf")).to(dtype)
    return out, lse


def attention_ref_grads(q, k, v, dout, causal=False, dtype=torch.float64):
    """(out, lse, dq, dk, dv) of `attention_ref` computed in `dtype`, the gradients by autograd (the oracle the
    backward kernels' formula is checked against, independent of `attention_backward_ref`)."""
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = attention_ref(qd, kd, vd, causal, dtype=dtype)
    out.backward(dout.to(dtype))
    return out.detach(), lse, qd.grad, kd.grad, vd.grad


def attention_backward_ref(dout, q, k, v, out, lse, causal=False, softmax_scale=None, dtype=torch.float64):
    """FlashAttention's backward formula in `dtype`: (dq, dk, dv) from the given out and natural-log lse.

    P = exp(scale * q k^T - lse), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * out)),
    dQ = scale * dS K, dK = scale * dS^T Q; GQA sums dK and dV over each group.
    `out` and `lse` are taken as given, not recomputed, so this is also the
    straight-through backward of a forward (e.g. FP8) whose out/lse differ from
    the exact ones. Rows with lse = +inf get P = 0.
    """
    batch, seqlen_k, nheads_kv, headdim = k.shape
    nheads = q.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    group = nheads // nheads_kv
    qd, kd, vd, od, dod = (t.to(dtype).transpose(1, 2) for t in (q, k, v, out, dout))  # (b, h, s, d)
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    s = torch.matmul(qd, kd.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[1], seqlen_k, q.device), float("-inf"))
    p = torch.exp(s - lse.to(dtype)[..., None])
    dv = torch.matmul(p.transpose(-1, -2), dod)
    delta = (dod * od).sum(-1, keepdim=True)
    ds = p * (torch.matmul(dod, vd.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, kd) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qd) * scale
    dk = dk.reshape(batch, nheads_kv, group, seqlen_k, headdim).sum(2)
    dv = dv.reshape(batch, nheads_kv, group, seqlen_k, headdim).sum(2)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
