"""Helpers shared by the framework's tests (imported as a top-level module: its name is unique on purpose)."""
import os
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
# Small enough that a step takes milliseconds on one CPU core.
TINY = ["model.n_layer=2", "model.n_head=2", "model.d_model=32", "model.block_size=32",
        "trainer.batch_size=8", "optim.warmup_steps=2", "trainer.log_interval=1", "trainer.eval_interval=0",
        "trainer.progress=false",
        "logger=jsonl"]


def data_dir() -> Path:
    env = os.environ.get("FP8TRAIN_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def compose_raw(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def spawn_worker(rank: int, world: int, port: int, jobs: list) -> None:
    """torch.multiprocessing.spawn target: run training `jobs` [(overrides, run_dir)] as rank `rank` of `world`,
    each joining a fresh gloo group through the torchrun environment variables, as under torchrun."""
    from fp8train import config, loop

    for j, (overrides, run_dir) in enumerate(jobs):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port + j))
        loop.run(config.validate(compose_raw(overrides)), run_dir)
