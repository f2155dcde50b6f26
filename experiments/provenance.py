"""Where a result came from: date, command, machine, library versions and commit.

Every table, plot and report the experiments write carries this record, so a
number can always be traced back to the run that produced it.
"""
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _triton_version():
    try:
        import triton
    except ImportError:
        return "absent"
    return triton.__version__


def _git(root, *args, env=None):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=True,
                          env=env).stdout.strip()


def worktree_tree(root=REPO_ROOT):
    """The git tree id of the files as they are, tracked or not (ignored ones left out), through a scratch index.

    It equals the tree of the commit whose files these are (`git log --format='%h %T'` lists them), whatever
    commit this copy's .git points at: a GPU node's copy of the tree may carry a stale .git.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(tmp, "index")}
        _git(root, "add", "--all", env=env)
        return _git(root, "write-tree", env=env)


def git_commit(root=REPO_ROOT):
    """HEAD's short id; where the files differ from it (new files too), '+dirty' and the files' own tree id."""
    # A copy of the tree without .git (a remote GPU node) names its commit through the environment.
    if os.environ.get("FP8TRAIN_COMMIT"):
        return os.environ["FP8TRAIN_COMMIT"]
    try:
        head = _git(root, "rev-parse", "--short", "HEAD")
        if not _git(root, "status", "--porcelain"):
            return head
        return f"{head}+dirty tree {worktree_tree(root)[:12]}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()})"


def collect(command=None):
    """The provenance record as a flat dict of strings (it goes into CSV columns and W&B configs)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "gpu": device_name(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "python": platform.python_version(),
        "commit": git_commit(),
        "command": command if command is not None else shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def markdown(record):
    """Provenance as a markdown bullet list (placed at the top of every markdown output)."""
    return "\n".join(f"- **{key}**: `{value}`" for key, value in record.items())


def one_line(record):
    """Short form for plot footers."""
    return (f"{record['gpu']} | torch {record['torch']} | triton {record['triton']} | "
            f"cuDNN {record['cudnn']} | {record['date']} | {record['command']}")
