"""End-to-end training in process: falling loss, metrics rows, exact resume, atomic checkpoints, NaN stop."""
import json

import pytest
import torch

from fp8train import attention, checkpoint, data, loop, optim
from fp8train.config import ModelConfig
from fp8train.model import GPT

ROW_KEYS = {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "attn_tflops_per_s", "peak_mem_gb"}


def rows(run_dir, key="loss"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def test_training_lowers_loss_and_writes_run_dir(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_steps=40", "trainer.log_interval=10", "trainer.eval_interval=20",
                   "trainer.eval_batches=2", "optim.lr=3e-3")
    summary = loop.run(cfg, tmp_path)
    train = rows(tmp_path)
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert all(ROW_KEYS <= r.keys() for r in train)
    assert train[0]["tokens"] == 10 * 8 * 32 and train[-1]["tokens"] == 40 * 8 * 32
    assert train[-1]["loss"] < train[0]["loss"] - 0.5  # from ~4.2 (log 65)
    assert [r["lr"] for r in train] == pytest.approx([optim.lr_at(s - 1, cfg.optim, 40) for s in (10, 20, 30, 40)])
    evals = rows(tmp_path, "val_loss")
    assert [r["step"] for r in evals] == [20, 40] and evals[1]["val_loss"] < evals[0]["val_loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals) and summary["steps"] == 40
    assert json.loads((tmp_path / loop.SUMMARY_FILE).read_text())["steps"] == 40
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "checkpoints")] == ["step_0000040"]


def test_accumulation_matches_one_big_batch(make_cfg, tmp_path):
    whole = loop.run(make_cfg("trainer.max_steps=4", "trainer.save_checkpoints=false"), tmp_path / "a")
    accum = loop.run(make_cfg("trainer.max_steps=4", "trainer.save_checkpoints=false",
                              "trainer.micro_batch_size=2"), tmp_path / "b")
    losses = [[r["loss"] for r in rows(tmp_path / d)] for d in "ab"]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert whole["final_loss"] == pytest.approx(accum["final_loss"], abs=1e-5)


@pytest.mark.parametrize("caller_thread", [True, False])
def test_backward_thread_follows_config(make_cfg, tmp_path, monkeypatch, caller_thread):
    # What the engine is told during the step; on CPU it runs the backward on the caller either way.
    seen = []
    forward = GPT.forward

    def recording_forward(self, *args, **kwargs):
        seen.append(torch._C._is_multithreading_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording_forward)
    loop.run(make_cfg("trainer.max_steps=2", "trainer.eval_interval=0", "trainer.save_checkpoints=false",
                      f"trainer.backward_on_caller_thread={caller_thread}"), tmp_path)
    assert seen and set(seen) == {not caller_thread}
    assert torch._C._is_multithreading_enabled()  # restored after the step


def test_straight_equals_half_resume_half(make_cfg, tmp_path):
    # Dropout on: resuming must restore the RNG too, not just weights and data position.
    common = ["model.dropout=0.1", "optim.decay_steps=12", "optim.warmup_steps=2"]
    loop.run(make_cfg("trainer.max_steps=12", *common), tmp_path / "straight")
    loop.run(make_cfg("trainer.max_steps=6", *common), tmp_path / "split")
    loop.run(make_cfg("trainer.max_steps=12", *common), tmp_path / "split")  # resume=auto: from step 6
    straight, split = rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 13))
    for a, b in zip(straight, split):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6, rel=0) and a["lr"] == b["lr"]


def test_crash_mid_save_leaves_previous_checkpoint(make_cfg, tmp_path, monkeypatch):
    loop.run(make_cfg("trainer.max_steps=3"), tmp_path)
    good = checkpoint.latest(tmp_path / "checkpoints")
    before = sorted(p.name for p in good.iterdir())

    real_save = torch.save

    def dying_save(obj, path, *a, **kw):  # the shards are written; the process dies before the rename
        if str(path).endswith("trainer_state.pt"):
            raise KeyboardInterrupt("killed")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        loop.run(make_cfg("trainer.max_steps=6"), tmp_path)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert checkpoint.latest(root) == good and sorted(p.name for p in good.iterdir()) == before
    assert (root / ".tmp-step_0000006").exists()
    # The next run resumes from the good one and clears the debris.
    loop.run(make_cfg("trainer.max_steps=6"), tmp_path)
    assert not (root / ".tmp-step_0000006").exists()
    assert [p.name for p in checkpoint.checkpoints(root)] == ["step_0000003", "step_0000006"]


@pytest.mark.parametrize("n_kv_head", [None, 1], ids=["mha", "mqa"])
def test_checkpoint_loads_in_a_plain_module_for_evaluation(make_cfg, tmp_path, n_kv_head):
    cfg = make_cfg("trainer.max_steps=2", "trainer.eval_interval=2", "trainer.eval_batches=1",
                   f"model.n_kv_head={'null' if n_kv_head is None else n_kv_head}")
    summary = loop.run(cfg, tmp_path)
    path = checkpoint.latest(tmp_path / "checkpoints")
    state = checkpoint.read_trainer_state(path)
    assert state["step"] == 2 and state["tokenizer"]["kind"] == "char"
    assert state["config"]["model"]["vocab_size"] == 65  # as built from the data, so that this needs no data
    model = GPT(ModelConfig(**state["config"]["model"]), attention.build("sdpa", {}))
    kv_rows = 2 * (n_kv_head or 2) * 16  # the test model: 2 heads of 16
    assert model.blocks[0].attn.qkv.weight.shape == (32 + kv_rows, 32)
    checkpoint.load_model_weights(path, model)
    assert model.lm_head.weight is model.tok_emb.weight  # tying survives loading
    # The loaded weights give the run's own last validation loss (first validation batch, eval mode).
    x, y = data.to_batch(data.load(cfg.data, cfg.trainer.seed).val, range(8), torch.device("cpu"))
    with torch.no_grad():
        assert model.eval()(x, y).item() == pytest.approx(summary["last_val_loss"], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(make_cfg, tmp_path):
    calls = {"n": 0}

    @attention.register("test_nan_later")
    def _nan_later():
        sdpa = attention.build("sdpa", {})

        def backend(q, k, v, causal):  # call 1 is attention.run_once's; two layers a forward: step 5 is 10, 11
            calls["n"] += 1
            out = sdpa(q, k, v, causal)
            return out * float("nan") if calls["n"] > 9 else out

        return backend

    try:
        with pytest.raises(loop.TrainingDiverged) as e:
            loop.run(make_cfg("attention.name=test_nan_later", "trainer.max_steps=10",
                              "trainer.checkpoint_interval=2", "trainer.log_interval=3"), tmp_path)
    finally:
        attention._FACTORIES.pop("test_nan_later")
    assert "non-finite training loss nan" in str(e.value) and "step_0000004" in str(e.value)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "checkpoints")] == ["step_0000002", "step_0000004"]
    assert [r["step"] for r in rows(tmp_path)] == [3]  # the interval with the NaN was never logged


def test_fsdp_and_ddp_in_one_process_match_plain(make_cfg, tmp_path):
    losses = {}
    for strategy in ("none", "ddp", "fsdp"):
        loop.run(make_cfg("trainer.max_steps=3", f"trainer.parallel.strategy={strategy}"), tmp_path / strategy)
        losses[strategy] = [r["loss"] for r in rows(tmp_path / strategy)]
    assert losses["ddp"] == pytest.approx(losses["none"], abs=1e-6)
    assert losses["fsdp"] == pytest.approx(losses["none"], abs=1e-5)
