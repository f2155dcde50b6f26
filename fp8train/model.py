"""GPT: pre-LayerNorm transformer blocks, tied embeddings, learned or rotary positions, optional GQA.

Attention runs through a backend (fp8train.attention) on (batch, seq, heads, head_dim)
tensors, so swapping BF16/FP8 kernels never touches this file.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fp8train.attention import Backend
from fp8train.config import ModelConfig, kv_heads


def rotary_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (block_size, head_dim // 2) in float32, for rotate-half RoPE."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, seq, heads, head_dim) pairs (i, i + head_dim/2) by position-dependent angles."""
    seq = x.shape[1]
    cos, sin = cos[:seq, None, :], sin[:seq, None, :]  # broadcast over heads
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg, backend: Backend):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.n_kv_head = kv_heads(cfg)
        # q, k and v in one matmul, their rows in that order; k and v have n_kv_head heads each (GQA), which the
        # backends share among groups of query heads.
        self.qkv_sizes = (cfg.d_model, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim)
        self.qkv = nn.Linear(cfg.d_model, sum(self.qkv_sizes), bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.backend = backend
        self.rotary = cfg.positions == "rotary"
        if self.rotary:
            # Per block, not passed in: FSDP casts floating inputs of a block to bf16, and these stay float32.
            # Not saved: rebuilt from the config.
            cos, sin = rotary_tables(cfg.block_size, self.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(self.qkv_sizes, dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim)
        k, v = k.view(b, t, self.n_kv_head, self.head_dim), v.view(b, t, self.n_kv_head, self.head_dim)
        if self.rotary:
            q, k = apply_rotary(q, self.rope_cos, self.rope_sin), apply_rotary(k, self.rope_cos, self.rope_sin)
        y = self.backend(q, k, v, True)
        return self.dropout(self.proj(y.reshape(b, t, d)))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg, backend: Backend):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg, backend)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """`cfg` is a plain fp8train.config.ModelConfig with vocab_size set (a dataclass, not an OmegaConf node:
    torch.compile reads it in forward)."""

    def __init__(self, cfg: ModelConfig, backend: Backend):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, backend) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std) weights, zero biases, unit LayerNorms, and residual projections
        scaled by 1/sqrt(2 * n_layer)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding drops lookup-only tables (positions, and untied token embeddings)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.cfg.tie_weights:
                n -= self.tok_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab), or the mean cross-entropy against `targets` when given."""
        t = idx.shape[1]
        if t > self.cfg.block_size:
            raise ValueError(f"sequence length {t} exceeds model.block_size={self.cfg.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
