"""Starting a run again: finished runs stay as they are, one run per run dir, damaged checkpoints and config changes
reported in one line, durable saves."""
import json
import os
import subprocess
import sys

import pytest
import torch
from fp8train_testing import REPO, TINY

from fp8train import checkpoint, loop
from fp8train.errors import ConfigError


def files(d):
    """Contents of the files under `d`; links left out (W&B links its service's log, which others append to)."""
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_rerunning_a_finished_run_changes_nothing(make_cfg, tmp_path, capsys):
    cfg = make_cfg("logger=wandb", "trainer.max_steps=2")
    first = loop.run(cfg, tmp_path)
    before = files(tmp_path)
    assert loop.run(cfg, tmp_path) == first
    assert "run already complete at step 2" in capsys.readouterr().out
    assert files(tmp_path) == before  # summary.json, metrics.jsonl, checkpoints and the W&B run


def test_a_run_dir_holds_one_run(make_cfg, tmp_path):
    loop.run(make_cfg("trainer.max_steps=2"), tmp_path / "a")
    loop.run(make_cfg("trainer.max_steps=2", "trainer.seed=1"), tmp_path / "b")
    before = files(tmp_path / "a")
    other = checkpoint.latest(tmp_path / "b" / "checkpoints")
    for resume in ("never", other):  # a new run, or another run's checkpoint, beside this run's checkpoints
        with pytest.raises(ConfigError) as e:
            loop.run(make_cfg("trainer.max_steps=3", f"trainer.resume={resume}"), tmp_path / "a")
        assert e.value.key == "trainer.resume" and "holds checkpoints of an earlier run" in str(e.value)
    assert files(tmp_path / "a") == before
    own = checkpoint.latest(tmp_path / "a" / "checkpoints")  # its own newest checkpoint is continuing it
    assert loop.run(make_cfg("trainer.max_steps=3", f"trainer.resume={own}"), tmp_path / "a")["steps"] == 3


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "trainer_state.pt").write_bytes(b""), "trainer_state.pt is damaged"),
    (lambda c: (c / "rng_rank0.pt").unlink(), "missing rng_rank0.pt"),
    (lambda c: (c / ".metadata").unlink(), "missing .metadata"),
    (lambda c: _truncate(c / ".metadata"), ".metadata is damaged"),
    (lambda c: (c / "__0_0.distcp").unlink(), "the model/optimizer shards are damaged (rank 0: FileNotFoundError"),
    (lambda c: _truncate(c / "__0_0.distcp"), "the model/optimizer shards are damaged"),
], ids=["empty-state", "no-rng", "no-metadata", "short-metadata", "no-shard", "short-shard"])
def test_damaged_checkpoint_is_named_with_what_is_wrong(make_cfg, tmp_path, damage, problem):
    loop.run(make_cfg("trainer.max_steps=2", "trainer.checkpoint_interval=1"), tmp_path)
    newest = checkpoint.latest(tmp_path / "checkpoints")
    damage(newest)
    with pytest.raises(checkpoint.CheckpointError) as e:
        loop.run(make_cfg("trainer.max_steps=3"), tmp_path)
    assert str(e.value).startswith(f"checkpoint {newest}: {problem}") and len(str(e.value).splitlines()) == 1
    assert str(e.value).endswith(f"to resume from step_0000001, move step_0000002 out of {tmp_path / 'checkpoints'}")


def test_resume_refuses_another_model_and_names_other_changes(make_cfg, tmp_path, capsys):
    loop.run(make_cfg("trainer.max_steps=2"), tmp_path)
    with pytest.raises(ConfigError) as e:
        loop.run(make_cfg("trainer.max_steps=3", "model.n_layer=3", "model.d_model=64"), tmp_path)
    assert e.value.key == "model" and ": model.d_model 32 -> 64, model.n_layer 2 -> 3;" in str(e.value)
    capsys.readouterr()
    summary = loop.run(make_cfg("trainer.max_steps=3", "attention.name=reference", "optim.lr=2e-3"), tmp_path)
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: config changed since checkpoint {tmp_path / 'checkpoints' / 'step_0000002'} "
                       "(saved -> now): attention.name sdpa -> reference, optim.lr 0.001 -> 0.002, "
                       "trainer.max_steps 2 -> 3"]
    assert summary["steps"] == 3


def test_checkpoints_saved_without_the_vocabulary_still_resume(make_cfg, tmp_path):
    loop.run(make_cfg("trainer.max_steps=2"), tmp_path)
    path = checkpoint.latest(tmp_path / "checkpoints")
    state = checkpoint.read_trainer_state(path)
    assert state["config"]["model"]["vocab_size"] == 65
    state["config"]["model"]["vocab_size"] = None  # as written before the vocabulary was stored
    torch.save(state, path / "trainer_state.pt")
    assert loop.run(make_cfg("trainer.max_steps=3"), tmp_path)["steps"] == 3


def test_save_is_durable(make_cfg, tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    loop.run(make_cfg("trainer.max_steps=1"), tmp_path)
    root, tmp = tmp_path / "checkpoints", tmp_path / "checkpoints" / ".tmp-step_0000001"
    for path in (tmp / "trainer_state.pt", tmp / "rng_rank0.pt", tmp, root):
        assert str(path) in synced
    assert synced.index(str(tmp)) < synced.index(str(root))  # the files' entries, then the rename


def test_save_never_replaces_a_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    cpu = torch.device("cpu")
    path = checkpoint.save(tmp_path, 1, model, optimizer, {"step": 1}, cpu, keep=2)
    before = files(path)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 1, model, optimizer, {"step": 1}, cpu, keep=2)
    assert files(path) == before


@pytest.mark.slow
def test_cli_prints_one_error_line_for_a_damaged_checkpoint(data_dir, cache_dir, make_cfg, tmp_path):
    args = [*TINY, f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}", "trainer.max_steps=3"]
    loop.run(make_cfg(*args[:-1], "trainer.max_steps=2"), tmp_path)
    (checkpoint.latest(tmp_path / "checkpoints") / "rng_rank0.pt").unlink()
    proc = subprocess.run([sys.executable, "-m", "fp8train.train", *args, f"hydra.run.dir={tmp_path}"], cwd=REPO,
                          env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'checkpoints' / 'step_0000002'}: missing rng_rank0.pt"]
    assert json.loads((tmp_path / loop.SUMMARY_FILE).read_text())["steps"] == 2


def test_checkpoints_older_than_a_setting_resume_at_its_default(make_cfg, tmp_path, capsys):
    """A setting added after a checkpoint was written (model.n_kv_head, trainer.attn_error_sequences) is absent
    from its saved config: at its default it is no change (an absent model.n_kv_head is the model as it was); set
    otherwise, it is named like any change (and refused for the model)."""
    loop.run(make_cfg("trainer.max_steps=2"), tmp_path)
    path = checkpoint.latest(tmp_path / "checkpoints")
    state = checkpoint.read_trainer_state(path)
    del state["config"]["model"]["n_kv_head"], state["config"]["trainer"]["attn_error_sequences"]
    torch.save(state, path / "trainer_state.pt")
    with pytest.raises(ConfigError, match=r"model.n_kv_head \(unset\) -> 1"):
        loop.run(make_cfg("trainer.max_steps=3", "model.n_kv_head=1"), tmp_path)
    capsys.readouterr()
    assert loop.run(make_cfg("trainer.max_steps=3"), tmp_path)["steps"] == 3
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: config changed since checkpoint {path} (saved -> now): trainer.max_steps 2 -> 3"]
