"""The CUDA paths: bf16 autocast, torch.compile, fused AdamW, NCCL, FSDP2 mixed precision, throughput figures."""
import json

import pytest

from fp8train import loop

pytestmark = pytest.mark.gpu


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_compiled_bf16_run_reports_throughput(make_cfg, tmp_path):
    cfg = make_cfg("trainer.device=cuda", "trainer.compile=true", "trainer.max_steps=30", "trainer.log_interval=10",
                   "trainer.peak_flops=1e15", "optim.lr=3e-3")
    summary = loop.run(cfg, tmp_path)
    train = rows(tmp_path)
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert all(r["mfu"] > 0 and r["attn_tflops_per_s"] > 0 and r["peak_mem_gb"] > 0 for r in train)
    assert summary["device"].startswith("cuda") and summary["tokens_per_s"] > 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_wrapped_matches_plain_in_one_process(make_cfg, tmp_path, strategy):
    # bf16 autocast on both sides; FSDP also keeps bf16 parameters for compute: a loose tolerance.
    losses = {}
    for s in ("none", strategy):
        loop.run(make_cfg("trainer.device=cuda", "trainer.max_steps=5", f"trainer.parallel.strategy={s}"),
                 tmp_path / s)
        losses[s] = [r["loss"] for r in rows(tmp_path / s)]
    assert losses[strategy] == pytest.approx(losses["none"], abs=3e-2)


@pytest.mark.parametrize("backend", ["flash", "fp8"])
def test_compiled_run_on_our_kernels(make_cfg, tmp_path, backend):
    # torch.compile through the custom ops (forward and backward) on the real GPU kernels, head dim 64.
    cfg = make_cfg("trainer.device=cuda", "trainer.compile=true", "trainer.max_steps=30", "trainer.log_interval=10",
                   f"attention={backend}", "model.d_model=128", "model.n_head=2", "optim.lr=3e-3")
    loop.run(cfg, tmp_path)
    train = rows(tmp_path)
    assert train[-1]["loss"] < train[0]["loss"] - 0.3


@pytest.mark.parametrize("backend, bounds", [("flash", (0, 1e-2)), ("fp8", (1e-2, 1e-1))])
def test_attention_error_on_our_kernels_under_fsdp_and_compile(make_cfg, tmp_path, backend, bounds):
    """The evaluation's attention probe (fp8train/numerics.py) on the real kernels, in a compiled FSDP2 model (the
    probe runs it eagerly on every rank) whose two query heads share one key/value head (MQA), head dim 64."""
    cfg = make_cfg("trainer.device=cuda", "trainer.compile=true", "trainer.parallel.strategy=fsdp",
                   "trainer.max_steps=4", "trainer.eval_interval=2", "trainer.eval_batches=1",
                   "trainer.attn_error_sequences=2", f"attention={backend}", "model.d_model=128", "model.n_head=2",
                   "model.n_kv_head=1")
    summary = loop.run(cfg, tmp_path)
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(bounds[0] < r["attn_rel_rmse_max"] < bounds[1] for r in evals), evals  # FP8: ~0.03 on the CPU
    assert summary["attn_rel_rmse_max"] == evals[-1]["attn_rel_rmse_max"]


def test_eval_puts_a_bf16_trained_model_under_fp8_kernels(make_cfg, tmp_path):
    """fp8train-eval on the GPU kernels: a model trained with our BF16 kernels, evaluated with them and with FP8
    attention (block scales, Hadamard), head dim 64."""
    from fp8train import evaluate
    loop.run(make_cfg("trainer.device=cuda", "trainer.max_steps=20", "attention=flash", "model.d_model=128",
                      "model.n_head=2", "optim.lr=3e-3"), tmp_path / "run")
    out = tmp_path / "eval.json"
    assert evaluate.main([str(tmp_path / "run"), "--attention", "flash", "--attention", "fp8", "--sequences", "64",
                          "--out", str(out)]) == 0
    flash, fp8 = json.loads(out.read_text())
    assert flash["attn_rel_rmse_max"] < 1e-2 < fp8["attn_rel_rmse_max"] < 1e-1
    assert fp8["val_loss"] == pytest.approx(flash["val_loss"], rel=2e-2)
