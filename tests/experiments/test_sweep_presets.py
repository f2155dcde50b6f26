"""The sweep presets compose with Hydra and expand (as `fp8train-train -m` would) to the expected jobs."""
import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fp8train import attention, config

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _compose(overrides, hydra_config=False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_config)


def _jobs(preset):
    """Each job's overrides, expanded from hydra.sweeper.params by Hydra's own basic sweeper."""
    params = _compose([f"experiment={preset}"], hydra_config=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def _validated(preset, job):
    cfg = config.validate(_compose([f"experiment={preset}", *job]))
    attention.build(cfg.attention.name, cfg.attention.options)  # the backend accepts the swept options
    return cfg


def test_bf16_vs_fp8_is_both_arms_times_two_seeds():
    jobs = _jobs("bf16_vs_fp8")
    assert len(jobs) == 4
    cfgs = [_validated("bf16_vs_fp8", job) for job in jobs]
    assert {(c.attention.name, c.trainer.seed) for c in cfgs} == set(itertools.product(("flash", "fp8"), (0, 1)))
    assert {c.logger.group for c in cfgs} == {"bf16_vs_fp8"}
    assert {c.model.n_layer for c in cfgs} == {6} and {c.data.tokenizer for c in cfgs} == {"char"}


def test_quant_sweep_covers_the_grid():
    jobs = _jobs("quant_sweep")
    assert len(jobs) == 16
    cfgs = [_validated("quant_sweep", job) for job in jobs]
    settings = {tuple(OmegaConf.to_container(c.attention.options)[k]
                      for k in ("block_m", "block_n", "hadamard", "granularity", "fmt")) for c in cfgs}
    assert len(settings) == 16
    assert all(c.attention.name == "fp8" and c.attention.options.block_n == c.attention.options.block_m for c in cfgs)
    assert {c.logger.group for c in cfgs} == {"quant_sweep"}
    assert {c.trainer.seed for c in cfgs} == {0}


@pytest.mark.parametrize("preset", ["bf16_vs_fp8", "quant_sweep"])
def test_presets_share_the_training_budget(preset):
    cfg = _compose([f"experiment={preset}"])
    assert (cfg.trainer.max_steps, cfg.trainer.eval_interval, cfg.trainer.eval_batches) == (2000, 250, 50)
