"""Host side of the Hopper attention forward: checks, tile configs, TMA descriptors, launch.

`attention_forward` (bf16/fp16) and `fp8_attention_forward` (on the FP8
pre-pass's outputs, kernels.quant) are what `kernels.ops` / `kernels.fp8`
dispatch to on sm_90; both run the one kernel in kernel.py. Keyword switches
turn off FA3's scheduling features one at a time (the paper's Table 2
ablation): `warp_specialize=False` drops the producer warp and the consumer
warpgroups (one 8-warp partition of 128 rows issues its own TMA loads),
`pipeline=False` drops the intra-warpgroup softmax/GEMM overlap, and
`pingpong=False` lets the consumer warpgroups issue GEMMs freely. `tile` overrides the tile config
(tuning). `compile_forward` builds a variant ahead of time for a GPU target
(used by the CPU compile test: no GPU needed).
"""
import functools
import math
from dataclasses import dataclass, replace

import torch
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.checks import tma_ready
from kernels.device import sm_count
from kernels.launch import Launcher, compile_for, rebased
from kernels.quant import FP8QKV

from .kernel import attention_fwd_kernel
from .scheduler import TILE_FIXED_BLOCKS, causal_order, num_m_blocks, schedule_table, section_heads

HOPPER = GPUTarget("cuda", 90, 32)
# Head dims get the tile of the next of these; TMA zero-fills the extra columns on load and clips them on store.
HEAD_DIMS = (64, 128, 256)
HEAD_DIM_MULTIPLE = 8  # 16-byte rows for TMA
GL_DTYPES = {
    torch.bfloat16: gl.bfloat16,
    torch.float16: gl.float16,
    torch.float8_e4m3fn: gl.float8e4nv,
    torch.float8_e5m2: gl.float8e5,
    torch.float32: gl.float32,  # the backward's dQ accumulator
}
HALF_DTYPES = (torch.bfloat16, torch.float16)  # 16-bit inputs and every output
LOG2_E = 1.4426950408889634
CONSUMER_ROWS = 64  # query rows per consumer warpgroup (one m64 wgmma)
# Registers per thread, keyed by consumer warpgroups: (at launch, consumers, producer) after setmaxnreg.
# The consumers plus the producer's warpgroup share 64K registers (FA3's splits): 12 warps average 168,
# moved to 240 / 240 / 24; 16 warps average 128, moved to 160 / 160 / 160 / 24 (3 * 160 + 24 <= 4 * 128).
WS_REGS = {2: (168, 240, 24), 3: (128, 160, 24)}


O_BUFFERS = ("own", "q", "k")  # TileConfig.o_buffer


@dataclass(frozen=True)
class TileConfig:
    block_m: int  # query rows per tile: 64 per consumer warpgroup (128 or 192; 128 without warp specialization)
    block_n: int  # keys per K/V block
    stages: int  # K/V ring depth
    # Where O is staged for its TMA store: "own" (its own buffer), "q" (Q's buffer: saves shared memory, needs O no
    # wider than Q) or "k" (the K buffer of the tile's last key block, which the consumers free only once O's store
    # has read it, so Q's slot goes back right after the key loop and the next Q loads under the epilogue; where it
    # cannot run (FP8, no warp specialization or pipelining, split K/V, block_n != block_m) Variant.tile stages O
    # in Q's buffer instead (16-bit) or its own (FP8), and so does attention_forward for causal tiles that see no
    # key (seqlen_q > seqlen_k)).
    o_buffer: str
    split_kv: bool = False  # K and V slots released separately, V a block behind K if overlapped (pipeline.py)
    # Synchronization options (pipeline.py, mainloop.py): off by default but for thread_arrive (most tiles) and
    # named_turn (FP8 hd128); each passes the H200 checks (tests/kernels/test_gluon_attention.py).
    split_q: bool = False  # each consumer's Q slice loaded once that consumer is done with the last tile
    q_stages: int = 1  # Q ring depth: 2 loads the next tile's Q during the current one
    branch_fence: bool = False  # softmax kept ahead of the PV wait by a branch, not an mbarrier wait
    named_turn: bool = False  # ping-pong turns on named hardware barriers (FA3), not mbarriers
    # Consumers release slots and pass turns by a per-thread arrive (cp.async.mbarrier.arrive.noinc, every thread
    # counted), which Gluon does not fence with the warpgroup bar.sync it puts before a single-thread arrive.
    thread_arrive: bool = False
    # Consumer instruction trims (mainloop.py; docs/tuning-gluon.md entries 18, 30): on in the FP8 tiles
    # (FP8_TRIMS) and, but for the FP8-only fast_v_ratio, in the 16-bit hd128/hd256 tiles (ROW_TRIMS).
    fast_v_ratio: bool = False  # FP8: V-scale ratio by rcp.approx (one MUFU) instead of a full-range divide
    thread_row_sum: bool = False  # row sums per thread, quad-reduced once per tile (no shuffles per block)
    unmasked_loop: bool = False  # non-causal: blocks after the first visited one skip the mask test and -inf guard
    # Causal: the blocks below the diagonal (visited last) run in a loop of their own without the mask test and
    # -inf guard, after those that cross it (FA3's masking steps). Same results bit for bit; CAUSAL_MASK below.
    causal_unmasked_loop: bool = False
    # Causal masks by one compare per score, against the last key each row sees (softmax.mask_scores): the same keys
    # masked, ~100 fewer instructions per masked block in the CPU compile; CAUSAL_MASK below.
    row_bound_mask: bool = False
    # 16-bit: a row's max moves only when it grows by more than a factor 2^8 (FA4's trick), so the O rescale,
    # skipped by a thread none of whose rows moved, becomes rare (mainloop.rescale_o). P then reaches 2^8 and its
    # largest values are rounded too (max error up to ~2x, entry 33); FP8 P would leave e4m3's range.
    lazy_rescale: bool = False
    # Overlapped loop: O's rescale by the previous block's alpha runs after this block's QK^T is issued, under it
    # (FA3's order), instead of before the turn; PV still waits for it.
    rescale_under_s: bool = False
    # FA3's intra-warpgroup softmax/GEMM overlap; on in every default tile. Off, the ping-pong between consumers
    # still hides the softmax, and fewer registers are live (a key tile's S, the previous block's fp32 P and O).
    overlap: bool = True
    paired_causal: bool = True  # causal tile order: m-blocks in pairs of equal work (scheduler.py), else longest first
    # Paired causal order: the last heads' tiles dealt one by one, longest first, so that the programs end together
    # (scheduler.causal_order); off, every program runs whole units and they end up to one unit apart.
    balance_tail: bool = True
    # The causal deal's cost model: what a tile costs beyond its key blocks, in key blocks (scheduler.causal_order).
    causal_fixed_blocks: int = TILE_FIXED_BLOCKS
    # QK^T as an RS wgmma on Q loaded into registers once a tile (kernel.py), as PV takes P, instead of reading Q
    # from shared memory in every key block (a fifth of a hd128 block's shared-memory reads); Q's slot then goes
    # back before the key loop unless O is staged there. At hd256 the first 128 columns (kernel.Q_REGISTER_COLS),
    # the rest still read from shared memory. Key loops without spills at 16-bit hd64 (128-row tiles), hd128 and
    # hd256 and FP8 hd64/hd128; they spill in FP8 hd256 and the 192-row hd64 tile (CPU compile, entry 58).
    q_in_registers: bool = False
    # Causal: the first consumer's rows of a tile see only the first half of the keys on its diagonal, so it leaves
    # the other half out. With 128-key blocks (seqlen_q == seqlen_k) its QK^T, softmax and PV on the diagonal block
    # run on those 64 keys (an m64n64 S, a k64 PV) instead of 128 with half masked; with 64-key blocks it hands the
    # block above its rows back unread. 16-bit, overlapped, warp-specialized 128-row tiles; elsewhere off
    # (Variant.tile, attention_forward).
    half_diagonal: bool = False

    def __post_init__(self):
        if self.block_m not in (2 * CONSUMER_ROWS, 3 * CONSUMER_ROWS):
            raise ValueError(f"TileConfig.block_m must be 128 or 192 (two or three consumers), got {self.block_m}")
        if self.block_n not in (32, 64, 128, 256):
            raise ValueError(f"TileConfig.block_n must be a power of two from 32 to 256, got {self.block_n}")
        if self.stages < 1:
            raise ValueError(f"TileConfig.stages must be at least 1, got {self.stages}")
        if self.q_stages not in (1, 2):
            raise ValueError(f"TileConfig.q_stages must be 1 or 2, got {self.q_stages}")
        if self.causal_fixed_blocks < 0:
            raise ValueError(f"TileConfig.causal_fixed_blocks must be at least 0, got {self.causal_fixed_blocks}")
        if self.o_buffer not in O_BUFFERS:
            raise ValueError(f"TileConfig.o_buffer must be one of {O_BUFFERS}, got {self.o_buffer!r}")


# The consumer trims, with V^T in wgmma key order (kernels.fp8.GLUON_FP8_WGMMA_V_ORDER): FP8 hd128 +6-8%, hd256
# +6-12% on the H200 (docs/tuning-gluon.md, entries 17-18); the row trims alone on 16-bit tiles: entry 30.
ROW_TRIMS = dict(thread_row_sum=True, unmasked_loop=True)
FP8_TRIMS = dict(ROW_TRIMS, fast_v_ratio=True)
# Per-thread arrives (TileConfig.thread_arrive: one warpgroup bar.sync per key block instead of four; H200 A/Bs in
# docs/tuning-gluon.md, entry 44): FP8 hd128 +2-7% in four calls; the 16-bit hd128/hd256 and 192-row hd64 tiles
# within -3% to +3%, one way or the other from call to call. Left out: FP8 hd64 (-2%), the 128-row hd64 tiles (-5% at
# 1k keys once, level at 2k causal). FP8 hd256 measured 0% to -2% without the overlap; overlapped, it needs them.
ARRIVE = dict(thread_arrive=True)
# Keyed by (input element bytes, head dim). Shared memory (of 227 KB), in KB, Q + stages * (K + V) + O:
# 16-bit hd64 24 + 2*32 + 24 (192 query rows), hd128 32 + 3*64 (O in Q's place), hd256 64 + 2*64 (O in Q's
# place); fp8 (bf16 O) hd64 8 + 4*16 + 16, hd128 16 + 3*32 + 32, hd256 32 + 3*32 + 64.
# Block sizes must be powers of two (Gluon tensor shapes), so FA3's 176 and 80 key blocks are out.
# H200 numbers behind each choice are in docs/tuning-gluon.md.
TILE_CONFIGS = {
    # Three consumer warpgroups (FA3's hd64 choice): more softmax hides under GEMMs; 160 registers each. The row
    # trims: +0.3-3.4% from 2k to 16k keys (entry 39). Causal hd64, and non-causal launches that this tile would
    # pad (short_tile), run 128-row tiles; this one, run causal, keeps the longest-first order: with three
    # consumers the paired order ran 23% and 5% slower at 1k and 2k keys (docs/tuning-gluon.md, entry 31).
    (2, 64): TileConfig(block_m=192, block_n=128, stages=2, o_buffer="own", split_kv=True, paired_causal=False,
                        **ROW_TRIMS, **ARRIVE),
    # 3 stages: the pipelined consumer holds two slots at once (K of block i, V of block i-1); with 2 stages
    # the next load waits for a release and hd128 ran at 438 TFLOPs/s, with 3 at 620. Split K/V release
    # with 2 stages measured 0.9-1.0x of this.
    # ROW_TRIMS at hd128 and hd256: a tie to +2% and +2-7% non-causal, +2-3% causal at 16k (entry 30).
    # Lazy rescale at hd128 and hd256: +2-5% and +7% (entry 33). O staged in the last key block's K buffer
    # (o_buffer "k"): +3.4% / +1.8% at 1k / 2k keys and level from 4k non-causal (entry 38).
    (2, 128): TileConfig(block_m=128, block_n=128, stages=3, o_buffer="k", lazy_rescale=True, **ROW_TRIMS, **ARRIVE),
    # Split K/V release: the only way out of stage starvation where 3 stages do not fit (+45-60%).
    (2, 256): TileConfig(block_m=128, block_n=64, stages=2, o_buffer="q", split_kv=True, lazy_rescale=True,
                         **ROW_TRIMS, **ARRIVE),
    # Causal FP8 hd64: the paired order measured -2% to +1% (entry 31), the others +2-7% from 1k to 8k keys.
    (1, 64): TileConfig(block_m=128, block_n=128, stages=4, o_buffer="own", paired_causal=False, **FP8_TRIMS),
    # O's rescale under the next QK^T (FA3's order): +1-4% from 2k to 16k keys (docs/tuning-gluon.md, entry 35); the
    # 16-bit tiles measured -4% to +2% with it and keep the rescale after the PV wait. Named-barrier turns on top of
    # the per-thread arrives: -1% to +2.5% (entry 44).
    (1, 128): TileConfig(block_m=128, block_n=128, stages=3, o_buffer="own", rescale_under_s=True, **FP8_TRIMS,
                         **ARRIVE, named_turn=True),
    # 128-key tiles overlapped, as FA3 runs them: with split K/V release, per-thread arrives and named turns the
    # overlapped loop fits the registers (without them it spilled, entries 22 and 48) and ran 1191-1238 TFLOPs/s
    # from 4k to 16k keys against 1104-1115 without the overlap (+6-12%, entry 50); +6-9% in rounds interleaved on
    # one machine (entry 51). 224 KB of shared memory.
    (1, 256): TileConfig(block_m=128, block_n=128, stages=2, o_buffer="own", split_kv=True, **FP8_TRIMS, **ARRIVE,
                         named_turn=True),
}
# Causal tiles where they differ: at hd64 two consumers of paired tiles ran 9-22% faster than three consumers of
# longest-first tiles from 1k to 4k keys, level at 8k-16k, and the row trims added 0-3% (docs/tuning-gluon.md,
# entry 31); O in the K buffer with the lazy rescale another +1-3% from 2k to 16k (entry 39). The blocks below the
# diagonal without the mask test and the mask by one compare per score (entries 46-47): hd64 +5% from 1k to 4k
# keys, FP8 hd128 +8% at 16k (entry 50; +4-8% and +6-7% interleaved on one machine, entry 51); at 16-bit
# hd128/hd256 -5% to +3% and -12% to +2%, so left off there.
CAUSAL_MASK = dict(causal_unmasked_loop=True, row_bound_mask=True)
# The first consumer's diagonal block on the 64 keys its rows see (TileConfig.half_diagonal): +1.8-2.5% at 1k keys
# and +1.1-1.6% at 2k at hd64, +0.9-1.8% and +1.4-2.8% at hd128, +0.4-0.9% at 4k-16k, in two A/Bs (H100, entry 62);
# hd256 (the block above its rows skipped): +3.4-3.8% at 1k, +1.3-1.9% at 2k, +0.3-3% from 4k (H100, entry 63).
HALF_DIAGONAL = dict(half_diagonal=True)
CAUSAL_TILE_CONFIGS = {
    # A second Q slot: the next tile's Q loads under this one; +7-10% at 1k keys, +5% at 2k, level from 4k
    # (entry 52).
    # Q in registers for QK^T: +0.4-1.2% at 1k keys and +0.2-0.8% at 2k in three A/Bs (H100, entry 58).
    (2, 64): TileConfig(block_m=128, block_n=128, stages=3, o_buffer="k", lazy_rescale=True, **ROW_TRIMS,
                        **CAUSAL_MASK, q_stages=2, q_in_registers=True, **HALF_DIAGONAL),
    # 16-bit hd128: two Q slots fit beside two stages of split K/V (197 KB), O in Q's buffer (split K/V frees K
    # slots after QK^T): +10% / +4% / +2% at 1k / 2k / 4k keys, +3% at 8k, -2% and +1% at 16k in two A/Bs (H100,
    # entry 53).
    (2, 128): replace(TILE_CONFIGS[2, 128], q_stages=2, stages=2, split_kv=True, o_buffer="q", **HALF_DIAGONAL),
    # Q in registers for QK^T: +2.2-5.5% from 4k to 16k keys in two A/Bs (H100, entry 58); non-causal it read -1.5%
    # to +3.4% and stays off there.
    (1, 128): replace(TILE_CONFIGS[1, 128], **CAUSAL_MASK, q_in_registers=True),
    # 16-bit hd256: the first consumer hands back the 64-key block above its rows (HALF_DIAGONAL above).
    (2, 256): replace(TILE_CONFIGS[2, 256], **HALF_DIAGONAL),
    # FP8 hd64: the mask by one compare alone, +2-3% from 1k to 4k keys; the split loop lost 1-3% (entry 52). Two Q
    # slots: +7% / +5% / +2% / +2% / +1% at 1k / 2k / 4k / 8k / 16k keys (H100, entry 53).
    (1, 64): replace(TILE_CONFIGS[1, 64], row_bound_mask=True, q_stages=2),
    # FP8 hd256: the blocks below the diagonal in their own loop, +2-5% from 2k to 16k keys; the mask by one compare
    # level to -3% (H100, entry 56).
    (1, 256): replace(TILE_CONFIGS[1, 256], causal_unmasked_loop=True),
}
# Non-causal tiles for query lengths that the default's rows overshoot by more than PADDING_SLACK times this
# tile's (short_tile): at hd64 192-row tiles pad 512 or 1k queries by 12.5%, and a 128-row tile ran 5-8% faster
# there (entry 39), two Q slots another +11% / +6% at 512 / 1k queries (H100, entry 53). The causal hd64 tile (O
# staged in the last K buffer, Q in registers) ran +1-3% above that tile at 1k keys and 3-6% from 2k to 16k in two
# A/Bs (H100, entry 64), so it took that place.
SHORT_TILE_CONFIGS = {(2, 64): CAUSAL_TILE_CONFIGS[2, 64]}
PADDING_SLACK = 1.05
# Non-causal tiles for launches of at most this many keys, whatever the queries (short_tile): at 16-bit hd128 the
# causal tile's two Q slots beside two stages of split K/V ran +6% / +3% / +2% / +2% at 1k / 2k / 4k / 8k keys, -1%
# and -2% at 16k in two A/Bs (H100, entry 53); a third, +6% / +4% / +3% / -0.5% / +1% (entry 54). At hd64 the
# causal tile against the 192-row default: +1-2% at 2k keys, +1-3% at 4k, -4% to -5% at 8k and 16k (H100, entry 64).
FEW_KEYS_TILE_CONFIGS = {(2, 64): (4096, CAUSAL_TILE_CONFIGS[2, 64]), (2, 128): (8192, CAUSAL_TILE_CONFIGS[2, 128])}


def default_tile(dtype_bytes: int, head_dim: int, causal: bool) -> TileConfig:
    key = (dtype_bytes, head_dim)
    return CAUSAL_TILE_CONFIGS.get(key, TILE_CONFIGS[key]) if causal else TILE_CONFIGS[key]


def short_tile(dtype_bytes: int, head_dim: int, causal: bool, seqlen_q: int, seqlen_k: int) -> TileConfig | None:
    """The tile for a non-causal launch of seqlen_q queries and seqlen_k keys where a length picks one: that of
    FEW_KEYS_TILE_CONFIGS up to its key count, else that of SHORT_TILE_CONFIGS where the default tile would pad the
    queries by more than PADDING_SLACK times as many rows; else None (the default stands)."""
    key = (dtype_bytes, head_dim)
    if causal:
        return None
    if key in FEW_KEYS_TILE_CONFIGS:
        max_keys, few = FEW_KEYS_TILE_CONFIGS[key]
        if seqlen_k <= max_keys:
            return few
    short = SHORT_TILE_CONFIGS.get(key)
    if short is None:
        return None

    def padded(rows):
        return -(-seqlen_q // rows) * rows

    overshoot = padded(TILE_CONFIGS[dtype_bytes, head_dim].block_m) / padded(short.block_m)
    return short if overshoot > PADDING_SLACK else None


@dataclass(frozen=True)
class Variant:
    """Compile-time shape of one forward kernel."""
    dtype: torch.dtype  # of q, k, v
    head_dim: int  # one of HEAD_DIMS
    causal: bool
    warp_specialize: bool = True
    pipeline: bool = True
    pingpong: bool = True
    tile_override: TileConfig | None = None
    out_dtype: torch.dtype | None = None  # None: q's dtype (16-bit inputs)
    q_scale_block: int | None = None  # FP8: query rows per Q scale
    kv_scale_block: int | None = None  # FP8: keys per K/V scale; the key block is the tile's, at most this
    v_wgmma_keys: bool = False  # FP8: V^T's keys in wgmma order (kernels.quant.FP8QKV), P goes to PV unshuffled
    # A programmatic dependent launch: the programs start (shared memory, barriers, registers) while the kernel
    # before them ends, and wait for it before touching global memory (pipeline.wait_for_prior_grids).
    launch_pdl: bool = True

    def __post_init__(self):
        if self.v_wgmma_keys and not self.fp8:
            raise ValueError("Variant.v_wgmma_keys is an FP8 layout of V^T; 16-bit V is not transposed")
        if self.fp8 and self.tile_override is not None and self.tile_override.lazy_rescale:
            raise ValueError("TileConfig.lazy_rescale is for 16-bit inputs: FP8 P would leave e4m3's range")

    @property
    def fp8(self):
        return self.dtype.itemsize == 1

    @functools.cached_property  # read several times per launch
    def tile(self):
        tile = self.tile_override or default_tile(self.dtype.itemsize, self.head_dim, self.causal)
        if tile.o_buffer == "k" and (self.fp8 or not self.warp_specialize or not self.pipeline or tile.split_kv
                                     or tile.block_n != tile.block_m or not tile.overlap):
            # FP8 K is not O's dtype; without a producer the slot is refilled at once; the unpipelined loop frees
            # every slot itself; split K/V frees K slots after QK^T; a K block must hold all consumers' rows.
            tile = replace(tile, o_buffer="own" if self.fp8 else "q")
        if not self.warp_specialize:
            # One 8-warp partition (two m64 wgmma row blocks) that refills each slot itself once it is free.
            tile = replace(tile, block_m=2 * CONSUMER_ROWS, split_kv=False, thread_arrive=False)
        if tile.half_diagonal and (self.fp8 or not self.causal or not self.warp_specialize or not self.overlap_on(tile)
                                   or tile.block_m != 2 * CONSUMER_ROWS
                                   or tile.block_n not in (CONSUMER_ROWS, tile.block_m)
                                   or tile.q_in_registers and self.head_dim > 64):
            # (With Q in registers at hd128 the first consumer's key loop spilled: Q beside P carried in fp32.)
            tile = replace(tile, half_diagonal=False)
        if self.kv_scale_block is not None and self.kv_scale_block < tile.block_n:
            tile = replace(tile, block_n=self.kv_scale_block)  # a key block never straddles two scale blocks
        return tile

    @property
    def overlap(self):
        """Whether the consumers overlap a block's softmax with their own GEMMs (the switch and the tile agree)."""
        return self.overlap_on(self.tile)

    def overlap_on(self, tile):
        return self.pipeline and tile.overlap

    @property
    def num_consumers(self):
        return self.tile.block_m // CONSUMER_ROWS if self.warp_specialize else 1

    @property
    def num_warps(self):
        # Warp-specialized: the default partition is one consumer warpgroup.
        return 4 if self.warp_specialize else 8

    @property
    def rows_per_consumer(self):
        return self.tile.block_m // self.num_consumers

    @functools.cached_property  # built once per configuration (`cached_variant`), read on every launch
    def constexprs(self):
        return dict(
            CAUSAL=self.causal,
            STAGES=self.tile.stages,
            NUM_CONSUMERS=self.num_consumers,
            O_BUFFER=self.tile.o_buffer,
            SPLIT_KV=self.tile.split_kv,
            SPLIT_Q=self.tile.split_q,
            Q_STAGES=self.tile.q_stages,
            BRANCH_FENCE=self.tile.branch_fence,
            NAMED_TURN=self.tile.named_turn,
            THREAD_ARRIVE=self.tile.thread_arrive,
            FAST_V_RATIO=self.tile.fast_v_ratio,
            THREAD_ROW_SUM=self.tile.thread_row_sum,
            UNMASKED_LOOP=self.tile.unmasked_loop,
            CAUSAL_UNMASKED_LOOP=self.tile.causal_unmasked_loop,
            ROW_BOUND_MASK=self.tile.row_bound_mask,
            LAZY_RESCALE=self.tile.lazy_rescale,
            RESCALE_UNDER_S=self.tile.rescale_under_s,
            HALF_DIAGONAL=self.tile.half_diagonal,
            Q_IN_REGISTERS=self.tile.q_in_registers,
            V_WGMMA_KEYS=self.v_wgmma_keys,
            Q_SCALE_BLOCK=self.q_scale_block,
            KV_SCALE_BLOCK=self.kv_scale_block,
            WARP_SPECIALIZE=self.warp_specialize,
            OVERLAP=self.overlap,
            PINGPONG=self.pingpong and self.warp_specialize,
            CONSUMER_REGS=WS_REGS[self.num_consumers][1] if self.warp_specialize else None,
            PRODUCER_REGS=WS_REGS[self.num_consumers][2] if self.warp_specialize else None,
        )

    @functools.cached_property
    def options(self):
        opts = dict(num_warps=self.num_warps, launch_pdl=self.launch_pdl)
        if self.warp_specialize:
            opts["maxnreg"] = WS_REGS[self.num_consumers][0]
        return opts

    def descriptors(self, q, k, v, o):
        """4-D TMA descriptors: boxes of one (batch, head); FP8 V is (batch, head, dim, seq) (kernels.quant)."""
        d, bn = self.head_dim, self.tile.block_n
        q_block = [1, self.rows_per_consumer, 1, d]
        kv_block = [1, bn, 1, d]
        v_block = [1, 1, d, bn] if self.fp8 else kv_block

        def desc(t, block):
            return TensorDescriptor.from_tensor(t, block, shared_layout(tuple(block), GL_DTYPES[t.dtype]))

        return desc(q, q_block), desc(k, kv_block), desc(v, v_block), desc(o, q_block)


launch_forward = Launcher(attention_fwd_kernel)
# One Variant per configuration, so that its tile and launch dicts are worked out once (~10 µs a launch on our CPU).
cached_variant = functools.lru_cache(maxsize=None)(Variant)


@functools.cache
def shared_layout(block: tuple, dtype) -> gl.NVMMASharedLayout:
    """The swizzled shared-memory layout of a TMA box (NVMMASharedLayout.get_default_for costs ~7 µs a call)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), dtype)


def head_dim_tile(head_dim):
    """The head dim the kernel computes with: the smallest of HEAD_DIMS that holds head_dim."""
    return next(d for d in HEAD_DIMS if d >= head_dim)


def _check_inputs(q, k, v, softmax_scale):
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise ValueError("the Gluon kernels need CUDA tensors")
    if q.dtype not in HALF_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must all be bfloat16 or float16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, seqlen, nheads, headdim)")
    b, _, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k and v must be (batch, seqlen_k, nheads_kv, headdim) like q; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if h % k.shape[2]:
        raise ValueError(f"nheads ({h}) must be a multiple of nheads_kv ({k.shape[2]})")
    if d % HEAD_DIM_MULTIPLE or not 0 < d <= HEAD_DIMS[-1]:
        raise ValueError(f"head dim must be a multiple of {HEAD_DIM_MULTIPLE} up to {HEAD_DIMS[-1]}, got {d}")
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale}")


@dataclass(frozen=True, eq=False)  # compared by identity: part of a Launcher key
class LaunchPlan:
    """What a forward launch needs but the tensors' addresses and the softmax scale, worked out once per variant,
    shapes and strides (`launch_plan`); a call then allocates out and lse, rebases the descriptors and launches."""
    grid: tuple
    descriptors: tuple  # of q, k, v, out over meta tensors (kernels.launch.rebased)
    # batch, heads, GQA group, sections, seqlen_q, seqlen_k, then a causal launch's tile lists
    # (scheduler.schedule_table, on the device) and their row length, else None and 0
    scalars: tuple


@functools.lru_cache(maxsize=256)
def launch_plan(variant: Variant, q_shape, k_shape, v_shape, strides, device) -> LaunchPlan:
    """The plan of a launch over tma_ready q, k, v (FP8 V: V^T) of these shapes and strides (q's, k's, v's).
    A causal plan copies its tile table to the device, which a stream being captured into a CUDA graph refuses:
    make one eager call of a shape before capturing it."""
    b, seqlen_q, h, d = q_shape
    h_kv = k_shape[2]
    q, k, v = (torch.empty_strided(shape, stride, dtype=variant.dtype, device="meta")
               for shape, stride in zip((q_shape, k_shape, v_shape), strides))
    out = torch.empty(q_shape, dtype=variant.out_dtype or variant.dtype, device="meta")
    tile = variant.tile
    n_m = num_m_blocks(seqlen_q, tile.block_m)
    grid = min(sm_count(device), n_m * b * h)
    schedule, stride = None, 0
    if variant.causal:
        programs = causal_order(b * h, n_m, seqlen_q, k_shape[1], tile.block_m, tile.block_n, grid, tile.paired_causal,
                                tile.balance_tail, head_kv_bytes=2 * k_shape[1] * d * variant.dtype.itemsize,
                                fixed_blocks=tile.causal_fixed_blocks)
        schedule = schedule_table(programs, n_m).to(device)
        stride = schedule.shape[1]
    sections = section_heads(h, h_kv)
    return LaunchPlan((grid,), variant.descriptors(q, k, v, out),
                      (b, h, h // h_kv, sections, seqlen_q, k_shape[1], schedule, stride))


def _launch(variant, q, k, v, scales, softmax_scale, out_dtype, trace=None):
    """Allocate out and lse, launch the persistent grid; q/k/v as the descriptors expect them. trace: an int64
    buffer for the consumers' cycle stamps (kernels.gluon.trace), None normally."""
    out, lse, launch = _prepare(variant, q, k, v, scales, softmax_scale, out_dtype, trace)
    launch()
    return out, lse


def _prepare(variant, q, k, v, scales, softmax_scale, out_dtype, trace=None):
    """_launch's out and lse, allocated, and the call that launches the kernel to fill them."""
    b, seqlen_q, h, d = q.shape
    out = torch.empty(b, seqlen_q, h, d, device=q.device, dtype=out_dtype)
    lse = torch.empty(b, h, seqlen_q, device=q.device, dtype=torch.float32)
    if seqlen_q == 0 or b == 0:
        return out, lse, lambda: None
    if k.shape[1] == 0:
        return out, lse, lambda: (out.zero_(), lse.fill_(float("inf")))
    plan = launch_plan(variant, q.shape, k.shape, v.shape, (q.stride(), k.stride(), v.stride()), q.device)
    descriptors = tuple(rebased(desc, t) for desc, t in zip(plan.descriptors, (q, k, v, out)))
    # The plan fixes the specialization but for the alignment of the tensors passed as pointers that a caller
    # made (lse is a fresh allocation, the causal schedule the plan's own).
    aligned = tuple(t.data_ptr() % 16 == 0 for t in (*scales, trace) if t is not None)
    args = _kernel_args(descriptors, lse, scales, softmax_scale, plan.scalars, trace)
    return out, lse, functools.partial(launch_forward, plan.grid, args, variant.constexprs, variant.options,
                                       plan=(plan, aligned))


def _kernel_args(descriptors, lse, scales, softmax_scale, scalars, trace=None):
    """The kernel's arguments: descriptors of q, k, v, out, then lse, the FP8 scales (or Nones), the scale in
    log2 units, LaunchPlan.scalars and the trace buffer (or None)."""
    return (*descriptors, lse, *scales, softmax_scale * LOG2_E, *scalars, trace)


def attention_forward(q, k, v, softmax_scale=None, causal=False, *, warp_specialize=True, pipeline=True, pingpong=True,
                      tile: TileConfig | None = None, trace: torch.Tensor | None = None):
    """FlashAttention-3 forward on Hopper: returns (out like q, lse (batch, nheads, seqlen_q) float32, natural log).

    Layout (batch, seqlen, nheads, headdim); GQA when k/v have fewer heads;
    causal is bottom-right aligned; rows that see no key get out 0, lse +inf.
    trace: a buffer from kernels.gluon.trace.trace_buffer, filled with the consumers' cycle stamps.
    """
    softmax_scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    _check_inputs(q, k, v, softmax_scale)
    q, k, v = (tma_ready(t) for t in (q, k, v))
    shape = (q.dtype, head_dim_tile(q.shape[-1]), bool(causal), warp_specialize, pipeline, pingpong)
    variant = cached_variant(*shape, tile or short_tile(q.dtype.itemsize, *shape[1:3], q.shape[1], k.shape[1]))
    if causal and q.shape[1] > k.shape[1] and variant.tile.o_buffer == "k":
        # The top tiles see no key, so they have no K buffer to stage O in.
        variant = cached_variant(*shape, replace(variant.tile, o_buffer="q"))
    if variant.tile.half_diagonal and variant.tile.block_n == variant.tile.block_m and q.shape[1] != k.shape[1]:
        # The diagonal then runs across 128-key blocks, not along them (the 64-key path tests each tile).
        variant = cached_variant(*shape, replace(variant.tile, half_diagonal=False))
    return _launch(variant, q, k, v, (None, None, None), softmax_scale, q.dtype, trace)


def fp8_attention_forward(x: FP8QKV, softmax_scale, causal=False, out_dtype=torch.bfloat16, *, warp_specialize=True,
                          pipeline=True, pingpong=True, tile: TileConfig | None = None,
                          trace: torch.Tensor | None = None):
    """The FP8 forward on the pre-pass's outputs (kernels.quant.FP8QKV): (out in out_dtype, lse float32).

    Same arithmetic as kernels.quant.fp8_forward_ref (one K/V scale per
    config.block_n keys, one Q scale per config.block_m rows), except that the
    key tile may be a fraction of config.block_n (TILE_CONFIGS: 128 keys when
    the scale block is larger): the online softmax then updates its max more
    often, which changes P's fp8 rounding, not the scheme.
    With V^T's keys in wgmma order (x.v_key_order) P's accumulator registers
    are the PV A operand as they are; in natural order they are shuffled.
    trace: as in attention_forward.
    """
    out, lse, launch = prepare_fp8_attention_forward(x, softmax_scale, causal, out_dtype,
                                                     warp_specialize=warp_specialize, pipeline=pipeline,
                                                     pingpong=pingpong, tile=tile, trace=trace)
    launch()
    return out, lse


def prepare_fp8_attention_forward(x: FP8QKV, softmax_scale, causal=False, out_dtype=torch.bfloat16, *,
                                  warp_specialize=True, pipeline=True, pingpong=True, tile: TileConfig | None = None,
                                  trace: torch.Tensor | None = None):
    """fp8_attention_forward's (out, lse), allocated, and the call that launches the kernel to fill them: x may
    be the outputs of a pre-pass not launched yet (kernels.triton.fp8_quant.prepare_quantize)."""
    cfg = x.config
    if not x.q.is_cuda:
        raise ValueError("the Gluon kernels need CUDA tensors")
    if out_dtype not in HALF_DTYPES:
        raise TypeError(f"out_dtype must be bfloat16 or float16, got {out_dtype}")
    d = x.q.shape[-1]
    if d not in HEAD_DIMS:
        raise ValueError(f"FP8 head dim must be one of {HEAD_DIMS}, got {d}")
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale}")
    variant = cached_variant(x.q.dtype, d, bool(causal), warp_specialize, pipeline, pingpong, tile, out_dtype,
                             cfg.block_m, cfg.block_n, x.v_key_order == "wgmma")
    scales = tuple(s.contiguous() for s in (x.q_scale, x.k_scale, x.v_scale))
    return _prepare(variant, x.q, x.k, x.v_t, scales, softmax_scale, out_dtype, trace)


def compile_forward(variant: Variant, target: GPUTarget = HOPPER, traced: bool = False):
    """Compile one variant ahead of time (no GPU needed); returns triton's CompiledKernel. traced: with the
    consumers' cycle stamps (kernels.gluon.trace).

    Arguments go through the same specialization as a launch (with every
    integer 1, the case where Triton would turn an int into a constant).
    Needs a process where TRITON_INTERPRET was unset when triton was imported
    (Gluon's standard library is built with triton.jit at import).
    """
    d = variant.head_dim
    t = torch.empty(1, 1, 1, d, dtype=variant.dtype)
    v = torch.empty(1, 1, d, 16, dtype=variant.dtype) if variant.fp8 else t
    o = torch.empty(1, 1, 1, d, dtype=variant.out_dtype or variant.dtype)
    f32 = torch.empty(1, 1, 1)
    scales = (f32, f32, f32) if variant.fp8 else (None, None, None)
    trace = torch.empty(1, dtype=torch.int64) if traced else None
    schedule = (torch.zeros(1, 3, dtype=torch.int32), 3) if variant.causal else (None, 0)
    args = _kernel_args(variant.descriptors(t, t, v, o), f32, scales, 1.0, (1,) * 6 + schedule, trace)
    return compile_for(attention_fwd_kernel, args, variant.constexprs, variant.options, target)
