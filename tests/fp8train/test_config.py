"""Config composition (every preset) and validation: a bad value fails early, naming its key."""
import subprocess
import sys

import pytest
from fp8train_testing import CONF, REPO, compose_raw
from omegaconf import OmegaConf

from fp8train import config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_and_validates(name):
    cfg = config.validate(compose_raw([f"experiment={name}"]))
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_model_preset_composes_and_validates(name):
    cfg = config.validate(compose_raw([f"model={name}"]))
    assert cfg.model.d_model % cfg.model.n_head == 0


def test_shakespeare_char_matches_nanogpt():
    c = config.validate(compose_raw(["experiment=shakespeare_char"]))
    m, o, t = c.model, c.optim, c.trainer
    assert (m.n_layer, m.n_head, m.d_model, m.block_size, m.dropout, m.bias) == (6, 6, 384, 256, 0.2, False)
    assert (c.data.seq_len, c.data.tokenizer, t.batch_size, t.max_steps) == (256, "char", 64, 5000)
    assert (o.lr, o.min_lr, o.warmup_steps, o.decay_steps, list(o.betas)) == (1e-3, 1e-4, 100, 5000, [0.9, 0.99])
    assert (o.weight_decay, o.grad_clip, t.eval_interval, t.eval_batches) == (0.1, 1.0, 250, 200)


def test_gpt2_throughput_preset_matches_bench():
    c = config.validate(compose_raw(["experiment=gpt2_throughput"]))
    assert (c.model.n_layer, c.model.d_model, c.data.seq_len, c.trainer.batch_size) == (12, 768, 1024, 32)
    assert (c.data.source, c.trainer.precision, c.trainer.compile, c.trainer.save_checkpoints) == \
        ("synthetic", "bf16", True, False)


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FP8TRAIN_DATA_DIR", str(tmp_path))
    assert config.validate(compose_raw()).data.data_dir == str(tmp_path)
    monkeypatch.delenv("FP8TRAIN_DATA_DIR")
    assert config.validate(compose_raw()).data.data_dir == "./data"


def test_the_attention_probe_needs_evaluations():
    with pytest.raises(config.ConfigError, match="^trainer.attn_error_sequences: .*eval_interval"):
        config.validate(compose_raw(["trainer.attn_error_sequences=4", "trainer.eval_interval=0"]))


@pytest.mark.parametrize("override, key", [
    ("model.n_layer=0", "model.n_layer"),
    ("model.n_layer=abc", "model.n_layer"),
    ("model.d_model=66", "model.d_model"),
    ("model.positions=alibi", "model.positions"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.n_kv_head=3", "model.n_kv_head"),  # the tiny model's 4 heads
    ("model.n_kv_head=0", "model.n_kv_head"),
    ("data.seq_len=4096", "data.seq_len"),
    ("data.tokenizer=sentencepiece", "data.tokenizer"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.min_lr=1", "optim.min_lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("trainer.precision=fp16", "trainer.precision"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.parallel.strategy=zero3", "trainer.parallel.strategy"),
    ("trainer.parallel.cpu_offload=true", "trainer.parallel.cpu_offload"),
    ("logger.name=tensorboard", "logger.name"),
    ("attention.name=nope", "attention.name"),
    ("trainer.seed=-1", "trainer.seed"),
    ("trainer.attn_error_sequences=-1", "trainer.attn_error_sequences"),
])
def test_bad_value_names_its_key(override, key):
    with pytest.raises(config.ConfigError) as e:
        config.validate(compose_raw([override]))
    assert e.value.key == key
    assert str(e.value).startswith(f"{key}: ") and "\n" not in str(e.value)


def test_batch_split_over_the_launched_processes_is_checked_before_launch():
    with pytest.raises(config.ConfigError, match="^trainer.batch_size: 3 is not divisible by the world size 2"):
        config.validate(compose_raw(["trainer.parallel.nproc_per_node=2", "trainer.batch_size=3"]))
    with pytest.raises(config.ConfigError, match="^trainer.micro_batch_size"):
        config.validate(compose_raw(["trainer.parallel.nproc_per_node=2", "trainer.batch_size=8",
                                     "trainer.micro_batch_size=3"]))


def test_grad_accumulation_keeps_global_batch():
    t = OmegaConf.structured(config.TrainerConfig(batch_size=64, micro_batch_size=8))
    assert config.grad_accumulation(t, 1) == (8, 8)
    assert config.grad_accumulation(t, 4) == (8, 2)
    with pytest.raises(config.ConfigError, match="trainer.batch_size"):
        config.grad_accumulation(t, 3)
    with pytest.raises(config.ConfigError, match="trainer.micro_batch_size"):
        config.grad_accumulation(OmegaConf.structured(config.TrainerConfig(batch_size=24, micro_batch_size=16)), 1)


def test_cli_reports_one_line_before_training(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fp8train.train", "model.n_head=5", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip() == "config error: model.d_model: 64 is not divisible by model.n_head=5"
    assert not (tmp_path / "metrics.jsonl").exists()
