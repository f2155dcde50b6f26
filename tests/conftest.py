"""Shared test setup: GPU markers skip cleanly without CUDA; on CPU, Triton kernels run in its interpreter."""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
IS_HOPPER = HAS_CUDA and torch.cuda.get_device_capability() == (9, 0)

# Must be set before any @triton.jit decorator runs, i.e. before `kernels` is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_hopper = pytest.mark.skip(reason="needs an sm_90 (Hopper) GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "hopper" in item.keywords and not IS_HOPPER:
            item.add_marker(skip_hopper)
