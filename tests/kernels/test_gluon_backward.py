"""The Gluon (Hopper) attention backward.

CPU: every variant compiles for sm_90a (in a child process, `python -m
kernels.gluon.bwd_report`: this process may run Triton in interpreter mode)
into the instructions FA3's backward relies on: wgmma for all five products,
TMA loads and stores, float32 atomic adds or TMA reduce-adds for dQ.

GPU (`hopper`): dq/dk/dv against float64 autograd of the reference on fresh
random inputs (odd seqlens, causal both ways, GQA/MQA, head dims 64/128/256),
FA's criterion: error at most 2x PyTorch's own bf16/fp16 error plus the
reference's rounding to the dtype, on the max and the relative L2 error; each
case with the tile the launch picks, the head dim's table tile, its other way of
adding dQ, the causal masked blocks in the main loop, and at hd64 the few-keys
tile; the causal grid's program order over several L2 sections, the last one
partial.
"""
from dataclasses import replace

import pytest
import torch

from gluon_reports import compile_reports

SMEM_LIMIT = 227 * 1024
BARRIER_SLACK = 1024
# Split warpgroups: a few scalars (barrier addresses, loop bounds) that the warp-specialized partitions keep in
# local memory (the 32-register load/reduce warpgroup most); an accumulator there would be hundreds of accesses.
MAX_SPLIT_LOCAL_ACCESSES = 32
# 128 query rows a step (hd64): S^T and dP^T take twice the registers, and ptxas keeps a few loop scalars in local
# memory around the products, up to ~75 accesses in the causal kernels (none or 4 non-causal); the tile measured
# faster than the 64-row one all the same (docs/tuning-gluon.md, B9). An accumulator there would be hundreds.
MAX_M128_LOCAL_ACCESSES = 96
# 64 keys (hd256), causal: three scalars stored before the mask loops and loaded after them (9 accesses on session
# 41's compile), none inside a loop.
MAX_N64_LOCAL_ACCESSES = 16
# At most one wgmma wait per product group and a hand-over: ptxas serializing the products (a wait after every
# wgmma) would leave the wgmma count unchanged but this count at 32.
MAX_WGMMA_WAITS_PER_PARTITION = 5


def _tiles():
    from kernels.gluon.bwd_report import VARIANTS, variant_name
    return {variant_name(v): v.tile for v in VARIANTS}


TILES = _tiles()  # report name -> BwdTile, for every variant kernels.gluon.bwd_report compiles


@pytest.fixture(scope="module")
def reports():
    return compile_reports("kernels.gluon.bwd_report", timeout=600)


@pytest.mark.parametrize("name", sorted(TILES))
def test_backward_compiles_to_wgmma_tma_and_atomics(reports, name):
    assert name in reports, f"no report for {name}: {sorted(reports)}"
    r = reports[name]
    assert "error" not in r, r.get("error")
    d = int(name.split("_hd")[1].split("_")[0])
    tile = TILES[name]
    parts = r["mma_partitions"]
    assert parts == (2 if tile.split_warpgroups else 1), r
    # The causal mask loop is a second copy of the loop body.
    bodies = 2 if name.endswith("_ml") else 1
    assert r["sass_wgmma_waits"] <= bodies * parts * MAX_WGMMA_WAITS_PER_PARTITION, "ptxas serialized the wgmmas"
    keys = tile.block_n // parts
    rows = tile.block_m
    # m64nNk16 per warpgroup: S^T and dP^T d/16 steps each, dV and dK rows/16, dQ_partial (over the partition's
    # keys) keys/16 per 64 rows a warpgroup holds; each MMA partition has its own copy of the code. (64 keys: the
    # warpgroups split the N of every product, so the same counts.)
    row_tiles = rows // 64 if parts == 2 else 1  # one 8-warp partition: each warpgroup takes 64 of 128 rows
    assert r["ptx_wgmma"] == bodies * parts * (2 * d // 16 + 2 * rows // 16 + row_tiles * keys // 16), r
    assert r["sass_gmma"] == r["ptx_wgmma"], "wgmma must survive ptxas as HGMMA"
    assert r["sass_tma_load"] > 0 and r["sass_tma_store"] > 0, r
    dq_bytes = rows * d * 4
    # One TMA reduce-add per MMA partition's hand-over, nothing on the load/store unit; Gluon issues a box wider than
    # 128 columns as several (hd256: two).
    reduces = parts * max(1, d // 128)
    if tile.dq_tma_reduce:
        assert r["sass_f32_atomics"] == 0 and r["sass_tma_reduces"] == reduces, r
    elif tile.warp_specialize:
        # The worker warpgroup reads dQ_partial back 4 floats per thread over 128 threads (parts summed first).
        assert r["sass_f32_atomics"] == dq_bytes // 16 // 128, r
    if tile.warp_specialize:
        assert r["num_warps"] == 12 and 240 in r["setmaxnreg"] and 32 in r["setmaxnreg"], r
        assert r["sass_tma_reduces"] == (reduces if tile.dq_tma_reduce else 0), r
        spill_limit = bodies * max(MAX_SPLIT_LOCAL_ACCESSES if tile.split_warpgroups else 0,
                                   MAX_M128_LOCAL_ACCESSES if rows == 128 else 0)
        if tile.block_n == 64:
            assert r["sass_key_loops_local_mem"] == 0, "the 64-key loops must not spill"
            spill_limit = MAX_N64_LOCAL_ACCESSES
        assert r["sass_local_mem"] <= spill_limit, "the MMA warpgroups must not spill"
    else:
        # Two floats per atomic over 256 threads, one copy for whole blocks and one masked.
        assert r["sass_f32_atomics"] == bodies * 2 * (dq_bytes // 8 // 256), r
        assert r["num_warps"] == 8 and not r["setmaxnreg"], r
    ring = r["stages"] * (2 * rows * d * 2 + 2 * rows * 4)
    # K and V, the ring, two dS^T buffers (and two of P^T with 64 keys), the dQ_partial hand-overs (none of their
    # own when dQ_partial is handed over in the ring slots).
    p_t = 2 * keys * rows * 2 if tile.block_n == 64 else 0
    hand_over = parts * dq_bytes if tile.warp_specialize and not tile.dq_in_slot else 0
    expected = 2 * tile.block_n * d * 2 + ring + 2 * keys * rows * 2 + p_t + hand_over
    assert expected <= r["shared_bytes"] <= min(expected + BARRIER_SLACK, SMEM_LIMIT), r


def test_causal_launches_with_few_keys_take_the_few_keys_tile():
    from kernels.gluon.bwd import BWD_TILES, FEW_KEYS_CAUSAL_BWD_TILES, default_tile
    max_keys, few = FEW_KEYS_CAUSAL_BWD_TILES[64]
    assert default_tile(64, True, max_keys) == few and default_tile(64, True, 1) == few
    assert default_tile(64, True, max_keys + 1) == BWD_TILES[64]
    assert default_tile(64, False, max_keys) == BWD_TILES[64]
    assert default_tile(128, True, 128) == BWD_TILES[128]


def _errors(g, r):
    diff = g.double() - r.double()
    return diff.abs().max().item(), (diff.norm() / r.double().norm()).item()


GPU_CASES = [  # batch, seqlen_q, seqlen_k, nheads, nheads_kv, head_dim, causal
    (2, 113, 203, 4, 4, 128, True),
    (1, 1000, 517, 6, 2, 128, True),  # causal: the first 483 query rows see no key
    (1, 517, 1000, 4, 1, 64, True),
    (2, 777, 777, 4, 2, 64, True),
    (1, 1000, 517, 6, 2, 64, True),
    (1, 1300, 1300, 4, 2, 64, True),  # past the few-keys tile's 1024 keys
    (1, 1101, 1101, 4, 2, 128, False),
    (2, 256, 256, 2, 2, 64, False),
    (1, 77, 300, 8, 2, 64, False),
    (1, 1000, 517, 4, 2, 256, True),  # hd256: 64 keys a program, P^T through shared memory
    (2, 333, 777, 2, 1, 256, True),
    (1, 517, 1000, 4, 4, 256, False),
]


@pytest.mark.gpu
@pytest.mark.hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "b{}_sq{}_sk{}_h{}_hkv{}_d{}_causal{}".format(*c))
# The tile attention_backward picks (default_tile), the head dim's table tile, its other way of adding dQ (atomics
# or TMA reduce-adds), the causal masked blocks in the main loop (no mask loop), and at hd64 the few-keys tile.
@pytest.mark.parametrize("variant", ["picked", "table", "other_dq_add", "no_mask_loop", "few_keys"])
def test_gpu_backward_matches_float64(case, dtype, variant):
    from kernels.gluon.bwd import BWD_TILES, FEW_KEYS_CAUSAL_BWD_TILES, attention_backward
    from kernels.gluon.bwd_report import alternative_tiles
    from kernels.reference import attention_ref
    b, sq, sk, h, h_kv, d, causal = case
    other_add = alternative_tiles(d)["dqatomic" if BWD_TILES[d].dq_tma_reduce else "dqtma"]
    tile = {"picked": None, "table": BWD_TILES[d], "no_mask_loop": replace(BWD_TILES[d], mask_loop=False),
            "other_dq_add": other_add}.get(variant)
    if variant == "no_mask_loop" and not causal:
        pytest.skip("the mask loop is causal only")
    if variant == "few_keys":
        if d not in FEW_KEYS_CAUSAL_BWD_TILES:
            pytest.skip("no few-keys tile at this head dim")
        tile = FEW_KEYS_CAUSAL_BWD_TILES[d][1]
    q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
    k = torch.randn(b, sk, h_kv, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    out, lse = attention_ref(q, k, v, causal, dtype=torch.float32)
    poison = [torch.full_like(t, float("nan")) for t in (k, v)]  # freed blocks the allocator hands to dk, dv
    del poison
    grads = attention_backward(dout, q, k, v, out.to(dtype), lse, d ** -0.5, causal, tile=tile)
    _assert_close_to_float64(grads, q, k, v, dout, causal)


@pytest.mark.gpu
@pytest.mark.hopper
@pytest.mark.parametrize("case", [GPU_CASES[1], GPU_CASES[6], GPU_CASES[10]],
                         ids=lambda c: "b{}_sq{}_sk{}_h{}_hkv{}_d{}_causal{}".format(*c))
def test_gpu_backward_hands_dq_over_in_float32(case):
    """dq_float32: dQ's float32 accumulator itself, unrounded (the FP8 backward rotates it before its one rounding)."""
    from kernels.gluon.bwd import attention_backward
    from kernels.reference import attention_ref
    b, sq, sk, h, h_kv, d, causal = case
    q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, h_kv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    out, lse = attention_ref(q, k, v, causal, dtype=torch.float32)
    dq, dk, dv = attention_backward(dout, q, k, v, out.to(q.dtype), lse, d ** -0.5, causal, dq_float32=True)
    assert dq.dtype == torch.float32 and dq.shape == q.shape
    # Bottom-right causal: the first sq - sk query rows see no key, and their dq is exactly 0.
    first_seen = max(0, sq - sk) if causal else 0
    assert not dq[:, :first_seen].any()
    seen = dq[:, first_seen:]
    assert (seen != seen.to(torch.bfloat16).float()).float().mean().item() > 0.9  # more bits than bf16 holds
    _assert_close_to_float64((dq.to(q.dtype), dk, dv), q, k, v, dout, causal)


def _assert_close_to_float64(grads, q, k, v, dout, causal):
    from kernels.reference import attention_ref_grads
    dtype = q.dtype
    ref = attention_ref_grads(q, k, v, dout, causal, torch.float64)[2:]
    low = attention_ref_grads(q, k, v, dout, causal, dtype)[2:]
    for name, g, r, lo, t in zip("qkv", grads, ref, low, (q, k, v)):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert torch.isfinite(g).all(), name
        err, rel = _errors(g, r)
        err_lo, rel_lo = _errors(lo, r)
        rounding = (r.to(dtype).double() - r).abs().max().item()
        assert err <= 2 * err_lo + 2 * rounding, f"d{name}: max error {err} vs PyTorch {err_lo}"
        assert rel <= 2 * rel_lo + 1e-5, f"d{name}: relative error {rel} vs PyTorch {rel_lo}"


# (seqlen_q, head_dim, group, MiB of 16-bit Q and dO plus float32 dQ per kv head, heads per section in 40 MiB)
SECTIONS = [(2048, 128, 1, 2, 16), (16384, 128, 1, 16, 2), (4096, 64, 4, 8, 4), (1000, 128, 3, 2.9296875, 8),
            (300000, 256, 8, 4687.5, 1)]


@pytest.mark.parametrize("seqlen_q,head_dim,group,mib,heads", SECTIONS)
def test_causal_sections_fill_the_l2_budget(seqlen_q, head_dim, group, mib, heads):
    """Sections of the causal backward's program order: a power of two of (batch, kv head)s whose Q, dO and dQ
    accumulator fit the L2 budget, and twice as many would not (one head at least)."""
    from kernels.triton.bwd import CAUSAL_SECTION_L2_BYTES, causal_section_heads
    n = causal_section_heads(seqlen_q, head_dim, group, 2 * 2 + 4)
    assert n == heads
    per_head = mib * 2**20
    assert n & (n - 1) == 0
    assert n * per_head <= CAUSAL_SECTION_L2_BYTES or n == 1
    assert 2 * n * per_head > CAUSAL_SECTION_L2_BYTES


@pytest.mark.gpu
@pytest.mark.hopper
@pytest.mark.parametrize("section", [1, 4])
def test_gpu_causal_sections_cover_every_key_block(section):
    """The causal grid's program order over sections of `section` (batch, kv head)s, the last one partial (6 in
    all): every (key block, batch, kv head) runs once, so dq/dk/dv match float64 and dk/dv, which no atomics
    touch, equal bitwise those of the one-section order small launches get."""
    import kernels.gluon.bwd as bwd
    from kernels.reference import attention_ref
    b, s, h, h_kv, d = 3, 700, 4, 2, 128
    q = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, h_kv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    out, lse = attention_ref(q, k, v, True, dtype=torch.float32)

    def grads(**budget):
        poison = [torch.full_like(t, float("nan")) for t in (k, v)]  # freed blocks the allocator hands to dk, dv
        del poison
        return bwd.attention_backward(dout, q, k, v, out.to(q.dtype), lse, d ** -0.5, True, **budget)

    one_section = grads()
    assert bwd.causal_section_heads(s, d, h // h_kv, 2 * 2 + 4) >= b * h_kv
    budget = section * (h // h_kv) * s * d * (2 * 2 + 4)
    assert bwd.causal_section_heads(s, d, h // h_kv, 2 * 2 + 4, budget) == section
    sectioned = grads(section_l2_bytes=budget)
    _assert_close_to_float64(sectioned, q, k, v, dout, True)
    for name, x, y in zip("kv", one_section[1:], sectioned[1:]):
        assert torch.equal(x, y), f"d{name} differs between section orders"


@pytest.mark.gpu
@pytest.mark.hopper
def test_gpu_backward_rejects_unsupported_input():
    from kernels.gluon.bwd import attention_backward
    q = torch.randn(1, 64, 2, 96, device="cuda", dtype=torch.bfloat16)
    lse = torch.zeros(1, 2, 64, device="cuda")
    with pytest.raises(ValueError, match="head dims"):
        attention_backward(q, q, q, q, q, lse, 0.1, False)
    q = q[..., :64].contiguous()
    with pytest.raises(ValueError, match="deterministic"):
        attention_backward(q, q, q, q, q, lse, 0.1, False, deterministic=True)
    with pytest.raises(TypeError, match="float32"):
        attention_backward(q, q, q, q, q, lse.double(), 0.1, False)
