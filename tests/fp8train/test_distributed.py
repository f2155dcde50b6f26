"""DDP and FSDP2 on 2 CPU processes (gloo) against one process with the same global batch, and checkpoints
that move between world sizes (2 ranks -> 1 and 1 -> 2)."""
import json
import socket

import pytest
import torch.multiprocessing as mp
from fp8train_testing import TINY, spawn_worker

from fp8train import checkpoint, loop

# float32 on CPU: 2 ranks sum gradients in another order than 1 process; 6 Adam steps keep that below 1e-5.
TOL = 1e-5


def losses(run_dir):
    """{step: (loss, grad norm)}: the norm catches gradients summed instead of averaged over ranks."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in map(json.loads, lines) if "loss" in r}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_and_checkpoints_reshard(make_cfg, data_dir, cache_dir, tmp_path):
    base = [f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}"]
    common = ["optim.decay_steps=6", "trainer.checkpoint_interval=3", "trainer.parallel.timeout_s=60"]

    # One process: the reference run, and a run stopped at step 3 that 2 ranks will finish.
    loop.run(make_cfg("trainer.max_steps=6", *common), tmp_path / "single")
    loop.run(make_cfg("trainer.max_steps=3", *common), tmp_path / "one_then_two")

    args = base + TINY + common
    jobs = [(args + ["trainer.max_steps=6", "trainer.parallel.strategy=ddp"], tmp_path / "ddp"),
            (args + ["trainer.max_steps=6", "trainer.parallel.strategy=fsdp"], tmp_path / "fsdp"),
            (args + ["trainer.max_steps=6", "trainer.parallel.strategy=fsdp"], tmp_path / "one_then_two")]
    mp.spawn(spawn_worker, args=(2, free_port(), jobs), nprocs=2, join=True)

    # 2 ranks -> 1: resume FSDP's step-3 checkpoint in one plain process.
    fsdp_ckpt = tmp_path / "fsdp" / "checkpoints" / "step_0000003"
    assert checkpoint.read_trainer_state(fsdp_ckpt)["world_size"] == 2
    loop.run(make_cfg("trainer.max_steps=6", *common, f"trainer.resume={fsdp_ckpt}"), tmp_path / "two_then_one")

    want = losses(tmp_path / "single")
    assert list(want) == [1, 2, 3, 4, 5, 6]
    for run in ("ddp", "fsdp", "one_then_two", "two_then_one"):
        got = losses(tmp_path / run)
        assert got.keys() <= want.keys() and len(got) >= 3, run
        for step, loss_and_norm in got.items():
            assert loss_and_norm == pytest.approx(want[step], abs=TOL, rel=0), (run, step)
    for run, strategy in (("ddp", "ddp"), ("fsdp", "fsdp"), ("one_then_two", "fsdp")):
        summary = json.loads((tmp_path / run / loop.SUMMARY_FILE).read_text())
        assert (summary["world_size"], summary["strategy"]) == (2, strategy)
    assert list(losses(tmp_path / "two_then_one")) == [4, 5, 6]
    assert list(losses(tmp_path / "one_then_two")) == [1, 2, 3, 4, 5, 6]  # rank 0 appended to the same file
