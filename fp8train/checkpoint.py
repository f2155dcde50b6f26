"""Atomic, resharding checkpoints through torch.distributed.checkpoint (DCP).

A checkpoint is a directory `<run_dir>/checkpoints/step_NNNNNNN/` holding the DCP shards of
{"model", "optim"} (keyed by parameter name, so any world size, wrapper or a single process
can load them), `trainer_state.pt` (step, data position, scheduler, resolved config, ...)
and `rng_rank<R>.pt` per rank. Every rank writes into `.tmp-step_NNNNNNN/`; after a barrier
rank 0 renames it: a crash mid-write leaves only a temp directory, never a half checkpoint.
The same code runs without a process group (one process).
"""
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group that it assumes one process: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(root: Path, step: int, model, optimizer, trainer_state: dict, device: torch.device, keep: int) -> Path:
    """Collective: write checkpoint `step` and keep the newest `keep`; returns its directory."""
    final, tmp = root / f"step_{step:07d}", root / f"{TMP_PREFIX}step_{step:07d}"
    rank = _rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(rng_state(device), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    _barrier()
    if rank == 0:
        if final.exists():  # the same step again: a run restarted with trainer.resume=never
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    _barrier()
    return final


def remove_partial(root: Path) -> None:
    """Delete temp directories left by a crash during a save (rank 0, before training)."""
    if root.is_dir():
        for p in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)


def read_trainer_state(path: Path) -> dict:
    return torch.load(Path(path) / "trainer_state.pt", weights_only=True)


def load(path: Path, model, optimizer, device: torch.device, restore_rng: bool) -> dict:
    """Collective: load model and optimizer (resharding as needed); returns the trainer state.

    RNG states are restored only when asked (same world size): otherwise ranks do not map.
    """
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if restore_rng:
        set_rng_state(torch.load(path / f"rng_rank{_rank()}.pt", weights_only=True), device)
    return read_trainer_state(path)


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Load only the weights into a plain module, in one process: for evaluation and export."""
    state = {"model": model.state_dict()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(path))
    model.load_state_dict(state["model"])
