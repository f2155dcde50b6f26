"""The tile candidates of experiments.tune_gluon are valid TileConfigs, so a typo costs no device time."""
import pytest
import torch

from experiments.tune_gluon import CANDIDATES, GROUP_ORDER, KV_BLOCK_KEY, _call_kwargs

CASES = [(group, name, dtype, d, changes) for group in GROUP_ORDER for name, dtype, d, changes in CANDIDATES[group]]


def test_every_group_is_ordered_and_names_are_unique():
    assert sorted(GROUP_ORDER) == sorted(CANDIDATES)
    keys = [(name, dtype, d) for _, name, dtype, d, _ in CASES]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("group, name, dtype, d, changes", CASES, ids=[f"{g}-{n}-{dt}{d}" for g, n, dt, d, _ in CASES])
def test_candidate_builds_its_variant(group, name, dtype, d, changes, causal):
    from kernels.gluon.forward import Variant
    kwargs = _call_kwargs(dtype, d, causal, changes)
    tile = kwargs["tile"]
    for field, value in changes.items():
        if field != KV_BLOCK_KEY:
            assert getattr(tile, field) == value, (field, tile)
    # Variant checks what a TileConfig alone cannot (lazy rescale on FP8) and works out the launch's constants.
    if dtype == "fp8":
        Variant(torch.float8_e4m3fn, d, causal, tile_override=tile, out_dtype=torch.bfloat16, q_scale_block=128,
                kv_scale_block=kwargs["config"].block_n, v_wgmma_keys=True).constexprs
    else:
        Variant(torch.bfloat16, d, causal, tile_override=tile).constexprs
