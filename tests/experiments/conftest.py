"""Synthetic fp8train run directories with known numbers, for the compare and sweep-summary tests."""
import json
from pathlib import Path

import pytest


def write_run(path, attention, seed, train, val, overrides=(), options=None, config=""):
    """A run dir: metrics.jsonl from train [(step, loss, tokens_per_s)] and val [(step, val_loss)], plus .hydra
    (`config`: more top-level YAML for config.yaml)."""
    path = Path(path)
    (path / ".hydra").mkdir(parents=True)
    opts = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in (options or {}).items()) or " {}"
    (path / ".hydra" / "config.yaml").write_text(
        f"attention:\n  name: {attention}\n  options:{opts}\ntrainer:\n  seed: {seed}\n{config}")
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = [dict(step=s, tokens=s * 1024, loss=loss, lr=1e-3, tokens_per_s=tps) for s, loss, tps in train]
    rows += [dict(step=s, tokens=s * 1024, val_loss=v, best_val_loss=v) for s, v in val]
    rows.sort(key=lambda r: r["step"])
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def make_run():
    return write_run
