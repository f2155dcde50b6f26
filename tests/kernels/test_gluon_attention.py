"""Gluon (Hopper) attention forward against the float64 reference, on an sm_90 GPU.

FA-style tolerance: the kernel's max error against float64 must stay within
twice PyTorch's own bf16/fp16 attention error plus a small eps. Outputs are
poisoned with NaN before every launch, so an unwritten element fails.
"""
import pytest
import torch

from kernels.reference import attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.hopper]

SHAPES = [  # batch, seqlen_q, seqlen_k, nheads, nheads_kv
    (2, 113, 203, 4, 4),
    (1, 1000, 517, 6, 2),  # causal: the first 483 query rows see no key
    (1, 517, 1000, 4, 1),
    (3, 256, 256, 2, 2),
    (1, 2049, 2049, 2, 1),
    (1, 1, 1, 1, 1),
    (4, 2048, 2048, 8, 2),  # 352-512 tiles: every persistent program runs several (ring phases, turns, Q reuse)
]
MANY_TILES = SHAPES[-1]


def _inputs(b, sq, sk, h, h_kv, d, dtype):
    seed = torch.seed()
    q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
    k = torch.randn(b, sk, h_kv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, sk, h_kv, d, device="cuda", dtype=dtype)
    return seed, q, k, v


def _poisoned(run, out_shape, out_dtype):
    """Call run() with freshly freed NaN-filled blocks of out's and lse's sizes, which the caching
    allocator hands to the kernel's outputs; checks that it did."""
    b, sq, h, _ = out_shape
    out_poison = torch.full(out_shape, float("nan"), device="cuda", dtype=out_dtype)
    lse_poison = torch.full((b, h, sq), float("nan"), device="cuda")
    ptrs = out_poison.data_ptr(), lse_poison.data_ptr()
    del out_poison, lse_poison
    out, lse = run()
    assert (out.data_ptr(), lse.data_ptr()) == ptrs, "outputs did not land on the poisoned blocks"
    return out, lse


def _poisoned_forward(q, k, v, causal, **switches):
    from kernels.gluon import attention_forward
    return _poisoned(lambda: attention_forward(q, k, v, None, causal, **switches), q.shape, q.dtype)


def _check(out, lse, q, k, v, causal, seed):
    out_ref, lse_ref = attention_ref(q, k, v, causal)
    out_pt, _ = attention_ref(q, k, v, causal, dtype=q.dtype)
    err = (out.double() - out_ref).abs().max().item()
    err_pt = (out_pt.double() - out_ref).abs().max().item()
    assert err <= 2 * err_pt + 1e-5, f"seed {seed}: max |out - ref| {err:.3e} vs PyTorch {err_pt:.3e}"
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref)), f"seed {seed}: +inf LSE rows differ"
    finite = torch.isfinite(lse_ref)
    lse_err = (lse.double() - lse_ref)[finite].abs().max().item() if finite.any() else 0.0
    assert lse_err <= 1e-3, f"seed {seed}: max |lse - ref| {lse_err:.3e}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_forward_matches_reference(shape, causal, d):
    b, sq, sk, h, h_kv = shape
    seed, q, k, v = _inputs(b, sq, sk, h, h_kv, d, torch.bfloat16)
    out, lse = _poisoned_forward(q, k, v, causal)
    _check(out, lse, q, k, v, causal, seed)


@pytest.mark.parametrize("switches", [dict(warp_specialize=False), dict(pipeline=False), dict(pingpong=False)],
                         ids=["no_ws", "no_pipeline", "no_pingpong"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128, 256])  # hd128 at these lengths: the few-keys tile (short_tile)
def test_ablation_switches_stay_correct(switches, causal, d):
    b, sq, sk, h, h_kv = 2, 777, 1029, 4, 2
    seed, q, k, v = _inputs(b, sq, sk, h, h_kv, d, torch.bfloat16)
    out, lse = _poisoned_forward(q, k, v, causal, **switches)
    _check(out, lse, q, k, v, causal, seed)


SYNC_OPTIONS = dict(branch_fence=True, named_turn=True, split_q=True)


@pytest.mark.parametrize("d, changes", [(128, SYNC_OPTIONS), (64, SYNC_OPTIONS),
                                        (128, dict(SYNC_OPTIONS, q_stages=2, stages=2, split_kv=True)),
                                        (64, dict(SYNC_OPTIONS, q_stages=2))],
                         ids=["sync_hd128", "sync_hd64", "q_ring_hd128", "q_ring_hd64"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_pipeline_options_stay_correct(d, changes, causal):
    # The TileConfig synchronization options other than the defaults (hd64: three consumer warpgroups), where
    # each program runs several tiles.
    from dataclasses import replace
    from kernels.gluon.forward import TILE_CONFIGS
    tile = replace(TILE_CONFIGS[(2, d)], **changes)
    seed, q, k, v = _inputs(*MANY_TILES, d, torch.bfloat16)
    out, lse = _poisoned_forward(q, k, v, causal, tile=tile)
    _check(out, lse, q, k, v, causal, seed)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "unpipelined"])
@pytest.mark.parametrize("trims", [True, False], ids=["trimmed", "untrimmed"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_row_trims_stay_correct(d, causal, trims, pipeline):
    # The 16-bit tiles with and without the consumer's row trims (per-thread row sums, unmasked loop blocks;
    # default on at hd128/256): a ragged last key block, query rows that see no key, several tiles a program.
    from dataclasses import replace
    from kernels.gluon.forward import TILE_CONFIGS
    tile = replace(TILE_CONFIGS[(2, d)], thread_row_sum=trims, unmasked_loop=trims)
    for shape in [(1, 1000, 517, 6, 2), MANY_TILES]:
        seed, q, k, v = _inputs(*shape, d, torch.bfloat16)
        out, lse = _poisoned_forward(q, k, v, causal, tile=tile, pipeline=pipeline)
        _check(out, lse, q, k, v, causal, f"{seed} {shape}")


@pytest.mark.parametrize("paired,tail", [(True, True), (True, False), (False, True)],
                         ids=["balanced", "units", "longest_first"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_causal_tile_orders_cover_every_tile(d, paired, tail):
    # The causal tile orders (scheduler.causal_order) on grids that end in a part round of units, odd m-block
    # counts (m-block 0 alone), one m-block per head (no units at all), rows that see no key, and (1537 rows)
    # heads dealt in units before a tail dealt tile by tile.
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    tile = replace(default_tile(2, d, causal=True), paired_causal=paired, balance_tail=tail)
    for shape in [MANY_TILES, (3, 1537, 1537, 12, 3), (5, 100, 700, 4, 4), (2, 700, 300, 4, 2)]:
        seed, q, k, v = _inputs(*shape, d, torch.bfloat16)
        out, lse = _poisoned_forward(q, k, v, True, tile=tile)
        _check(out, lse, q, k, v, True, f"{seed} {shape}")


@pytest.mark.parametrize("d", [40, 96, 200])
def test_head_dims_between_tiles(d):
    # Computed on the next tile head dim: TMA zero-fills the extra columns and clips them on store.
    seed, q, k, v = _inputs(2, 301, 333, 4, 2, d, torch.bfloat16)
    out, lse = _poisoned_forward(q, k, v, True)
    _check(out, lse, q, k, v, True, seed)


def test_float16_and_strided_inputs():
    # q sliced out of a packed (b, s, 3, h, d) tensor: strided heads, still TMA-legal.
    qkv = torch.randn(2, 300, 3, 4, 128, device="cuda", dtype=torch.float16)
    q, k, v = qkv.unbind(2)
    seed = torch.initial_seed()
    out, lse = _poisoned_forward(q, k, v, True)
    _check(out, lse, q, k, v, True, seed)


def test_rejects_bad_inputs():
    from kernels.gluon import attention_forward
    q = torch.randn(1, 16, 2, 100, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim"):
        attention_forward(q, q, q)
    q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.float32)
    with pytest.raises(TypeError):
        attention_forward(q, q, q)
    q = torch.randn(1, 16, 3, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple"):
        attention_forward(q, k, k)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_forward_matches_fp8_scheme(d, causal):
    """FP8 forward on the pre-pass's outputs: as accurate as the FP8 scheme's own oracle and the Triton FP8 path."""
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, fp8_forward_ref, quantize_qkv_ref
    from kernels.triton.fp8_fwd import fp8_attention_forward_triton
    seed, q, k, v = _inputs(2, 333, 517, 4, 2, d, torch.bfloat16)
    x = quantize_qkv_ref(q, k, v, FP8Config())
    scale = d ** -0.5
    out, lse = _poisoned(lambda: fp8_attention_forward(x, scale, causal, torch.bfloat16), q.shape, torch.bfloat16)
    exact, _ = attention_ref(q, k, v, causal)
    out8, lse8 = fp8_forward_ref(x, scale, causal)
    out_tr, _ = fp8_attention_forward_triton(x, scale, causal, torch.bfloat16)
    err = (out.double() - exact).abs().max().item()
    err8 = (out8.double() - exact).abs().max().item()
    err_tr = (out_tr.double() - exact).abs().max().item()
    assert err <= 1.25 * min(err8, err_tr) + 1e-3, f"seed {seed}: {err:.3e} vs scheme {err8:.3e}, triton {err_tr:.3e}"
    assert torch.equal(torch.isinf(lse), torch.isinf(lse8)), f"seed {seed}: +inf LSE rows differ"
    finite = torch.isfinite(lse8)
    lse_err = (lse - lse8)[finite].abs().max().item()
    assert lse_err <= 1e-3, f"seed {seed}: max |lse - fp8 scheme lse| {lse_err:.3e}"


def _assert_like_fp8_scheme(out, lse, q, k, v, x, scale, causal, what):
    """out/lse of an FP8 forward as accurate as the scheme's oracle on the natural-order pre-pass output x: float64
    errors of out and of LSE within 1.25x the oracle's plus 1e-3, the same +inf rows; `what` names the case.

    LSE is held to float64 too, not to the oracle: the kernel's key tile may be half the oracle's scale block
    (hd256), so its running max, and with it P's fp8 rounding, moves at other keys; on 2k causal keys the two
    LSEs then differ by up to ~1.5e-3 while both stay as close to float64 (docs/tuning-gluon.md, entry 14)."""
    from kernels.quant import fp8_forward_ref
    exact, lse_exact = attention_ref(q, k, v, causal)
    out8, lse8 = fp8_forward_ref(x, scale, causal)
    err = (out.double() - exact).abs().max().item()
    err8 = (out8.double() - exact).abs().max().item()
    assert err <= 1.25 * err8 + 1e-3, f"{what}: {err:.3e} vs scheme {err8:.3e}"
    finite = torch.isfinite(lse_exact)
    assert torch.equal(torch.isinf(lse), ~finite), f"{what}: +inf LSE rows differ"
    lse_err = (lse.double() - lse_exact)[finite].abs().max().item()
    lse_err8 = (lse8.double() - lse_exact)[finite].abs().max().item()
    assert lse_err <= 1.25 * lse_err8 + 1e-3, f"{what}: LSE error {lse_err:.3e} vs scheme {lse_err8:.3e}"


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fp8_forward_with_v_in_wgmma_order(d):
    """V^T's keys in wgmma order (P goes to PV unshuffled), from the Triton pre-pass: the natural order's accuracy,
    and the pre-pass's V codes are the natural ones, permuted."""
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, to_wgmma_key_order
    from kernels.triton.fp8_quant import quantize_qkv_triton
    seed, q, k, v = _inputs(2, 333, 517, 4, 2, d, torch.bfloat16)
    x = quantize_qkv_triton(q, k, v, FP8Config())
    xw = quantize_qkv_triton(q, k, v, FP8Config(), v_key_order="wgmma")
    assert torch.equal(xw.v_t.view(torch.uint8), to_wgmma_key_order(x.v_t).view(torch.uint8))
    scale = d ** -0.5
    out, lse = _poisoned(lambda: fp8_attention_forward(xw, scale, True, torch.bfloat16), q.shape, torch.bfloat16)
    _assert_like_fp8_scheme(out, lse, q, k, v, x, scale, True, f"seed {seed}")


@pytest.mark.parametrize("block_n", [32, 256])
def test_fp8_scale_blocks_other_than_the_key_tile(block_n):
    """K/V scale blocks smaller than the key tile (the tile shrinks to one block) and larger (one scale spans two
    key tiles) give the scheme's accuracy too."""
    from kernels.gluon import fp8_attention_forward
    from kernels.quant import FP8Config, quantize_qkv_ref
    seed, q, k, v = _inputs(1, 300, 700, 4, 2, 128, torch.bfloat16)
    x = quantize_qkv_ref(q, k, v, FP8Config(block_n=block_n))
    out, lse = _poisoned(lambda: fp8_attention_forward(x, 128 ** -0.5, True, torch.bfloat16), q.shape, torch.bfloat16)
    _assert_like_fp8_scheme(out, lse, q, k, v, x, 128 ** -0.5, True, f"seed {seed}")


TRIMS = ("fast_v_ratio", "thread_row_sum", "unmasked_loop")


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "unpipelined"])
@pytest.mark.parametrize("changes", [{}, dict.fromkeys(TRIMS, False)], ids=["default", "untrimmed"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [128, 256])
def test_fp8_consumer_trims_stay_correct(d, causal, changes, pipeline):
    """The FP8 tiles' consumer trims (TileConfig, docs/tuning-gluon.md entry 18), all on (the default) and all off,
    with and without the intra-warpgroup overlap (two loops that each peel their first block), on V^T in wgmma
    order: the scheme's accuracy, on a ragged last key block and where each program runs several tiles."""
    from dataclasses import replace
    from kernels.gluon import fp8_attention_forward
    from kernels.gluon.forward import TILE_CONFIGS
    from kernels.quant import FP8Config, quantize_qkv_ref
    tile = replace(TILE_CONFIGS[(1, d)], **changes)
    for shape in [(2, 333, 517, 4, 2), MANY_TILES]:
        seed, q, k, v = _inputs(*shape, d, torch.bfloat16)
        x = quantize_qkv_ref(q, k, v, FP8Config())
        xw = quantize_qkv_ref(q, k, v, FP8Config(), v_key_order="wgmma")
        scale = d ** -0.5
        out, lse = _poisoned(lambda: fp8_attention_forward(xw, scale, causal, torch.bfloat16, tile=tile,
                                                           pipeline=pipeline), q.shape, torch.bfloat16)
        _assert_like_fp8_scheme(out, lse, q, k, v, x, scale, causal, f"seed {seed} {shape}")


@pytest.mark.parametrize("changes", [{}, dict(overlap=False, split_kv=False, thread_arrive=False, named_turn=False)],
                         ids=["default", "unoverlapped"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fp8_hd256_tiles_stay_correct(causal, changes):
    """FP8 hd256's 128-key tile overlapped (the default since session 27, docs/tuning-gluon.md entries 48 and 50:
    split K/V release, per-thread arrives, named-barrier turns) and without all four (the default before): the
    scheme's accuracy, on ragged shapes, more queries than keys, and where programs run several tiles."""
    from dataclasses import replace
    from kernels.gluon import fp8_attention_forward
    from kernels.gluon.forward import default_tile
    from kernels.quant import FP8Config, quantize_qkv_ref
    tile = replace(default_tile(1, 256, causal), **changes)
    for shape in [(2, 333, 517, 4, 2), (2, 1517, 333, 4, 2), MANY_TILES]:
        seed, q, k, v = _inputs(*shape, 256, torch.bfloat16)
        x = quantize_qkv_ref(q, k, v, FP8Config())
        xw = quantize_qkv_ref(q, k, v, FP8Config(), v_key_order="wgmma")
        scale = 256 ** -0.5
        out, lse = _poisoned(lambda: fp8_attention_forward(xw, scale, causal, torch.bfloat16, tile=tile), q.shape,
                             torch.bfloat16)
        _assert_like_fp8_scheme(out, lse, q, k, v, x, scale, causal, f"seed {seed} {shape}")


def _under_tiles(tiles, shape, d, dtype, causal):
    """(seed, [(out, lse) per tile]): the Gluon forward under each tile on one fresh draw of `shape`'s inputs; for
    an FP8 dtype, on the reference pre-pass's output (bf16 inputs, V^T in wgmma key order)."""
    from kernels.gluon import attention_forward, fp8_attention_forward
    from kernels.quant import FP8Config, quantize_qkv_ref
    fp8 = dtype.itemsize == 1
    seed, q, k, v = _inputs(*shape, d, torch.bfloat16 if fp8 else dtype)
    if fp8:
        x = quantize_qkv_ref(q, k, v, FP8Config(), v_key_order="wgmma")
        return seed, [fp8_attention_forward(x, d ** -0.5, causal, torch.bfloat16, tile=t) for t in tiles]
    return seed, [attention_forward(q, k, v, None, causal, tile=t) for t in tiles]


def _assert_bitwise(outs, message):
    (out_a, lse_a), (out_b, lse_b) = outs
    assert torch.equal(out_a, out_b) and torch.equal(lse_a, lse_b), message


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d, dtype", [(128, torch.float8_e4m3fn), (128, torch.bfloat16), (256, torch.bfloat16)],
                         ids=["fp8_d128", "d128", "d256"])
def test_rescale_under_s_is_bitwise_the_other_order(d, dtype, causal):
    """TileConfig.rescale_under_s moves O's rescale from after the PV wait to after the next QK^T issue: the same
    multiplies before the same PV, so the same bits, on a ragged shape and where programs run several tiles."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    tiles = [replace(default_tile(dtype.itemsize, d, causal), rescale_under_s=on) for on in (False, True)]
    for shape in [(2, 333, 1517, 4, 2), MANY_TILES]:
        seed, outs = _under_tiles(tiles, shape, d, dtype, causal)
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d, dtype", [(64, torch.bfloat16), (128, torch.bfloat16), (256, torch.bfloat16),
                                      (64, torch.float8_e4m3fn), (128, torch.float8_e4m3fn),
                                      (256, torch.float8_e4m3fn)], ids=lambda x: str(x).removeprefix("torch."))
def test_thread_arrive_is_bitwise_the_single_thread_arrive(d, dtype, causal):
    """TileConfig.thread_arrive changes only who arrives on the consumers' mbarriers (every thread, counted, against
    one thread after a warpgroup bar.sync): the same arithmetic, so the same bits, on a ragged GQA shape, where
    programs run several tiles, and with the ping-pong turns on named barriers; a premature release would let a
    load overwrite a slot still being read and show here."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    base = default_tile(dtype.itemsize, d, causal)
    for shape, named_turn in [((2, 333, 1517, 4, 2), False), (MANY_TILES, False), (MANY_TILES, True)]:
        tiles = [replace(base, thread_arrive=on, named_turn=named_turn) for on in (False, True)]
        seed, outs = _under_tiles(tiles, shape, d, dtype, causal)
        assert torch.isfinite(outs[1][0]).all(), f"seed {seed} {shape}"
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("switch", ["causal_unmasked_loop", "row_bound_mask"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "plain"])
@pytest.mark.parametrize("d, dtype", [(64, torch.bfloat16), (128, torch.float16), (256, torch.bfloat16),
                                      (64, torch.float8_e4m3fn), (128, torch.float8_e4m3fn),
                                      (256, torch.float8_e4m3fn)], ids=lambda x: str(x).removeprefix("torch."))
def test_causal_mask_switches_keep_the_bits(d, dtype, overlap, switch):
    """TileConfig.causal_unmasked_loop runs the blocks below the diagonal without the mask test and the -inf guard
    (exact there: every row sees all their keys) and carries 16-bit P across the back edge in fp32 (the same
    rounding, later); row_bound_mask masks the same keys by one compare. The same bits, with the diagonal crossing
    one or two key blocks of a consumer's rows, ragged key ends, rows that see no key (seqlen_q > seqlen_k), and
    programs running several tiles."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    base = replace(default_tile(dtype.itemsize, d, True), overlap=overlap)
    for shape in [(2, 333, 1517, 4, 2), (1, 1000, 1517, 4, 4), (2, 1517, 333, 4, 2), MANY_TILES]:
        seed, outs = _under_tiles((replace(base, **{switch: False}), replace(base, **{switch: True})), shape, d, dtype,
                                  True)
        assert torch.isfinite(outs[1][0]).all(), f"seed {seed} {shape}"
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_o_in_k_is_bitwise_o_in_q(dtype):
    """TileConfig.o_buffer "k" (the non-causal hd128 default, also run causal here) stages O in the last key block's K
    buffer instead of Q's: the same arithmetic, so the same bits, on ragged shapes, where programs run several
    tiles, and causal with more queries than keys (the top tiles have no key block and stage O in Q's buffer)."""
    from dataclasses import replace
    from kernels.gluon.forward import TILE_CONFIGS
    base = TILE_CONFIGS[2, 128]
    assert base.o_buffer == "k"
    for shape, causal in [((2, 333, 1517, 4, 2), False), (MANY_TILES, False), ((1, 2049, 2049, 2, 1), False),
                          ((2, 333, 1517, 4, 2), True), (MANY_TILES, True), ((2, 1517, 333, 4, 2), True)]:
        seed, outs = _under_tiles((base, replace(base, o_buffer="q")), shape, 128, dtype, causal)
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "plain"])
@pytest.mark.parametrize("d, dtype, causal", [(128, torch.bfloat16, False), (128, torch.bfloat16, True),
                                              (256, torch.bfloat16, False), (256, torch.bfloat16, True),
                                              (64, torch.bfloat16, True), (128, torch.float8_e4m3fn, False),
                                              (128, torch.float8_e4m3fn, True)],
                         ids=["d128_full", "d128_causal", "d256_full", "d256_causal", "d64_causal", "fp8_d128_full",
                              "fp8_d128_causal"])
def test_q_in_registers_keeps_the_bits(d, dtype, causal, overlap):
    """TileConfig.q_in_registers runs QK^T on Q loaded into registers once a tile (an RS wgmma; at hd256 on its first
    half, then an SS wgmma on the rest) and gives Q's slot back before the key loop where all of Q is in registers
    and O is not staged there: the same operands and products in the same order, so the same bits, on ragged
    shapes, rows that see no key, and programs running several tiles (a Q slot refilled while its rows were still
    read would show here)."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    base = replace(default_tile(dtype.itemsize, d, causal), overlap=overlap)
    for shape in [(2, 333, 1517, 4, 2), (2, 1517, 333, 4, 2), MANY_TILES]:
        seed, outs = _under_tiles([replace(base, q_in_registers=on) for on in (False, True)], shape, d, dtype, causal)
        assert torch.isfinite(outs[1][0]).all(), f"seed {seed} {shape}"
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("d, dtype, changes", [
    (64, torch.bfloat16, {}), (64, torch.bfloat16, dict(causal_unmasked_loop=False, q_in_registers=False)),
    (64, torch.bfloat16, dict(lazy_rescale=False, q_stages=1)), (128, torch.bfloat16, {}), (128, torch.float16, {}),
    (128, torch.bfloat16, dict(split_kv=False, stages=3, q_stages=1, o_buffer="k")), (256, torch.bfloat16, {}),
    (256, torch.float16, dict(lazy_rescale=False)), (64, torch.bfloat16, dict(block_n=64))],
    ids=["d64", "d64_mask_loop_q_smem", "d64_eager_one_q", "d128", "d128_fp16", "d128_o_in_k", "d256",
         "d256_fp16_eager", "d64_64_keys"])
def test_half_diagonal_keeps_the_bits(d, dtype, changes):
    """TileConfig.half_diagonal (causal): the first consumer leaves out the half of its tile's diagonal keys that its
    rows do not see. 128-key blocks (seqlen_q == seqlen_k): its QK^T, softmax and PV of the diagonal block run on 64
    keys instead of 128 with half masked; 64-key blocks (hd256): it hands the block above its rows back unread, on any
    lengths. The masked keys add exact zeros to the row sums and to O, so the bits stay; one-block tiles (the last PV
    the half one), ragged and unequal lengths, rows that see no key, GQA and programs running several tiles; float64
    accuracy on one of them."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    base = replace(default_tile(dtype.itemsize, d, True), **changes)
    for shape in [(2, 333, 333, 4, 2), (1, 128, 128, 2, 2), (3, 65, 65, 2, 1), (2, 333, 1517, 4, 2),
                  (2, 1517, 333, 4, 2), MANY_TILES, (3, 1537, 1537, 12, 3)]:
        seed, outs = _under_tiles([replace(base, half_diagonal=on) for on in (False, True)], shape, d, dtype, True)
        assert torch.isfinite(outs[1][0]).all(), f"seed {seed} {shape}"
        _assert_bitwise(outs, f"seed {seed} {shape}")
    seed, q, k, v = _inputs(2, 1000, 1000, 4, 2, d, dtype)
    _check(*_poisoned_forward(q, k, v, True, tile=replace(base, half_diagonal=True)), q, k, v, True, seed)


def test_q_in_registers_without_warp_specialization():
    """One partition issuing its own loads (no producer) frees Q's slot early too: float64 accuracy and the bits of
    the same launch with Q in shared memory."""
    from dataclasses import replace
    from kernels.gluon import attention_forward
    from kernels.gluon.forward import TILE_CONFIGS
    for causal in (False, True):
        seed, q, k, v = _inputs(2, 1000, 1517, 4, 2, 128, torch.bfloat16)
        outs = [attention_forward(q, k, v, None, causal, warp_specialize=False,
                                  tile=replace(TILE_CONFIGS[2, 128], q_in_registers=on)) for on in (False, True)]
        _check(*outs[1], q, k, v, causal, seed)
        _assert_bitwise(outs, f"seed {seed} causal={causal}")


def _moving_max_keys(k, kind):
    """K whose scores make the row max move while the blocks are visited (last key block first): a ramp that
    grows toward the first keys (steps below 2^8 each block), or outliers every 300 keys (jumps past it)."""
    if kind == "ramp":
        return (k.float() * torch.linspace(4.0, 0.5, k.shape[1], device=k.device).view(1, -1, 1, 1)).to(k.dtype)
    k = k.clone()
    k[:, ::300] *= 30
    return k


@pytest.mark.parametrize("kind", ["ramp", "outliers"])
@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "unpipelined"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d, dtype", [(64, torch.bfloat16), (128, torch.bfloat16), (128, torch.float16),
                                      (256, torch.bfloat16)], ids=["d64", "d128", "d128_fp16", "d256"])
def test_lazy_rescale_stays_correct(d, dtype, causal, pipeline, kind):
    # TileConfig.lazy_rescale (default on at hd128/256): the row max moves only past a factor 2^8, and a thread
    # skips O's rescale when none of its rows moved; these keys move it in small steps and in large jumps.
    from dataclasses import replace
    from kernels.gluon.forward import TILE_CONFIGS
    tile = replace(TILE_CONFIGS[(2, d)], lazy_rescale=True)
    for shape in [(1, 1000, 2049, 6, 2), MANY_TILES]:
        seed, q, k, v = _inputs(*shape, d, dtype)
        k = _moving_max_keys(k, kind)
        out, lse = _poisoned_forward(q, k, v, causal, tile=tile, pipeline=pipeline)
        _check(out, lse, q, k, v, causal, f"{seed} {shape} {kind}")


@pytest.mark.parametrize("d, dtype, causal, changes", [
    (64, torch.bfloat16, True, {}), (64, torch.bfloat16, False, {}), (64, torch.bfloat16, False, "short"),
    (128, torch.bfloat16, True, dict(stages=2, split_kv=True)), (128, torch.bfloat16, True, dict(block_n=64, stages=4)),
    (128, torch.bfloat16, False, "few_keys"), (64, torch.float8_e4m3fn, True, {})],
    ids=["d64_causal", "d64_full", "d64_short", "d128_causal_s2_split", "d128_causal_n64_s4", "d128_few_keys",
         "fp8_d64_causal"])
def test_q_ring_keeps_the_bits(d, dtype, causal, changes):
    """TileConfig.q_stages=2 loads the next tile's Q into a second slot while the current tile runs: the same
    arithmetic, so the same bits as one Q slot, on ragged shapes, rows that see no key, and where programs run
    several tiles (each Q slot reused, phases flipping); a Q overwritten while still read would show here."""
    from dataclasses import replace
    from kernels.gluon.forward import FEW_KEYS_TILE_CONFIGS, SHORT_TILE_CONFIGS, default_tile
    if changes == "short":
        base = SHORT_TILE_CONFIGS[(2, d)]
    elif changes == "few_keys":
        base = FEW_KEYS_TILE_CONFIGS[(2, d)][1]
    else:
        base = replace(default_tile(dtype.itemsize, d, causal), **changes)
    for shape in [(2, 333, 1517, 4, 2), (2, 1517, 333, 4, 2), MANY_TILES, (3, 1537, 1537, 12, 3)]:
        seed, outs = _under_tiles([replace(base, q_stages=n) for n in (1, 2)], shape, d, dtype, causal)
        assert torch.isfinite(outs[1][0]).all(), f"seed {seed} {shape}"
        _assert_bitwise(outs, f"seed {seed} {shape}")


@pytest.mark.parametrize("changes", [dict(block_n=128, stages=1, overlap=False),
                                     dict(block_n=128, stages=1, overlap=False, thread_arrive=False),
                                     dict(block_n=128, stages=1), dict(overlap=False)],
                         ids=["n128_plain", "n128_plain_arrive0", "n128_overlap", "plain"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_bf16_hd256_split_ring_tiles_stay_correct(causal, changes):
    """16-bit hd256 tiles on the split K/V ring other than the default: 128-key blocks in one stage of K and one of V
    (197 KB of shared memory), with and without the overlap, and the 64-key default unoverlapped (V then loads right
    after its own K, pipeline.py): float64 accuracy on ragged shapes, rows that see no key, and several tiles a
    program."""
    from dataclasses import replace
    from kernels.gluon.forward import default_tile
    tile = replace(default_tile(2, 256, causal), **changes)
    for shape in [(1, 1000, 517, 6, 2), (2, 333, 1517, 4, 2), MANY_TILES]:
        seed, q, k, v = _inputs(*shape, 256, torch.bfloat16)
        out, lse = _poisoned_forward(q, k, v, causal, tile=tile)
        _check(out, lse, q, k, v, causal, f"{seed} {shape}")
