"""The `fp8train-train` entry point: W&B offline runs, multirun grouping, SIGTERM, torchrun relaunch, a failing rank."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from fp8train_testing import REPO, TINY

from fp8train import checkpoint, loop


def test_wandb_offline_run_inside_run_dir_and_resumed_with_same_id(make_cfg, tmp_path):
    cfg = make_cfg("logger=wandb", "trainer.max_steps=2", "logger.group=g1", "logger.tags=[a,b]")
    first = loop.run(cfg, tmp_path)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(first["wandb_id"])
    assert (runs[0] / f"run-{first['wandb_id']}.wandb").stat().st_size > 0
    assert first["wandb_group"] == "g1"
    again = loop.run(make_cfg("logger=wandb", "trainer.max_steps=4", "logger.group=g1"), tmp_path)
    assert again["wandb_id"] == first["wandb_id"]  # the resumed run continues the same W&B run


def _cli(*args, **kw):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "fp8train.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_multirun_makes_grouped_runs(data_dir, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli("-m", "optim.lr=1e-3,3e-3", "logger=wandb", "trainer.max_steps=3", *TINY[:-1],
                f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summaries = [json.loads((sweep / str(i) / loop.SUMMARY_FILE).read_text()) for i in (0, 1)]
    assert {s["wandb_group"] for s in summaries} == {"sweep"}
    assert len({s["wandb_id"] for s in summaries}) == 2
    for i in (0, 1):
        assert len(list((sweep / str(i) / "wandb").glob("offline-run-*"))) == 1
        assert (sweep / str(i) / "metrics.jsonl").read_text().count("\n") == 3
    first_lr = [json.loads((sweep / str(i) / "metrics.jsonl").read_text().splitlines()[0])["lr"] for i in (0, 1)]
    assert first_lr[1] == pytest.approx(3 * first_lr[0])


@pytest.mark.slow
def test_sigterm_checkpoints_then_exits(data_dir, cache_dir, tmp_path):
    proc = _cli("trainer.max_steps=100000", *TINY, f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}",
                f"hydra.run.dir={tmp_path}")
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "no progress"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = checkpoint.latest(tmp_path / "checkpoints")
    step = checkpoint.read_trainer_state(saved)["step"]
    assert f"stopped by SIGTERM at step {step}; checkpoint: {saved}" in err
    assert 2 <= step < 100000


@pytest.mark.slow
def test_nproc_per_node_relaunches_as_torchrun_workers(data_dir, cache_dir, tmp_path):
    proc = _cli("trainer.parallel.nproc_per_node=2", "trainer.max_steps=2", *TINY, f"data.data_dir={data_dir}",
                f"data.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / loop.SUMMARY_FILE).read_text())
    assert (summary["world_size"], summary["strategy"], summary["steps"]) == (2, "ddp", 2)
    assert sorted(p.name for p in checkpoint.latest(tmp_path / "checkpoints").glob("rng_rank*")) == \
        ["rng_rank0.pt", "rng_rank1.pt"]


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_rank(data_dir, cache_dir, tmp_path, monkeypatch):
    # Rank 1 alone is given a checkpoint path that does not exist; rank 0 would wait for it in a collective.
    monkeypatch.setenv("FP8TRAIN_TEST_RESUME_1", str(tmp_path / "no-such-checkpoint"))
    proc = _cli("trainer.parallel.nproc_per_node=2", "trainer.max_steps=50", "trainer.parallel.timeout_s=400",
                "trainer.resume='${oc.env:FP8TRAIN_TEST_RESUME_${oc.env:LOCAL_RANK,0},never}'", *TINY,
                f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}")
    start = time.time()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert time.time() - start < 300  # brought down by the launcher, not left to the 400 s collective timeout
    assert "no-such-checkpoint is not a checkpoint directory" in err
    assert re.search(r"rank\s*:\s*1 ", err)
