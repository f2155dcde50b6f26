"""Persistent tile scheduler of the Hopper forward.

A tile is BLOCK_M query rows of one (batch, head). The grid has at most one
program per SM; `tiles_here` says how many tiles this program runs and
`tile_id(k)` / `tile(id)` which is its k-th. Tiles are ordered so that the
programs running at the same time read the K/V of a few heads, which then
come from DRAM about once.

Non-causal tiles all cost the same and are dealt round robin (program `pid`
takes tiles pid, pid + grid, ...), m-block-major within sections of one GQA
group (the query heads of one K/V head, `section_heads`), one section after
the other. Sections sized to fill L2 (4-16 K/V heads at once, until session
10) read K/V ~4x from DRAM at hd128 16k (Nsight Compute: 727 MB against cuDNN
SDPA's 270) and, at the H200's power cap, ran 2-5% slower for it
(docs/tuning-gluon.md, entry 25).

A causal tile costs in proportion to its m-block, so the host deals causal
tiles (`causal_order`) and the kernel reads each program's list from a table
(`schedule_table`). The paired order (the default) makes units of two m-blocks
of one head whose costs add up to the same total, n_m - 1 - j with j; units go
head after head, each to the program that is free first, so the programs
running together read the K/V of a few heads (entries 9 and 31: 5-25% faster
at hd128 and hd256 than longest first, whose waves span as many heads as
programs). Units alone leave the programs one unit apart, 3% of the run at
every paper shape, where the idle SMs cost (+2.8% for hd64 causal 1k with 33
heads instead of 32 on an H100, entry 55); so the tiles of the last few heads
are dealt one by one, longest first, to whichever program is free first
(`TileConfig.balance_tail`). The longest-first order
(`TileConfig.paired_causal=False`: the FP8 hd64 tile and the 192-row bf16
hd64 tile, where pairs did not pay) deals every tile that way.
"""
import heapq
import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.language.core import _aggregate as aggregate

# What a tile costs beyond its key blocks (Q wait, first QK^T, last PV, epilogue), in key blocks: ~2 for the 16-bit
# hd128 tile, ~4 for FP8 hd128 (docs/tuning-gluon.md, entry 41). Only the balance of the causal deal reads it; the
# default of TileConfig.causal_fixed_blocks.
TILE_FIXED_BLOCKS = 2
# The tail dealt one tile at a time spans this many programs' rounds at most; the deal keeps the one whose
# modelled busiest program finishes first (0: units only).
TAIL_ROUNDS = (0, 1, 2, 3, 4)
# ... and the K/V of its heads within this many bytes, so that the longest tiles of all of them at once stay in L2.
TAIL_KV_BYTES = 16 << 20


def section_heads(nheads, nheads_kv):
    """Query heads per section of the non-causal order: one GQA group (causal launches read their table)."""
    return nheads // nheads_kv


def num_m_blocks(seqlen_q, block_m):
    return triton.cdiv(seqlen_q, block_m)


def causal_key_blocks(m_block, seqlen_q, seqlen_k, block_m, block_n):
    """Key blocks a causal tile of rows m_block * block_m.. visits (kv_block_count on the host)."""
    last_row = min((m_block + 1) * block_m, seqlen_q) - 1
    return triton.cdiv(max(min(seqlen_k, last_row + 1 + seqlen_k - seqlen_q), 0), block_n)


def _deal(items, grid, cost):
    """Each item (a list of tiles, run in turn) to the program free first, lowest pid on ties: (programs' tile
    lists, the busiest one's modelled cost)."""
    free = [(0, pid) for pid in range(grid)]
    programs = [[] for _ in range(grid)]
    for item in items:
        t, pid = heapq.heappop(free)
        programs[pid] += item
        heapq.heappush(free, (t + sum(cost[m] for _, m in item), pid))
    return programs, max(t for t, _ in free)


def causal_order(num_bh, n_m, seqlen_q, seqlen_k, block_m, block_n, grid, paired=True, balance_tail=True,
                 head_kv_bytes=0, fixed_blocks=TILE_FIXED_BLOCKS):
    """Each program's causal tiles as (batch * nheads + head, m_block) lists, in the order it runs them.

    paired: units (m-blocks n_m-1-j and j, or j+1 when n_m is odd, whose key blocks add up alike; m-block 0 alone
    when n_m is odd) head after head; with balance_tail the tiles of the last heads go one by one, longest first,
    over at most max(TAIL_ROUNDS) rounds of the grid and TAIL_KV_BYTES of their K/V (head_kv_bytes a head), the
    tail the cost model finishes first. Not paired: every tile longest first. Each item goes to the program that
    the model (key blocks + fixed_blocks a tile) frees first."""
    cost = [causal_key_blocks(m, seqlen_q, seqlen_k, block_m, block_n) + fixed_blocks for m in range(n_m)]

    def longest_first(heads):
        """The tiles of these heads one by one, longest first (lowest head first among equals)."""
        tiles = sorted(((bh, m) for bh in heads for m in range(n_m)), key=lambda t: (-cost[t[1]], t[0]))
        return [[t] for t in tiles]

    if not paired:
        return _deal(longest_first(range(num_bh)), grid, cost)[0]

    def units(bh):
        out = [[(bh, n_m - 1 - j), (bh, j + n_m % 2)] for j in range(n_m // 2)]
        return out + [[(bh, 0)]] * (n_m % 2)

    max_tail_heads = max(1, TAIL_KV_BYTES // head_kv_bytes) if head_kv_bytes else num_bh
    best = None
    for rounds in TAIL_ROUNDS if balance_tail else (0,):
        tail_heads = min(num_bh, max_tail_heads, math.ceil(rounds * grid / n_m))
        bulk = num_bh - tail_heads
        programs, busiest = _deal([u for bh in range(bulk) for u in units(bh)] + longest_first(range(bulk, num_bh)),
                                  grid, cost)
        if best is None or busiest < best[1]:
            best = programs, busiest
    return best[0]


def schedule_table(programs, n_m):
    """causal_order's lists as the kernel reads them: int32 (programs, 2 + longest list), row pid holding the
    count, then the tile ids bh * n_m + m_block, padded so that the id after the last one can be read too."""
    table = torch.zeros(len(programs), 2 + max(len(p) for p in programs), dtype=torch.int32)
    for pid, tiles in enumerate(programs):
        table[pid, 0] = len(tiles)
        table[pid, 1:1 + len(tiles)] = torch.tensor([bh * n_m + m for bh, m in tiles], dtype=torch.int32)
    return table


@aggregate
class TileScheduler:
    num_tiles: gl.tensor
    num_m_blocks: gl.tensor
    num_bh: gl.tensor
    nheads: gl.tensor
    group: gl.tensor
    section_heads: gl.tensor
    seqlen_q: gl.tensor
    seqlen_k: gl.tensor
    schedule_stride: gl.tensor
    BLOCK_M: gl.constexpr
    BLOCK_N: gl.constexpr
    CAUSAL: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, num_tiles, num_m_blocks, num_bh, nheads, group, section_heads, seqlen_q, seqlen_k,
                 schedule_stride, BLOCK_M, BLOCK_N, CAUSAL):
        self.num_tiles = num_tiles
        self.num_m_blocks = num_m_blocks
        self.num_bh = num_bh
        self.nheads = nheads
        self.group = group
        self.section_heads = section_heads
        self.seqlen_q = seqlen_q
        self.seqlen_k = seqlen_k
        self.schedule_stride = schedule_stride
        self.BLOCK_M = gl.constexpr(BLOCK_M)
        self.BLOCK_N = gl.constexpr(BLOCK_N)
        self.CAUSAL = gl.constexpr(CAUSAL)

    @gluon.jit
    def create(batch, nheads, group, section_heads, seqlen_q, seqlen_k, schedule_stride, BLOCK_M: gl.constexpr,
               BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
        """schedule_stride: the causal schedule table's row length (0 otherwise)."""
        n_m = gl.cdiv(seqlen_q, BLOCK_M)
        num_bh = batch * nheads
        return TileScheduler(n_m * num_bh, n_m, num_bh, nheads, group, section_heads, seqlen_q, seqlen_k,
                             schedule_stride, BLOCK_M, BLOCK_N, CAUSAL)

    @gluon.jit
    def tiles_here(self, schedule):
        """How many tiles this program runs; schedule: the causal launch's schedule_table (None otherwise)."""
        pid = gl.program_id(0)
        if self.CAUSAL:
            return gl.load(schedule + pid * self.schedule_stride)
        return gl.cdiv(self.num_tiles - pid, gl.num_programs(0))

    @gluon.jit
    def tile_id(self, k, schedule):
        """This program's k-th tile (k up to tiles_here() included, for a load one tile ahead), as tile() reads it."""
        pid = gl.program_id(0)
        if self.CAUSAL:
            return gl.load(schedule + pid * self.schedule_stride + 1 + k)
        return pid + k * gl.num_programs(0)

    @gluon.jit
    def tile(self, tile_id):
        """(batch, head, m_block) of a tile_id."""
        if self.CAUSAL:
            bh = tile_id // self.num_m_blocks
            m_block = tile_id % self.num_m_blocks
        else:
            section_tiles = self.section_heads * self.num_m_blocks
            section = tile_id // section_tiles
            first_bh = section * self.section_heads
            heads_here = gl.minimum(self.section_heads, self.num_bh - first_bh)
            r = tile_id - section * section_tiles
            m_block = r // heads_here
            bh = first_bh + r % heads_here
        return bh // self.nheads, bh % self.nheads, m_block


@gluon.jit
def kv_block_count(sched: TileScheduler, m_block):
    """Number of BLOCK_N key blocks that tile row block `m_block` attends to (0 if it sees none)."""
    n_keys = sched.seqlen_k
    if sched.CAUSAL:
        # Bottom-right causal: query i sees keys j <= i + seqlen_k - seqlen_q.
        last_row = gl.minimum((m_block + 1) * sched.BLOCK_M, sched.seqlen_q) - 1
        n_keys = gl.maximum(gl.minimum(n_keys, last_row + 1 + sched.seqlen_k - sched.seqlen_q), 0)
    return gl.cdiv(n_keys, sched.BLOCK_N)
