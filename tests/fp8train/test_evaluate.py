"""fp8train-eval: a checkpoint's validation loss and attention error under other attention backends."""
import json

import pytest

from fp8train import evaluate, loop

HEAD_DIM_64 = ["model.d_model=128", "model.n_head=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    """A tiny model trained 4 steps with head dim 64 (what the FP8 kernels take), evaluated on 8 sequences."""
    from fp8train_testing import TINY, compose_raw

    from fp8train import config
    tmp = tmp_path_factory.mktemp("eval")
    cfg = config.validate(compose_raw([f"data.data_dir={data_dir}", f"data.cache_dir={tmp / 'cache'}", *TINY,
                                       *HEAD_DIM_64, "trainer.max_steps=4", "trainer.eval_interval=4",
                                       "trainer.eval_batches=1", "optim.lr=3e-3"]))
    summary = loop.run(cfg, tmp / "run")
    return tmp / "run", summary


def test_the_run_own_attention_gives_its_last_validation_loss(run_dir, tmp_path, capsys):
    run, summary = run_dir
    out = tmp_path / "eval.json"
    # The loop's evaluation: the first eval_batches x batch_size = 8 validation sequences, fp32 SDPA on the CPU.
    assert evaluate.main([str(run), "--sequences", "8", "--batch-size", "8", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["attention"] == "sdpa" and row["step"] == 4 and row["sequences"] == 8
    assert row["val_loss"] == pytest.approx(summary["last_val_loss"], abs=1e-5)
    assert row["attn_rel_rmse_max"] < 1e-5
    assert "| sdpa |" in capsys.readouterr().out


def test_fp8_attention_on_the_trained_weights(run_dir, tmp_path):
    """Three arms on one precision (bf16 autocast, as the FP8 arm needs): the reference backend, FP8 attention with
    block scales and the Hadamard rotation, and per-tensor FP8 without it; the kernels' arithmetic in PyTorch."""
    run, summary = run_dir
    out = tmp_path / "eval.json"
    arms = ["reference", "fp8:impl=reference", "fp8:impl=reference,hadamard=false,granularity=tensor"]
    assert evaluate.main([str(run / "checkpoints"  / "step_0000004"), "--sequences", "8",
                          *(a for arm in arms for a in ("--attention", arm)), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["attention"] for r in rows] == [
        "reference", "fp8 (impl=reference, block_m=128, block_n=128, hadamard=True, granularity=block, fmt=e4m3, "
        "seed=0, backward=fp8_operands)",
        "fp8 (impl=reference, block_m=128, block_n=128, hadamard=False, granularity=tensor, fmt=e4m3, seed=0, "
        "backward=fp8_operands)"]
    reference, fp8, tensor = rows
    assert reference["val_loss"] == pytest.approx(summary["last_val_loss"], abs=2e-2)  # bf16 against fp32
    assert reference["attn_rel_rmse_max"] < 1e-2 < fp8["attn_rel_rmse_max"] < 6e-2
    assert 1e-2 < tensor["attn_rel_rmse_max"] < 1e-1
    assert fp8["val_loss"] == pytest.approx(reference["val_loss"], abs=5e-2)


@pytest.mark.parametrize("argv, message", [
    (["--attention", "nope"], "attention"),
    (["--attention", "fp8:hadamard"], "key=value"),
    (["--attention", "fp8:bogus=1"], "bogus"),
])
def test_bad_arms_are_one_line_errors(run_dir, argv, message):
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run_dir[0]), *argv])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_older_than_gqa_evaluates(run_dir, tmp_path):
    """A checkpoint saved before model.n_kv_head (and the probe) existed: its config lacks both, which take their
    defaults, so it evaluates as the model it was."""
    import shutil

    import torch

    from fp8train import checkpoint
    old = tmp_path / "old"
    shutil.copytree(run_dir[0] / "checkpoints" / "step_0000004", old)
    state = checkpoint.read_trainer_state(old)
    del state["config"]["model"]["n_kv_head"], state["config"]["trainer"]["attn_error_sequences"]
    torch.save(state, old / "trainer_state.pt")
    out = tmp_path / "eval.json"
    assert evaluate.main([str(old), "--sequences", "8", "--batch-size", "8", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["val_loss"] == pytest.approx(run_dir[1]["last_val_loss"], abs=1e-5)


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="neither a checkpoint directory nor a run directory"):
        evaluate.main([str(tmp_path)])
