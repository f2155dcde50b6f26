"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine schedule."""
import math

import torch


def lr_at(step: int, cfg, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, cosine decay to min_lr, then flat."""
    decay_steps = cfg.decay_steps or max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)  # never 0, even at step 0
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build(model: torch.nn.Module, cfg, max_steps: int, fused: bool):
    """(AdamW, LambdaLR). Biases, norms (1-D) are not decayed; `fused` picks the single-kernel CUDA step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, max_steps) / cfg.lr)
    return optimizer, scheduler
