"""Atomic, resharding checkpoints through torch.distributed.checkpoint (DCP).

A checkpoint is a directory `<run_dir>/checkpoints/step_NNNNNNN/` holding the DCP shards of
{"model", "optim"} (keyed by parameter name, so any world size, wrapper or a single process
can load them), `trainer_state.pt` (step, data position, scheduler, resolved config, ...)
and `rng_rank<R>.pt` per rank. Every rank writes into `.tmp-step_NNNNNNN/`; after a barrier
rank 0 renames it, files and directories fsynced: a crash or power cut mid-write leaves only a
temp directory, never a half checkpoint.
The same code runs without a process group (one process). A missing or damaged file raises
CheckpointError, whose one-line message names the checkpoint and the file.
"""
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: a file is missing or damaged."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path}: {problem}")
        self.problem = problem


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


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


def _fsync(path: Path) -> None:
    """Force a file's data, or a directory's entries (files created or renamed in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    # DCP fsyncs its own files; ours, and the directory entries, must be on disk before the rename
    # publishes the checkpoint, or a power cut could leave a step_ directory with empty files.
    torch.save(rng_state(device), tmp / f"rng_rank{rank}.pt")
    _fsync(tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(trainer_state, tmp / "trainer_state.pt")
        _fsync(tmp / "trainer_state.pt")
    _barrier()
    if rank == 0:
        _fsync(tmp)
        # Never replaces a checkpoint: rename fails on a non-empty directory, and a run only saves steps past
        # its checkpoints (it resumes from the newest, or starts in an empty directory: loop.Trainer._resume).
        tmp.rename(final)
        _fsync(root)  # the rename itself
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    _barrier()
    return final


def remove_partial(root: Path) -> None:
    """Delete temp directories left by a crash during a save (rank 0, before training)."""
    if root.is_dir():
        for p in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)


def _torch_load(path: Path, name: str):
    if not (path / name).is_file():
        raise CheckpointError(path, f"missing {name}")
    try:
        return torch.load(path / name, weights_only=True)
    except Exception as e:  # empty or truncated: torch.load raises one of several types
        raise CheckpointError(path, f"{name} is damaged ({_reason(e)})") from e


def read_trainer_state(path: Path) -> dict:
    return _torch_load(Path(path), "trainer_state.pt")


def load(path: Path, model, optimizer, device: torch.device, restore_rng: bool) -> None:
    """Collective: load model and optimizer (resharding as needed), and this rank's RNG states when asked
    (same world size: otherwise ranks do not map). CheckpointError if a file is missing or damaged."""
    path = Path(path)
    # Checked up front and for every rank, so that all ranks fail alike; DCP would also log tracebacks.
    rng_files = [f"rng_rank{r}.pt" for r in range(_world_size())] if restore_rng else []
    missing = [name for name in (".metadata", *rng_files) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(missing)}")
    try:
        dcp.FileSystemReader(path).read_metadata()
    except Exception as e:
        raise CheckpointError(path, f".metadata is damaged ({_reason(e)})") from e
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=path)
    except CheckpointException as e:  # raised on every rank, with each failed rank's error
        rank, (error, _) = next(iter(e.failures.items()))
        raise CheckpointError(path, f"the model/optimizer shards are damaged (rank {rank}: {_reason(error)})") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if restore_rng:
        set_rng_state(_torch_load(path, f"rng_rank{_rank()}.pt"), device)


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Load only the weights into a plain module, in one process: for evaluation and export."""
    state = {"model": model.state_dict()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(path))
    model.load_state_dict(state["model"])
