"""The training loop: builds everything from a validated config, trains, evaluates, logs, checkpoints.

One code path for every world size: a plain launch is rank 0 of 1. Rank 0 alone writes
logs; all ranks take part in evaluation and checkpoints (both are collective).
"""
import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fp8train import attention, checkpoint, config, data, distributed, metrics, numerics, optim
from fp8train.loggers import Console, Loggers
from fp8train.model import GPT
from fp8train.signals import StopRequest

CHECKPOINT_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite."""


class Stopped(RuntimeError):
    """A stop signal ended the run after a checkpoint."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def run(cfg, run_dir) -> dict:
    """Train as `cfg` (from fp8train.config.validate) says, writing into `run_dir`; returns the summary."""
    env = distributed.setup(cfg.trainer)
    try:
        # Under torchrun every rank has its own Hydra dir; rank 0's is the run's.
        run_dir = Path(distributed.broadcast_object(str(Path(run_dir).resolve())))
        run_dir.mkdir(parents=True, exist_ok=True)
        return Trainer(cfg, run_dir, env).fit()
    finally:
        distributed.teardown(env)


class Trainer:
    def __init__(self, cfg, run_dir: Path, env: distributed.DistEnv):
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        t = cfg.trainer
        self.strategy = distributed.resolve_strategy(t.parallel.strategy, env.world_size)
        self.micro, self.accum = config.grad_accumulation(t, env.world_size)
        # fp32 with a bf16-only backend never gets here: config.validate refuses it.
        self.bf16 = attention.uses_bf16(t.precision, env.device.type, [cfg.attention.name])
        backend = attention.build(cfg.attention.name, cfg.attention.options)
        m = cfg.model
        head_dim = m.d_model // m.n_head
        attention.run_once(cfg.attention.name, backend, m.n_head, config.kv_heads(m), head_dim, cfg.data.seq_len,
                           env.device, torch.bfloat16 if self.bf16 else torch.float32)
        if env.device.type == "cuda":
            torch.set_float32_matmul_precision("high" if t.allow_tf32 else "highest")

        if cfg.data.source != "synthetic" and env.local_rank == 0:
            data.prepare(cfg.data)  # tokenize once per node; the others wait at the barrier
        distributed.barrier()
        self.splits = data.load(cfg.data, t.seed)
        self.n_eval_batches = min(t.eval_batches, len(self.splits.val) // t.batch_size)
        if t.eval_interval and self.n_eval_batches == 0:
            raise config.ConfigError("trainer.batch_size",
                                     f"{t.batch_size} exceeds the {len(self.splits.val)} validation sequences")

        model_cfg = OmegaConf.to_object(OmegaConf.merge(cfg.model, {"vocab_size": self._vocab_size()}))
        torch.manual_seed(t.seed)  # same initial weights on every rank
        with torch.device(env.device):
            self.raw_model = GPT(model_cfg, backend)
        self.model = distributed.wrap(self.raw_model, self.strategy, env, t.parallel, self.bf16, t.compile)
        fused = env.device.type == "cuda" and not t.parallel.cpu_offload
        self.optimizer, self.scheduler = optim.build(self.model, cfg.optim, t.max_steps, fused)

        self.tokens_per_step = t.batch_size * cfg.data.seq_len
        self.flops_per_token = metrics.flops_per_token(self.raw_model.num_params(), model_cfg.n_layer,
                                                       model_cfg.n_head, head_dim, cfg.data.seq_len)
        self.peak_flops = metrics.peak_flops(env.device, t.peak_flops)
        self.attn_tflops = None
        if env.is_main:
            self.attn_tflops = metrics.attention_tflops(
                backend, self.micro, cfg.data.seq_len, m.n_head, config.kv_heads(m), head_dim, env.device,
                torch.bfloat16 if self.bf16 else torch.float32)
            if env.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(env.device)
        torch.manual_seed(t.seed + 1 + env.rank)  # dropout streams differ across ranks

        # The config checkpoints and W&B record, with the vocabulary as built: a checkpoint loads without the data.
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.resolved["model"]["vocab_size"] = model_cfg.vocab_size
        self.step, self.position, self.best_val_loss, self.last_val_loss = 0, 0, math.inf, None
        self.last_attn_error = None
        self.ckpt_root = run_dir / CHECKPOINT_DIR
        self.wandb_id = self._resume()

    def _vocab_size(self) -> int:
        m, have = self.cfg.model, self.splits.vocab_size
        if m.vocab_size is not None:
            if m.vocab_size < have:
                raise config.ConfigError("model.vocab_size", f"{m.vocab_size} is smaller than the data's {have}")
            return m.vocab_size
        return -(-have // m.vocab_multiple) * m.vocab_multiple

    def _resume(self) -> str | None:
        """Load the checkpoint trainer.resume names, if any; returns the W&B run id to continue.

        A run dir holds one run: a run that would not continue from its newest checkpoint (resume=never, or
        another checkpoint) is refused there, since its own checkpoints would mix with the earlier run's, to be
        pruned by step number or resumed later in place of its own.
        """
        resume = self.cfg.trainer.resume
        if self.env.is_main:
            checkpoint.remove_partial(self.ckpt_root)
        found = checkpoint.checkpoints(self.ckpt_root)
        if resume == "auto":
            path = found[-1] if found else None
        elif found and (resume == "never" or Path(resume).resolve() != found[-1].resolve()):
            raise config.ConfigError(
                "trainer.resume", f"{self.ckpt_root} holds checkpoints of an earlier run (newest {found[-1].name}); "
                "use trainer.resume=auto to continue it, or a new run dir (hydra.run.dir=...)")
        else:
            path = None if resume == "never" else Path(resume)
            if path and not (path / "trainer_state.pt").exists():
                raise config.ConfigError("trainer.resume", f"{path} is not a checkpoint directory")
        if path is None:
            return None
        try:
            state = checkpoint.read_trainer_state(path)
            self._compare_config(state["config"], path)
            checkpoint.load(path, self.model, self.optimizer, self.env.device,
                            restore_rng=state["world_size"] == self.env.world_size)
        except checkpoint.CheckpointError as e:
            if resume == "auto" and len(found) > 1:
                raise checkpoint.CheckpointError(path, f"{e.problem}; to resume from {found[-2].name}, "
                                                       f"move {path.name} out of {self.ckpt_root}") from e
            raise
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.position = state["step"], state["position"]
        self.best_val_loss, self.last_val_loss = state["best_val_loss"], state["last_val_loss"]
        self.last_attn_error = state.get("last_attn_error")  # absent from checkpoints before the probe
        if self.env.is_main:
            print(f"resumed from {path} at step {self.step} (saved by {state['world_size']} process(es))", flush=True)
        return state["wandb_id"]

    def _compare_config(self, saved: dict, path: Path) -> None:
        """Refuse another model than the checkpoint's; name any other setting that changed, and carry on."""
        if saved["model"]["vocab_size"] is None:  # saved before checkpoints held the vocabulary as built
            saved["model"]["vocab_size"] = self.resolved["model"]["vocab_size"]
        defaults = OmegaConf.structured(config.TrainConfig)
        changed = {key: f"{key} {old} -> {new}" for key, (old, new) in config_changes(saved, self.resolved).items()
                   if key != "trainer.resume"  # how to resume, not how to train
                   # a setting newer than the checkpoint, at its default (model.n_kv_head: None is the old model)
                   and not (old == UNSET and OmegaConf.select(defaults, key, default=UNSET) == new)}
        model = [change for key, change in changed.items() if key.startswith("model.")]
        if model:
            raise config.ConfigError("model", f"differs from checkpoint {path} (saved -> now): {', '.join(model)}; "
                                              "a new model needs a new run dir")
        if changed and self.env.is_main:
            print(f"warning: config changed since checkpoint {path} (saved -> now): {', '.join(changed.values())}",
                  flush=True)

    # --- one optimizer step -------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over this rank's share of the global batch, then the update; (loss, grad norm)."""
        indices = data.rank_slice(self.position, self.cfg.trainer.batch_size, self.env.rank, self.env.world_size)
        loss_sum = torch.zeros((), device=self.env.device)
        # PyTorch runs CUDA backward nodes on a worker thread per device; the Python in them (our kernels'
        # launches, compiled graphs' wrappers) measured ~1.6x slower there than on the caller's thread.
        with torch.autograd.set_multithreading_enabled(not self.cfg.trainer.backward_on_caller_thread):
            for m in range(self.accum):
                x, y = data.to_batch(self.splits.train, indices[m * self.micro:(m + 1) * self.micro], self.env.device)
                with distributed.grad_sync(self.model, m == self.accum - 1):
                    with self._autocast():
                        loss = self.model(x, y) / self.accum
                    loss.backward()
                loss_sum += loss.detach()
        clip = self.cfg.optim.grad_clip or math.inf  # inf: measure the norm, clip nothing
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used, for the log
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += self.cfg.trainer.batch_size
        return loss_sum, grad_norm

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the first n_eval_batches global batches of validation data, the same at any world size."""
        self.model.eval()
        total = torch.zeros((), device=self.env.device)
        batch = self.cfg.trainer.batch_size
        for b in range(self.n_eval_batches):
            indices = data.rank_slice(b * batch, batch, self.env.rank, self.env.world_size)
            for m in range(self.accum):
                x, y = data.to_batch(self.splits.val, indices[m * self.micro:(m + 1) * self.micro], self.env.device)
                with self._autocast():
                    total += self.model(x, y).float()
        self.model.train()
        total = distributed.all_reduce(total)
        return total.item() / (self.n_eval_batches * self.accum * self.env.world_size)

    # --- bookkeeping --------------------------------------------------------

    def _trainer_state(self) -> dict:
        return {"step": self.step, "position": self.position, "scheduler": self.scheduler.state_dict(),
                "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "last_attn_error": self.last_attn_error,
                "world_size": self.env.world_size, "config": self.resolved,
                "tokenizer": self.splits.tokenizer_state, "wandb_id": self.loggers.wandb_id}

    def save(self) -> Path:
        return checkpoint.save(self.ckpt_root, self.step, self.model, self.optimizer, self._trainer_state(),
                               self.env.device, self.cfg.trainer.keep_checkpoints)

    def _check_finite(self, loss: float, grad_norm: float) -> None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        last = checkpoint.latest(self.ckpt_root)
        raise TrainingDiverged(
            f"non-finite training loss {loss} (grad norm {grad_norm}) by step {self.step}; stopped. "
            f"Last good checkpoint: {last if last else 'none'}")

    def _pending_means(self) -> tuple[float, float]:
        """Mean loss and grad norm over the steps since the last log, averaged over ranks (one sync)."""
        pair = distributed.all_reduce(torch.stack([self._loss_sum, self._norm_sum]).float())
        loss, norm = (pair / (self._pending_steps * self.env.world_size)).tolist()
        return loss, norm

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether any rank got a stop signal (a collective: called at log steps only)."""
        flag = torch.tensor(float(stop.signum is not None), device=self.env.device)
        return bool(distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX).item())

    @contextmanager
    def _paused(self):
        """Keep evaluation and checkpoint time out of the tokens/s of the current log interval."""
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)  # queued training work belongs to the interval
        t0 = time.perf_counter()
        yield
        self._interval_start += time.perf_counter() - t0

    def _log_training(self) -> None:
        loss, grad_norm = self._pending_means()
        self._check_finite(loss, grad_norm)
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        now = time.perf_counter()
        steps, seconds = self._pending_steps, now - self._interval_start
        tokens_per_s = steps * self.tokens_per_step / seconds
        self._intervals += 1
        if self._intervals > 1:  # the first interval holds compilation and warm-up
            self._timed_tokens += steps * self.tokens_per_step
            self._timed_seconds += seconds
        flops_per_s = self.flops_per_token * tokens_per_s / self.env.world_size  # per device
        self.last_row = {
            "step": self.step, "tokens": self.position * self.cfg.data.seq_len, "loss": loss,
            "lr": self.step_lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
            "model_tflops_per_s": flops_per_s / 1e12,
            "mfu": flops_per_s / self.peak_flops if self.peak_flops else None,
            "attn_tflops_per_s": self.attn_tflops, "peak_mem_gb": metrics.peak_memory_gb(self.env.device),
            "step_time_ms": seconds / steps * 1e3, "elapsed_s": now - self._start,
        }
        self.loggers.log(self.last_row)
        self.console.metrics(self.last_row)
        self._loss_sum.zero_()
        self._norm_sum.zero_()
        self._pending_steps = 0
        self._interval_start = time.perf_counter()

    def _log_evaluation(self) -> None:
        self.last_val_loss = self.evaluate()
        self.best_val_loss = min(self.best_val_loss, self.last_val_loss)
        row = {"step": self.step, "tokens": self.position * self.cfg.data.seq_len,
               "val_loss": self.last_val_loss, "best_val_loss": self.best_val_loss}
        message = f"step {self.step}: val loss {self.last_val_loss:.4f} (best {self.best_val_loss:.4f})"
        n = min(self.cfg.trainer.attn_error_sequences, len(self.splits.val))
        if n:  # every rank: an FSDP forward gathers each block's weights from all of them
            x, _ = data.to_batch(self.splits.val, range(n), self.env.device)
            row.update(numerics.attention_errors(self.raw_model, x, self._autocast()))
            self.last_attn_error = row["attn_rel_rmse_max"]
            message += f", attention error vs float64 {self.last_attn_error:.2e} (worst layer)"
        self.loggers.log(row)
        self.console.print(message)

    def _save_checked(self) -> Path:
        if self._pending_steps:  # never checkpoint weights that a NaN may have reached
            self._check_finite(*self._pending_means())
        return self.save()

    def fit(self) -> dict:
        t = self.cfg.trainer
        summary_file = self.run_dir / SUMMARY_FILE
        if self.step >= t.max_steps:  # started again after it finished: its summary and W&B run stay as they are
            if self.env.is_main:
                print(f"run already complete at step {self.step} (trainer.max_steps={t.max_steps}); "
                      f"nothing to do", flush=True)
            return json.loads(summary_file.read_text()) if summary_file.exists() else {}
        self.loggers = Loggers(self.cfg.logger, self.run_dir, self.resolved, self.env.is_main, self.wandb_id)
        self.console = Console(self.env.is_main, t.progress, t.max_steps, self.step)
        self.console.print(
            f"run dir {self.run_dir}: {self.raw_model.num_params(False) / 1e6:.2f}M parameters, attention "
            f"{attention.describe(self.cfg.attention)}, {self.strategy} x{self.env.world_size} on {self.env.device}, "
            f"micro-batch {self.micro} x {self.accum} accumulation, {'bf16' if self.bf16 else 'fp32'}")
        dev = self.env.device
        self._loss_sum, self._norm_sum = torch.zeros((), device=dev), torch.zeros((), device=dev)
        self._pending_steps, self._intervals, self._timed_tokens, self._timed_seconds = 0, 0, 0, 0.0
        self._start = self._interval_start = time.perf_counter()
        self.last_row = {}
        try:
            self._train_loop()
        except BaseException:
            self.loggers.finish({}, exit_code=1)
            raise
        finally:
            self.console.close()
        summary = self._summary(time.perf_counter() - self._start)
        if self.env.is_main:
            summary_file.write_text(json.dumps(summary, indent=2) + "\n")
        self.loggers.finish(summary)
        return summary

    def _train_loop(self) -> None:
        t = self.cfg.trainer
        with StopRequest() as stop:
            while self.step < t.max_steps:
                loss, grad_norm = self._train_step()
                self._loss_sum += loss
                self._norm_sum += grad_norm
                self._pending_steps += 1
                self.console.step()
                done = self.step == t.max_steps
                # One process polls its flag every step; ranks agree on it at log steps (a collective
                # every step would cost a host-device sync).
                stopping = not torch.distributed.is_initialized() and stop.signum is not None
                if self.step % t.log_interval == 0 or done:
                    self._log_training()
                    stopping = self._stop_agreed(stop)
                if t.eval_interval and (self.step % t.eval_interval == 0 or done):
                    with self._paused():
                        self._log_evaluation()
                saved = None
                periodic = t.checkpoint_interval and self.step % t.checkpoint_interval == 0
                if t.save_checkpoints and (periodic or done or stopping):
                    with self._paused():
                        saved = self._save_checked()
                if stopping:
                    message = f"stopped by {signal_name(stop.signum)} at step {self.step}; checkpoint: {saved}"
                    raise Stopped(stop.signum or signal.SIGTERM, message)

    def _summary(self, wall_time: float) -> dict:
        """Whole-run figures; tokens/s and MFU leave out the first log interval (compilation, warm-up)."""
        tokens_per_s = (self._timed_tokens / self._timed_seconds if self._timed_seconds
                        else self.last_row.get("tokens_per_s"))
        flops_per_s = self.flops_per_token * tokens_per_s / self.env.world_size if tokens_per_s else None
        return {
            "steps": self.step, "tokens": self.position * self.cfg.data.seq_len,
            "final_loss": self.last_row.get("loss"),
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "last_val_loss": self.last_val_loss, "wall_time_s": wall_time, "tokens_per_s": tokens_per_s,
            "model_tflops_per_s": flops_per_s / 1e12 if flops_per_s else None,
            "mfu": flops_per_s / self.peak_flops if flops_per_s and self.peak_flops else None,
            "attn_tflops_per_s": self.attn_tflops, "attn_rel_rmse_max": self.last_attn_error,
            "peak_mem_gb": metrics.peak_memory_gb(self.env.device), "n_params": self.raw_model.num_params(False),
            "world_size": self.env.world_size,
            "strategy": self.strategy, "attention": self.cfg.attention.name, "device": str(self.env.device),
            "wandb_project": self.cfg.logger.project, "wandb_group": self.cfg.logger.group,
            "wandb_id": self.loggers.wandb_id,
        }


UNSET = "(unset)"  # config_changes: a key one of the two configs does not have


def config_changes(saved: dict, now: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted key: (saved value, value now)} for each setting that differs between two resolved configs."""
    changed = {}
    for key in saved.keys() | now.keys():
        old, new = saved.get(key, UNSET), now.get(key, UNSET)
        if isinstance(old, dict) and isinstance(new, dict):
            changed.update(config_changes(old, new, f"{prefix}{key}."))
        elif old != new:
            changed[prefix + key] = (old, new)
    return dict(sorted(changed.items()))


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a stop request on another rank"
