"""The GPT on our kernels' backends (flash, fp8): they train, and bad precision is refused before training."""
import json

import pytest
import torch

from fp8train import attention, loop
from fp8train.errors import ConfigError

HEAD_DIM_64 = ["model.d_model=128", "model.n_head=2", "trainer.max_steps=8", "optim.lr=3e-3"]


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("name, options, head_dim, message", [
    ("fp8", {"impl": "reference"}, 16, "FP8 attention supports head dims"),
    ("flash", {"impl": "reference"}, 4, "head dim must be a multiple of 8"),
    ("flash", {"impl": "gluon"}, 64, "needs an sm_90 GPU"),
])
def test_what_a_backend_cannot_run_is_a_config_error(name, options, head_dim, message):
    backend = attention.build(name, options)
    with pytest.raises(ConfigError, match=f"^attention: {name} cannot run .*{message}"):
        attention.run_once(name, backend, 2, 2, head_dim, 32, torch.device("cpu"), torch.bfloat16)


def test_a_model_the_backend_cannot_run_stops_before_training(make_cfg, tmp_path):
    """The tiny test model has head dim 16, which the FP8 kernels do not take: one ConfigError at start-up, before
    the data, the model or any logger is built (it used to come from the first step as a traceback)."""
    cfg = make_cfg("attention=fp8", "attention.options.impl=reference", f"data.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ConfigError, match="^attention: fp8 cannot run .* head dims"):
        loop.run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_fp32_precision_is_refused_for_kernel_backends(make_cfg):
    with pytest.raises(ConfigError, match="trainer.precision"):
        make_cfg("attention=fp8", "trainer.precision=fp32")


@pytest.mark.parametrize("backend", ["flash", "fp8"])
def test_kernel_backend_follows_sdpa_loss_curve(make_cfg, tmp_path, backend):
    # Same weights and batches, both in bf16 autocast: the first loss (before any update) measures the forward
    # alone; later ones drift apart as bf16 rounding compounds, so they only have to stay close.
    loop.run(make_cfg("attention=sdpa", "trainer.precision=bf16", *HEAD_DIM_64), tmp_path / "sdpa")
    # impl=reference: the kernels' exact math in PyTorch (the Triton interpreter is too slow for a GPT in CI).
    loop.run(make_cfg(f"attention={backend}", "attention.options.impl=reference", *HEAD_DIM_64), tmp_path / backend)
    sdpa, ours = losses(tmp_path / "sdpa"), losses(tmp_path / backend)
    assert ours[-1] < ours[0] - 0.3
    assert ours[0] == pytest.approx(sdpa[0], abs=5e-3 if backend == "flash" else 2e-2)
    assert ours[-1] == pytest.approx(sdpa[-1], abs=0.15)
