"""The Gluon kernels compile for sm_90a on a machine without a GPU, into the instructions FA3 relies on.

Compiles run in one child process (`python -m kernels.gluon.report`): this
process may run Triton in interpreter mode, under which Gluon cannot compile.
"""
import pytest

from gluon_reports import compile_reports

SMEM_LIMIT = 227 * 1024  # sm_90 opt-in shared memory per block
BARRIER_SLACK = 1024  # mbarriers and epilogue scratch on top of the buffers
# (element bytes, head dim) -> (block_m, block_n, stages, O staged in Q's or K's buffer, split K/V release);
# kernels.gluon.forward.TILE_CONFIGS (which also sets the branch fence and named-barrier turns).
# Without warp specialization block_m is 128.
TILES = {(2, 64): (192, 128, 2, False, True), (2, 128): (128, 128, 3, True, False),
         (2, 256): (128, 64, 2, True, True), (1, 64): (128, 128, 4, False, False),
         (1, 128): (128, 128, 3, False, False), (1, 256): (128, 128, 2, False, True)}
CAUSAL_TILES = {(2, 64): (128, 128, 3, True, False),  # kernels.gluon.forward.CAUSAL_TILE_CONFIGS
                (2, 128): (128, 128, 2, True, True)}
Q_SLOTS = {(2, 64, True): 2, (2, 128, True): 2, (1, 64, True): 2}  # (bytes, head dim, causal) -> q_stages if not 1
NAMED_TURN_TILES = {(1, 128), (1, 256)}  # tiles that pass ping-pong turns on named barriers by default
# (causal_unmasked_loop, row_bound_mask) of the causal tiles that kernels.gluon.report varies; hd64 and FP8 hd128
# run both by default, FP8 hd256 the split loop (CAUSAL_TILE_CONFIGS).
MASK_DEFAULTS = {(2, 64): (True, True), (2, 128): (False, False), (1, 128): (True, True), (1, 256): (True, False)}
MASK_BASES = {(2, 64): "bfloat16_hd64_causal_ws1_pipe1_pp1", (2, 128): "bfloat16_hd128_causal_ws1_pipe1_pp1",
              (1, 128): "float8_e4m3fn_hd128_causal_ws1_pipe1_pp1_wgmmav",
              (1, 256): "float8_e4m3fn_hd256_causal_ws1_pipe1_pp1_wgmmav"}
# Causal tiles whose key loops reload registers from local memory in every build (FP8 hd256, entry 48): the mask
# tests bound their reloads instead of asking for none.
RELOADING_TILES = {(1, 256)}
CONSUMER_ROWS = 64
CONSUMER_REGS = {2: 240, 3: 160}  # setmaxnreg of each consumer warpgroup, by their number
PRODUCER_REGS = 24


def _mask_name(key, split, bound):
    """kernels.gluon.report's name for a causal tile of MASK_BASES with the mask options set so: the switches set
    otherwise than in the default tile are suffixed _<tag><0 or 1>."""
    return MASK_BASES[key] + "".join(f"_{tag}{int(on)}" for tag, on, default in zip(("split", "bound"), (split, bound),
                                                                                  MASK_DEFAULTS[key]) if on != default)


# The tiles that take Q in registers for QK^T (TileConfig.q_in_registers; kernels.gluon.report.QREG_TILES), by the
# name of their default, and those that do by default (their report with it off is suffixed _qreg0, else _qreg1).
QREG_BASES = ["bfloat16_hd128_full_ws1_pipe1_pp1", "bfloat16_hd128_causal_ws1_pipe1_pp1",
              "bfloat16_hd256_full_ws1_pipe1_pp1", "bfloat16_hd256_causal_ws1_pipe1_pp1",
              "bfloat16_hd64_causal_ws1_pipe1_pp1", "float8_e4m3fn_hd128_full_ws1_pipe1_pp1_wgmmav",
              "float8_e4m3fn_hd128_causal_ws1_pipe1_pp1_wgmmav"]
QREG_DEFAULTS = {"bfloat16_hd64_causal_ws1_pipe1_pp1", "float8_e4m3fn_hd128_causal_ws1_pipe1_pp1_wgmmav"}


def _qreg_pair(reports, base):
    """(report with Q in registers, report without) of a QREG_BASES tile."""
    if base in QREG_DEFAULTS:
        return reports[base], reports[base + "_qreg0"]
    return reports[base + "_qreg1"], reports[base]

# FP8 hd256's overlapped default without its per-thread arrives and named turns, and without the overlap too (the
# default before session 27).
FP8_256_SINGLE = "float8_e4m3fn_hd256_full_ws1_pipe1_pp1_wgmmav_arrive0_turn0"
FP8_256_PLAIN = "float8_e4m3fn_hd256_full_ws1_pipe0_pp1_wgmmav_arrive0_turn0_splitkv0"


def _names():
    # Mirrors kernels.gluon.report.VARIANTS without importing triton here.
    names = [f"bfloat16_hd{d}_{mask}_ws{ws}_pipe1_pp1" for d in (64, 128, 256) for mask in ("full", "causal")
             for ws in (1, 0)]
    names += ["bfloat16_hd128_full_ws1_pipe0_pp1", "bfloat16_hd128_full_ws1_pipe1_pp0"]
    names += [f"float8_e4m3fn_hd{d}_{mask}_ws1_pipe1_pp1" for d in (64, 128, 256) for mask in ("full", "causal")]
    # With the synchronization options (branch fence, named-barrier turns, split Q barriers).
    names += [f"bfloat16_hd{d}_full_ws1_pipe1_pp1_sync" for d in (64, 128, 256)]
    # FP8 with V^T's keys in wgmma order, and with the consumer instruction trims too.
    names += [f"float8_e4m3fn_hd{d}_full_ws1_pipe1_pp1_wgmmav" for d in (64, 128, 256)]
    names += ["float8_e4m3fn_hd128_full_ws1_pipe0_pp1_wgmmav"]
    names += [f"float8_e4m3fn_hd{d}_full_ws1_pipe1_pp1_wgmmav_untrimmed" for d in (64, 128, 256)]
    names += [f"bfloat16_hd{d}_{mask}_ws1_pipe1_pp1_eager" for d in (128, 256) for mask in ("full", "causal")]
    names += [f"float8_e4m3fn_hd128_causal_ws1_pipe1_pp1_wgmmav{suffix}" for suffix in ("_untrimmed", "")]
    # The FP8 hd128 tile with its O rescale after the PV wait, not under the next QK^T.
    names += [f"float8_e4m3fn_hd128_{mask}_ws1_pipe1_pp1_wgmmav_late_rescale" for mask in ("full", "causal")]
    # Per-thread arrives turned off (TileConfig.thread_arrive).
    names += ["bfloat16_hd128_full_ws1_pipe1_pp1_arrive0", "float8_e4m3fn_hd128_full_ws1_pipe1_pp1_wgmmav_arrive0",
              "float8_e4m3fn_hd256_full_ws1_pipe1_pp1_wgmmav_arrive0"]
    # The causal mask options (TileConfig.causal_unmasked_loop, row_bound_mask) set every other way.
    names += [_mask_name(key, split, bound) for key in MASK_BASES for split in (False, True) for bound in (False, True)
              if (split, bound) != MASK_DEFAULTS[key]]
    names += [base + ("_qreg0" if base in QREG_DEFAULTS else "_qreg1") for base in QREG_BASES]
    return names + [FP8_256_SINGLE, FP8_256_PLAIN]


@pytest.fixture(scope="module")
def reports():
    return compile_reports("kernels.gluon.report", timeout=900)


@pytest.mark.parametrize("name", _names())
def test_variant_compiles_to_wgmma_and_tma(reports, name):
    assert name in reports, f"no report for {name}: {sorted(reports)}"
    r = reports[name]
    assert "error" not in r, r.get("error")
    fp8 = name.startswith("float8")
    elem = 1 if fp8 else 2
    d = int(name.split("_hd")[1].split("_")[0])
    ws = "_ws1_" in name
    tiles = CAUSAL_TILES if "_causal_" in name and (elem, d) in CAUSAL_TILES else TILES
    block_m, block_n, stages, o_in_q, _ = tiles[(elem, d)]
    block_m = block_m if ws else 2 * CONSUMER_ROWS
    consumers = block_m // CONSUMER_ROWS if ws else 1

    # wgmma m64nNk(32 / elem) instructions per consumer: QK^T takes d / k steps, PV block_n / k;
    # the pipelined loop holds one QK^T + PV pair plus the peeled QK^T and the trailing PV, the unpipelined one
    # a pair and its peeled first block; a split causal loop (TileConfig.causal_unmasked_loop) one more pair.
    k = 32 // elem
    per_pair = d // k + block_n // k
    split = "_causal_" in name and ("_split1" in name or MASK_DEFAULTS.get((elem, d), (False,))[0]
                                    and "_split0" not in name)
    # TileConfig.half_diagonal on 128-key blocks (16-bit hd64/hd128 causal, overlapped, warp-specialized): the first
    # consumer's QK^T on half a block, the next block's peeled QK^T, and two PVs on half a block; not at hd128 with Q
    # in registers. On hd256's 64-key blocks it adds none.
    half = (not fp8 and "_causal_" in name and ws and "_pipe1_" in name and d in (64, 128) and "_half0" not in name
            and not (d == 128 and "_qreg1" in name))
    assert r["ptx_wgmma"] == consumers * (3 if split else 2) * per_pair + (d // k + 2 * 64 // k if half else 0), r
    assert r["ptx_wgmma_fp8"] == (r["ptx_wgmma"] if fp8 else 0), r
    assert r["sass_gmma"] == r["ptx_wgmma"], "wgmma must survive ptxas as HGMMA/QGMMA"
    assert r["ptx_tma_load"] > 0 and r["sass_tma_load"] > 0, r
    assert r["ptx_tma_store"] > 0 and r["sass_tma_store"] > 0, r
    # A programmatic dependent launch: every partition (each consumer, the producer) waits for the kernel before it.
    assert r["ptx_griddep_wait"] == (consumers + 1 if ws else 1), r

    q_bytes = Q_SLOTS.get((elem, d, "_causal_" in name), 1) * block_m * d * elem
    o_bytes = 0 if o_in_q else block_m * d * 2  # O is 16-bit
    expected = q_bytes + stages * 2 * block_n * d * elem + o_bytes
    assert expected <= r["shared_bytes"] <= min(expected + BARRIER_SLACK, SMEM_LIMIT), r
    # Ping-pong turns pass on named barriers (bar.arrive) only with the option, otherwise on mbarriers; the
    # options exist to cut the warpgroup bar.syncs Gluon puts around mbarrier arrives (which the default per-thread
    # arrives already cut to one per key block).
    named = "_sync" in name or ((elem, d) in NAMED_TURN_TILES and ws and "_pp1" in name and "_turn0" not in name)
    assert (r["sass_named_arrive"] > 0) == named, r
    if name.endswith("_sync"):
        base = reports[name.removesuffix("_sync")]
        assert r["sass_key_loop_warpgroup_bars"] <= base["sass_key_loop_warpgroup_bars"], (base, r)
    if ws:
        assert r["num_warps"] == 4 * (consumers + 1), r  # the consumer warpgroups + the producer's warpgroup
        assert CONSUMER_REGS[consumers] in r["setmaxnreg"] and PRODUCER_REGS in r["setmaxnreg"], r
    else:
        assert r["num_warps"] == 8 and not r["setmaxnreg"], r


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_wgmma_v_order_drops_the_p_shuffles(reports, head_dim):
    """With V^T's keys in wgmma order P's accumulator registers are the PV A operand (the conversion is asserted
    trivial at compile time): every P conversion site loses its 16 SHFL per 64 values; what is left are the
    row max/sum reductions."""
    natural = reports[f"float8_e4m3fn_hd{head_dim}_full_ws1_pipe1_pp1"]
    wgmma = reports[f"float8_e4m3fn_hd{head_dim}_full_ws1_pipe1_pp1_wgmmav"]
    assert "error" not in wgmma, wgmma.get("error")
    assert wgmma["sass_shfl"] <= natural["sass_shfl"] - 2 * 16, (natural["sass_shfl"], wgmma["sass_shfl"])
    assert wgmma["sass_gmma"] == natural["sass_gmma"]


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_consumer_trims_shorten_the_key_loop(reports, head_dim):
    """The trims (fast V-scale ratio, per-thread row sums, unmasked non-causal loop): the loop loses its masking
    branch (at least one select per score a thread holds, block_n / 2 of them) and the row sums' quad shuffles."""
    base = reports[f"float8_e4m3fn_hd{head_dim}_full_ws1_pipe1_pp1_wgmmav_untrimmed"]
    diet = reports[f"float8_e4m3fn_hd{head_dim}_full_ws1_pipe1_pp1_wgmmav"]
    assert "error" not in diet, diet.get("error")
    block_n = TILES[(1, head_dim)][1]
    assert 0 < diet["sass_key_loop"] <= base["sass_key_loop"] - block_n // 2, (base["sass_key_loop"],
                                                                               diet["sass_key_loop"])
    assert diet["sass_shfl"] < base["sass_shfl"], (base["sass_shfl"], diet["sass_shfl"])
    assert diet["sass_local_mem"] <= base["sass_local_mem"], (base["sass_local_mem"], diet["sass_local_mem"])


@pytest.mark.parametrize("mask", ["full", "causal"])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_lazy_rescale_adds_no_spills(reports, head_dim, mask):
    """The 16-bit hd128/hd256 tiles rescale O lazily (TileConfig.lazy_rescale): one inline-asm block of 64 O
    registers, their alphas and flags per thread and step may not push the consumer into local memory, and the
    key loop grows by the flag and a branch round each block of multiplies (two blocks at hd256): a few
    instructions."""
    lazy, eager = (reports[f"bfloat16_hd{head_dim}_{mask}_ws1_pipe1_pp1{suffix}"] for suffix in ("", "_eager"))
    assert "error" not in lazy and "error" not in eager, (lazy.get("error"), eager.get("error"))
    assert lazy["sass_local_mem"] <= eager["sass_local_mem"], (lazy, eager)
    assert 0 < lazy["sass_key_loop"] - eager["sass_key_loop"] <= 24, (lazy["sass_key_loop"], eager["sass_key_loop"])


@pytest.mark.parametrize("mask", ["full", "causal"])
def test_rescale_under_s_keeps_the_fp8_key_loop_in_registers(reports, mask):
    """The FP8 hd128 tile rescales O under the next QK^T (TileConfig.rescale_under_s): the same multiplies in
    another place, so the key loop may not grow nor touch local memory (the kernel's per-tile code spills 10
    more instructions' worth with it, outside the loop)."""
    under, late = (reports[f"float8_e4m3fn_hd128_{mask}_ws1_pipe1_pp1_wgmmav{suffix}"]
                   for suffix in ("", "_late_rescale"))
    assert "error" not in under and "error" not in late, (under.get("error"), late.get("error"))
    assert under["sass_key_loop_local_mem"] == 0, under
    assert 0 < under["sass_key_loop"] <= late["sass_key_loop"], (under["sass_key_loop"], late["sass_key_loop"])


@pytest.mark.parametrize("fields, match", [((256, 128, 2, "own"), "block_m"), ((128, 96, 2, "own"), "block_n"),
                                           ((128, 128, 0, "own"), "stages"),
                                           ((128, 128, 2, "own", False, False, 3), "q_stages"),
                                           ((128, 128, 2, "v"), "o_buffer")])
def test_tile_config_rejects_bad_shapes(fields, match):
    from kernels.gluon import TileConfig
    with pytest.raises(ValueError, match=match):
        TileConfig(*fields)


@pytest.mark.parametrize("seqlen_q, short", [(1, True), (512, True), (1000, True), (1024, True), (1500, False),
                                              (2048, False), (2049, False), (4096, False), (16384, False)])
def test_short_tile_where_192_rows_overshoot(seqlen_q, short):
    """Non-causal hd64 past 4096 keys runs 128-row tiles where 192-row ones would pad the queries by over 5% more rows
    (1024 queries: 1152 rows against 1024; 2048: 2112 against 2048); causal and FP8 keep their defaults."""
    from kernels.gluon.forward import SHORT_TILE_CONFIGS, short_tile
    for seqlen_k in (4097, 16384):
        assert short_tile(2, 64, False, seqlen_q, seqlen_k) == (SHORT_TILE_CONFIGS[(2, 64)] if short else None)
        assert short_tile(2, 64, True, seqlen_q, seqlen_k) is None
        assert short_tile(1, 64, False, seqlen_q, seqlen_k) is None and short_tile(1, 128, False, seqlen_q, 512) is None


@pytest.mark.parametrize("head_dim, max_keys", [(64, 4096), (128, 8192)])
def test_few_keys_tile_up_to_a_key_count(head_dim, max_keys):
    """Non-causal 16-bit hd64 up to 4096 keys and hd128 up to 8192 run their causal tile (hd64: 128 rows, O in the
    last K buffer, Q in registers; hd128: two Q slots, two stages of split K/V), whatever the queries; past that,
    hd128 and long hd64 queries keep the default; causal launches and hd256 keep their defaults."""
    from kernels.gluon.forward import CAUSAL_TILE_CONFIGS, short_tile
    few = CAUSAL_TILE_CONFIGS[(2, head_dim)]
    for seqlen_q in (1, 1000, 16384):
        for seqlen_k in (1, 1024, max_keys):
            assert short_tile(2, head_dim, False, seqlen_q, seqlen_k) == few
        assert short_tile(2, head_dim, True, seqlen_q, 1024) is None and short_tile(2, 256, False, seqlen_q, 1) is None
    assert short_tile(2, head_dim, False, 16384, max_keys + 1) is None


def test_half_diagonal_only_where_the_kernel_runs_it():
    """TileConfig.half_diagonal is on in the 16-bit causal tiles and dropped wherever its path does not
    exist (FP8, non-causal, without warp specialization or the overlap, block shapes other than 128 rows of 128 or 64
    keys) or spilled (Q in registers at hd128)."""
    import torch
    from dataclasses import replace
    from kernels.gluon.forward import Variant, default_tile
    bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
    assert all(Variant(bf16, d, True).tile.half_diagonal for d in (64, 128, 256))
    on64, on128 = (replace(default_tile(2, d, True), half_diagonal=True) for d in (64, 128))
    assert not Variant(bf16, 64, False, tile_override=on64).tile.half_diagonal
    assert not Variant(bf16, 64, True, warp_specialize=False, tile_override=on64).tile.half_diagonal
    assert not Variant(bf16, 64, True, pipeline=False, tile_override=on64).tile.half_diagonal
    assert Variant(bf16, 64, True, tile_override=replace(on64, block_n=64)).tile.half_diagonal
    assert not Variant(bf16, 64, True, tile_override=replace(on64, block_n=32)).tile.half_diagonal
    assert not Variant(bf16, 128, True, tile_override=replace(on128, q_in_registers=True)).tile.half_diagonal
    assert Variant(bf16, 64, True, tile_override=replace(on64, q_in_registers=True)).tile.half_diagonal
    assert not Variant(fp8, 128, True, q_scale_block=128, kv_scale_block=128,
                       tile_override=replace(default_tile(1, 128, True), half_diagonal=True)).tile.half_diagonal


# The three-consumer hd64 tile (160 registers a thread) with its stamps keeps one register in local memory in the
# loop (one LDL and one STL a block) since the per-thread arrives (TileConfig.thread_arrive); the normal build none.
@pytest.mark.parametrize("name, loop_local_mem", [("float8_e4m3fn_hd128_full_ws1_pipe1_pp1_wgmmav", 0),
                                                  ("bfloat16_hd64_full_ws1_pipe1_pp1", 2)])
def test_trace_stamps_only_in_the_traced_build(reports, name, loop_local_mem):
    """kernels.gluon.trace: the traced build reads %clock64 four times per consumer warpgroup, the normal build
    never, and the stamps stay out of the key loop."""
    plain, traced = reports[name], reports[name + "_traced"]
    assert "error" not in traced, traced.get("error")
    consumers = TILES[(1 if name.startswith("float8") else 2, int(name.split("_hd")[1].split("_")[0]))][0] // 64
    assert plain["ptx_clock_reads"] == 0
    assert traced["ptx_clock_reads"] == 4 * consumers
    assert traced["sass_gmma"] == plain["sass_gmma"]
    assert plain["sass_key_loop_local_mem"] == 0
    assert traced["sass_key_loop_local_mem"] == loop_local_mem
    assert abs(traced["sass_key_loop"] - plain["sass_key_loop"]) <= 8, (plain["sass_key_loop"], traced["sass_key_loop"])


# FP8 hd256's overlapped loop keeps two reloads a block (test_per_thread_arrives_let_fp8_hd256_overlap_...).
@pytest.mark.parametrize("thread, single, bars, single_bars, loop_local_mem", [
    ("bfloat16_hd128_full_ws1_pipe1_pp1", "bfloat16_hd128_full_ws1_pipe1_pp1_arrive0", 1, 4, 0),
    ("float8_e4m3fn_hd128_full_ws1_pipe1_pp1_wgmmav", "float8_e4m3fn_hd128_full_ws1_pipe1_pp1_wgmmav_arrive0", 1, 2, 0),
    ("float8_e4m3fn_hd256_full_ws1_pipe1_pp1_wgmmav", "float8_e4m3fn_hd256_full_ws1_pipe1_pp1_wgmmav_arrive0", 1, 4, 2)])
def test_thread_arrive_leaves_one_bar_sync_per_turn(reports, thread, single, bars, single_bars, loop_local_mem):
    """TileConfig.thread_arrive: the consumers' arrives (slots given back, mbarrier turns passed) go out from every
    thread without the warpgroup bar.sync Gluon puts before a single-thread arrive, so the key loop keeps one per
    wait on a barrier it waited on before (the K ring's in the overlapped loop) where it had one per arrive too (the
    FP8 tiles pass their turns on named barriers, no arrive); same products, no more local memory than stated."""
    per_thread, one_thread = reports[thread], reports[single]
    assert "error" not in per_thread and "error" not in one_thread, (per_thread.get("error"), one_thread.get("error"))
    assert per_thread["sass_key_loop_warpgroup_bars"] == bars, per_thread
    assert one_thread["sass_key_loop_warpgroup_bars"] >= single_bars, one_thread
    assert per_thread["sass_gmma"] == one_thread["sass_gmma"], (per_thread, one_thread)
    assert per_thread["sass_key_loop_local_mem"] <= loop_local_mem, per_thread


def test_o_in_k_compiles_like_o_in_q(reports):
    """TileConfig.o_buffer "k" (O staged in the last key block's K buffer, the non-causal 16-bit hd128 default): the
    same key loop and products as O in Q's buffer, no local memory, one more mbarrier in shared memory."""
    oink, plain = (reports[f"bfloat16_hd128_full_ws1_pipe1_pp1{suffix}"] for suffix in ("", "_o_in_q"))
    assert "error" not in oink and "error" not in plain, (oink.get("error"), plain.get("error"))
    assert oink["sass_gmma"] == plain["sass_gmma"] and oink["sass_key_loop"] == plain["sass_key_loop"], (plain, oink)
    assert oink["sass_local_mem"] == 0 and oink["sass_key_loop_local_mem"] == 0, oink
    assert plain["shared_bytes"] < oink["shared_bytes"] <= plain["shared_bytes"] + 64, (plain, oink)


@pytest.mark.parametrize("key", MASK_BASES, ids=MASK_BASES.values())
def test_causal_unmasked_loop_drops_the_mask_test(reports, key):
    """TileConfig.causal_unmasked_loop (the row_bound_mask off in both): each consumer runs two key loops, the second
    (blocks below the diagonal) without the masking branch, so shorter as laid out by at least that branch; no local
    memory in either, and no more PRMT than the one-loop tile's in each (16-bit P carried as bf16 from one loop into
    the other had ptxas swap its halves, 32-64 PRMT a block where the one loop has none; FP8 P's packing takes some
    in every loop). Measured on this CPU's compile (session 24): unmasked loop 423 / 467 / 469 instructions against
    the one loop's 435 / 479 / 477 executed where a block needs no mask (692 / 736 / 734 as laid out). FP8 hd256
    reloads a few registers a block in every build (entry 48): there neither loop may reload more than the one loop
    (session 33: 9 and 4 against 11 a consumer)."""
    on, off = reports[_mask_name(key, True, False)], reports[_mask_name(key, False, False)]
    assert "error" not in on and "error" not in off, (on.get("error"), off.get("error"))
    assert len(off["sass_key_loop_sizes"]) == 2 and len(on["sass_key_loop_sizes"]) == 4, (off, on)
    masked, unmasked = on["sass_key_loop_sizes"][:2]
    assert unmasked <= off["sass_key_loop_sizes"][0] - 200 and masked >= off["sass_key_loop_sizes"][0] - 16, (off, on)
    assert on["sass_key_loops_prmt"] <= 2 * off["sass_key_loops_prmt"], on
    one_loop = off["sass_key_loop_local_mem"]  # the first consumer's
    masked_reloads = on["sass_key_loop_local_mem"]
    unmasked_reloads = on["sass_key_loops_local_mem"] // 2 - masked_reloads
    assert max(masked_reloads, unmasked_reloads) <= one_loop, (off, on)
    if key not in RELOADING_TILES:
        assert on["sass_key_loops_local_mem"] == 0, on


@pytest.mark.parametrize("key", MASK_BASES, ids=MASK_BASES.values())
def test_row_bound_mask_shortens_the_masking_branch(reports, key):
    """TileConfig.row_bound_mask (one key loop): one compare per score against each row's last key instead of two
    and their AND; measured on this CPU (session 24) the masking branch shrinks from 257 instructions to 160, and the
    loop with it; no local memory but in FP8 hd256's, which reloads registers in every build and more with it
    (session 33: 17 a block against 11), one reason it is off there."""
    on, off = reports[_mask_name(key, False, True)], reports[_mask_name(key, False, False)]
    assert "error" not in on and "error" not in off, (on.get("error"), off.get("error"))
    assert on["sass_key_loop_sizes"][0] <= off["sass_key_loop_sizes"][0] - 64, (off, on)
    assert on["sass_gmma"] == off["sass_gmma"], on
    if key not in RELOADING_TILES:
        assert on["sass_key_loop_local_mem"] == 0, on


def test_per_thread_arrives_let_fp8_hd256_overlap_its_128_key_tile(reports):
    """FP8 hd256's 128-key tile overlapped (the default) with split K/V release: with Gluon's single-thread arrives
    and mbarrier turns its key loop spilled (23 local-memory instructions a block on this CPU's compile, session 25);
    with per-thread arrives and named-barrier turns it keeps S, the previous block's fp32 P and O in registers but
    for two reloads, in a loop no longer than the unoverlapped one's by more than the overlap's own steps."""
    single, per_thread, plain = (reports[name] for name in (FP8_256_SINGLE, "float8_e4m3fn_hd256_full_ws1_pipe1_pp1_wgmmav",
                                                            FP8_256_PLAIN))
    assert "error" not in single and "error" not in per_thread, (single.get("error"), per_thread.get("error"))
    assert per_thread["sass_key_loop_local_mem"] <= 2 < single["sass_key_loop_local_mem"], (single, per_thread)
    assert per_thread["sass_gmma"] == plain["sass_gmma"], (plain, per_thread)
    assert per_thread["sass_key_loop"] <= plain["sass_key_loop"] + 32, (plain["sass_key_loop"], per_thread)


@pytest.mark.parametrize("base", QREG_BASES)
def test_q_in_registers_makes_qk_an_rs_wgmma(reports, base):
    """TileConfig.q_in_registers: the key loop's QK^T wgmmas over Q's first 128 columns take their A operand from
    registers (as PV takes P), where the default's read both from shared memory: all of them at hd64/128, half at
    hd256; the same wgmma count and shared memory, key loops without local memory and no longer than the
    default's by more than 8 instructions (session 34's compile: 467-741 against 466-740 at hd64/128, 410-559
    against 437-571 at hd256; FP8 hd128 spills 86 and 33 instructions outside them, once a tile)."""
    on, off = _qreg_pair(reports, base)
    assert "error" not in on and "error" not in off, (on.get("error"), off.get("error"))
    d = int(base.split("_hd")[1].split("_")[0])
    qk = off["sass_key_loop_gmma"] - off["sass_key_loop_rs_gmma"]  # the default's QK^T wgmmas (SS) in the loop
    assert qk > 0, off
    assert on["sass_key_loop_rs_gmma"] == off["sass_key_loop_rs_gmma"] + qk * min(d, 128) // d, (off, on)
    # The 16-bit hd128 causal default's half-diagonal block (TileConfig.half_diagonal) goes with Q in registers.
    dropped = 128 // 16 + 2 * 64 // 16 if base == "bfloat16_hd128_causal_ws1_pipe1_pp1" else 0
    assert on["sass_gmma"] == off["sass_gmma"] - dropped and on["shared_bytes"] == off["shared_bytes"], (off, on)
    assert on["sass_key_loop_gmma"] == off["sass_key_loop_gmma"], (off, on)
    assert on["sass_key_loops_local_mem"] == 0, on
    assert len(on["sass_key_loop_sizes"]) == len(off["sass_key_loop_sizes"]), (off, on)
    assert all(a <= b + 8 for a, b in zip(on["sass_key_loop_sizes"], off["sass_key_loop_sizes"])), (off, on)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_half_diagonal_adds_the_half_block_gemms_outside_the_key_loop(reports, head_dim):
    """TileConfig.half_diagonal: on 128-key blocks (hd64, hd128) consumer 0's diagonal block runs on its first 64
    keys, once a tile, before its key loop: its own wgmmas (the m64n64 QK^T, head_dim / 16 k-steps, and a k64 PV, 4,
    once after it and once in the one-block tiles' last PV) besides the default's; on hd256's 64-key blocks it hands
    the block above its rows back unread (skip_block) and adds none. Either way the same registers and shared memory,
    and key loops without local memory and as long as the default's (within 8 instructions; the hd128 build spills
    24 bytes outside them, once a tile)."""
    base = f"bfloat16_hd{head_dim}_causal_ws1_pipe1_pp1"
    on, off = reports[base], reports[base + "_half0"]
    assert "error" not in on and "error" not in off, (on.get("error"), off.get("error"))
    half_block_gemms = 0 if head_dim == 256 else head_dim // 16 + 2 * 64 // 16
    assert on["ptx_wgmma"] == off["ptx_wgmma"] + half_block_gemms, (off, on)
    assert on["sass_gmma"] == on["ptx_wgmma"], on
    assert on["sass_key_loop_gmma"] == off["sass_key_loop_gmma"], (off, on)
    assert on["shared_bytes"] == off["shared_bytes"] and on["reg"] == off["reg"], (off, on)
    assert on["sass_key_loops_local_mem"] == 0, on
    assert len(on["sass_key_loop_sizes"]) == len(off["sass_key_loop_sizes"]), (off, on)
    assert all(abs(a - b) <= 8 for a, b in zip(on["sass_key_loop_sizes"], off["sass_key_loop_sizes"])), (off, on)
