"""Fixtures for the framework's tests: the shared tiny-Shakespeare file, a token cache per session, and
configs composed through Hydra exactly as `fp8train-train` composes them."""
from pathlib import Path

import pytest
from fp8train_testing import TINY, compose_raw, data_dir as find_data_dir

from fp8train import config


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = find_data_dir()
    if not (d / "tinyshakespeare.txt").exists():
        pytest.skip(f"no tinyshakespeare.txt in {d}: set FP8TRAIN_DATA_DIR to the directory holding it")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process runs are one plain process, whatever launched pytest."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    # The flash/fp8 backends pin KERNELS_IMPL process-wide; undo it so kernel tests keep their own dispatch.
    monkeypatch.setenv("KERNELS_IMPL", "auto")


@pytest.fixture
def make_cfg(data_dir, cache_dir):
    """Validated config of the tiny test model on Shakespeare, plus `overrides`."""

    def make(*overrides):
        base = [f"data.data_dir={data_dir}", f"data.cache_dir={cache_dir}", *TINY]
        return config.validate(compose_raw(base + list(overrides)))

    return make
