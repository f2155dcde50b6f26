"""The warp-specialized Triton forward compiles for sm_90 on a machine without a GPU, split the way it must be.

Triton 3.6 drops `warp_specialize=True` silently where it cannot apply it, and its data partitioning decides which
query rows each consumer warpgroup takes; a Triton change to either shows up here before any GPU run. Compiles run
in a child process (`python -m kernels.triton.ws_report`), since this one may run Triton in interpreter mode.
"""
import pytest

from gluon_reports import compile_reports

SMEM_LIMIT = 227 * 1024  # sm_90 opt-in shared memory per block


@pytest.fixture(scope="module")
def reports():
    return compile_reports("kernels.triton.ws_report", timeout=300)


# Persistent (Tiles.persistent): the pass specializes across the tile loop too; the epilogue's O buffer costs
# shared memory on top (hd128: 197 -> 224 KB).
@pytest.mark.parametrize("name", ["hd128_128_2_full", "hd128_128_2_causal", "hd128_128_2_full_poly8_persistent",
                                  "hd256_64_1_full_persistent"])
def test_warp_specialized_forward_splits_rows_between_two_consumers(reports, name):
    r = reports[name]
    assert "error" not in r, r.get("error")
    assert r["warp_specialize_ops"] == 1 and r["num_warps"] == 12, r  # a producer and two consumer warpgroups
    assert r["consumers"] == 2, r
    # Each consumer's LSE store and causal bound come from its own 64 rows, not from a twice-shifted start.
    assert r["consumer_rows"] == [[[0, 64]], [[64, 128]]], r
    assert r["splats_store_offset"] == [False, False], r
    assert r["spill_stores"] == 0 and r["shared_bytes"] <= SMEM_LIMIT, r


def test_warp_specialized_forward_keeps_the_exp2_polynomial(reports):
    """Tiles.exp2_poly 8 on the non-causal one-loop forward: still split in two, one exp2 in 8 on the FMA pipe."""
    r, plain = reports["hd128_128_2_full_poly8"], reports["hd128_128_2_full"]
    assert "error" not in r, r.get("error")
    assert r["warp_specialize_ops"] == 1 and r["consumers"] == 2, r
    assert r["poly_exp2"] > 0 and r["poly_exp2"] + r["mufu_exp2"] == plain["mufu_exp2"], (r, plain)
    assert r["spill_stores"] == 0, r
    # A causal (masked) loop keeps every exp2 on the MUFU (the polynomial is tuned for unmasked loops only).
    assert reports["hd128_128_2_causal_poly8"]["poly_exp2"] == 0


@pytest.mark.parametrize("mask", ["full", "causal"])
def test_backward_launches_dq_beside_dkdv(reports, mask):
    """BwdTiles.dq_early at hd128: the dK/dV kernel lets the dQ kernel launch and stays warp-specialized; the dQ
    kernel is a programmatic dependent launch that waits for dK/dV before its store (else the backward could
    return, to the stream, before dK/dV is written)."""
    dkdv, dq = reports[f"bwd_dkdv_hd128_{mask}"], reports[f"bwd_dq_hd128_{mask}"]
    assert dkdv["warp_specialize_ops"] == 1 and dkdv["num_warps"] == 12, dkdv
    assert dkdv["launch_dependents"] == 1 and dkdv["waits"] == 0 and not dkdv["launch_pdl"], dkdv
    assert dq["launch_pdl"] and dq["launch_dependents"] == 0, dq
    assert dq["waits"] == 1 and dq["wait_before_store"], dq
