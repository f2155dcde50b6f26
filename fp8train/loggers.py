"""Where metrics go (rank 0 only): metrics.jsonl in the run dir, a W&B run, and the console.

`metrics.jsonl` holds one JSON object per line: training rows (step, tokens, loss, lr,
grad_norm, tokens_per_s, mfu, ...) and evaluation rows (step, tokens, val_loss, ...).
"""
import json
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"


class JsonlLog:
    def __init__(self, run_dir: Path):
        self._file = open(run_dir / METRICS_FILE, "a", buffering=1)  # line-buffered: readable while training

    def log(self, row: dict) -> None:
        # NaN/inf become null: strict JSON for every reader.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(clean) + "\n")

    def finish(self, summary: dict, exit_code: int) -> None:
        self._file.close()


class WandbLog:
    """A W&B run inside the run dir; offline unless logger.mode says otherwise (`wandb sync` uploads later)."""

    def __init__(self, cfg, run_dir: Path, config: dict, run_id: str | None):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            project=cfg.project, group=cfg.group, tags=list(cfg.tags), job_type=cfg.job_type, name=cfg.run_name,
            mode=cfg.mode, dir=str(run_dir), config=config, id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=not cfg.system_stats, disable_git=True),
        )
        self.id = self.run.id

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])

    def finish(self, summary: dict, exit_code: int) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish(exit_code=exit_code)


class Loggers:
    """The configured sinks; a rank other than 0 gets none of them."""

    def __init__(self, cfg, run_dir: Path, config: dict, enabled: bool, wandb_id: str | None):
        self.sinks = []
        self.wandb_id = wandb_id
        if enabled and cfg.name in ("jsonl", "wandb"):
            self.sinks.append(JsonlLog(run_dir))
        if enabled and cfg.name == "wandb":
            wandb_log = WandbLog(cfg, run_dir, config, wandb_id)
            self.wandb_id = wandb_log.id
            self.sinks.append(wandb_log)

    def log(self, row: dict) -> None:
        for sink in self.sinks:
            sink.log(row)

    def finish(self, summary: dict, exit_code: int = 0) -> None:
        """Close every sink (once); a non-zero exit code marks a failed or stopped run."""
        for sink in self.sinks:
            sink.finish(summary, exit_code)
        self.sinks = []


class Console:
    """A progress bar with loss and tokens/s on a terminal, else plain lines (log files); silent off rank 0."""

    def __init__(self, enabled: bool, bar: bool, total: int, initial: int):
        self.enabled, self.bar = enabled, bar and enabled and sys.stderr.isatty()
        self._tqdm = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) if self.bar else None

    def step(self) -> None:
        if self._tqdm is not None:
            self._tqdm.update(1)

    def metrics(self, row: dict) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.3g}", refresh=False)
        else:
            self.print(f"step {row['step']}: loss {row['loss']:.4f}, lr {row['lr']:.3g}, "
                       f"{row['tokens_per_s']:.4g} tokens/s, {row['step_time_ms']:.1f} ms/step")

    def print(self, message: str) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
