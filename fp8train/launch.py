"""`trainer.parallel.nproc_per_node=N` from a plain launch: rerun this command as N torchrun workers.

torchrun's own launcher (elastic_launch) starts the workers, watches them, and ends them all
when one fails, reporting its rank and error.
"""
import sys
import uuid

from torch.distributed.launcher.api import LaunchConfig, elastic_launch

MODULE = "fp8train.train"


def relaunch(nproc: int, overrides: list[str], run_dir: str) -> None:
    """Run `python -m fp8train.train <overrides>` on `nproc` local processes, all writing into `run_dir`."""
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    # Workers reuse this run dir, and leave its .hydra/ record (written here) as it is.
    args = ["-m", MODULE, *overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    elastic_launch(launch, sys.executable)(*args)
