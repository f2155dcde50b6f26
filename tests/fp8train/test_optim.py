"""The warmup + cosine schedule and AdamW's parameter groups."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from fp8train import optim
from fp8train.config import OptimConfig


def cfg(**kw):
    return OmegaConf.structured(OptimConfig(**{"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, **kw}))


def test_schedule_points():
    c = cfg(decay_steps=110)
    assert optim.lr_at(0, c, 500) == pytest.approx(1e-3 / 11)  # nanoGPT: (it + 1) / (warmup + 1)
    assert optim.lr_at(9, c, 500) == pytest.approx(1e-3 * 10 / 11)
    assert optim.lr_at(10, c, 500) == pytest.approx(1e-3)
    assert optim.lr_at(60, c, 500) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: cosine at pi/2
    assert optim.lr_at(110, c, 500) == pytest.approx(1e-4)
    assert optim.lr_at(400, c, 500) == pytest.approx(1e-4)
    assert optim.lr_at(35, cfg(), 60) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 2)) * 9e-4)


def test_scheduler_follows_schedule_and_groups_decay_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    c = cfg(weight_decay=0.1)
    opt, sched = optim.build(model, c, max_steps=50, fused=False)
    decayed, plain = opt.param_groups
    assert [p.dim() for p in decayed["params"]] == [2] and decayed["weight_decay"] == 0.1
    assert sorted(p.dim() for p in plain["params"]) == [1, 1, 1] and plain["weight_decay"] == 0.0
    for step in range(30):
        assert opt.param_groups[0]["lr"] == pytest.approx(optim.lr_at(step, c, 50))
        opt.step()
        sched.step()
