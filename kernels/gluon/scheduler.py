"""Persistent tile scheduler of the Hopper forward.

A tile is BLOCK_M query rows of one (batch, head). The grid has at most one
program per SM; `tiles_here` says how many tiles this program runs and
`tile(k)` which is its k-th. Tiles are ordered so that the programs running
at the same time read the K/V of a few heads, which then come from DRAM about
once.

Non-causal tiles all cost the same and are dealt round robin (program `pid`
takes tiles pid, pid + grid, ...), m-block-major within sections of one GQA
group (the query heads of one K/V head, `section_heads`), one section after
the other. Sections sized to fill L2 (4-16 K/V heads at once, until session
10) read K/V ~4x from DRAM at hd128 16k (Nsight Compute: 727 MB against cuDNN
SDPA's 270) and, at the H200's power cap, ran 2-5% slower for it
(docs/tuning-gluon.md, entry 25).

A causal tile costs in proportion to its m-block. The paired order (the
default) makes units of two m-blocks of one head whose costs add up to the
same total, n_m - 1 - j with j; units go head after head and a program runs
whole units, so the programs are balanced to within one unit and those
running together read the K/V of a few heads. The longest-first order
(`TileConfig.paired_causal=False`: the FP8 hd64 tile and the 192-row bf16
hd64 tile, where pairs did not pay) deals all heads' tiles longest first,
every other wave in reverse (busiest program ~1.01x the average), but a wave
then spans as many heads as programs: by an LRU model of L2
(experiments/tile_order.py) it reads K/V 4-7x from DRAM (hd128 2k: 0.93 GB
against 0.13), and the paired order ran 5-25% faster at hd128 and hd256
(docs/tuning-gluon.md, entries 9 and 31).
"""
import triton

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.language.core import _aggregate as aggregate

def section_heads(batch, nheads, nheads_kv, causal):
    """Query heads per section: one GQA group (causal: all heads, one section)."""
    return batch * nheads if causal else nheads // nheads_kv


def num_m_blocks(seqlen_q, block_m):
    return triton.cdiv(seqlen_q, block_m)


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
    BLOCK_M: gl.constexpr
    BLOCK_N: gl.constexpr
    CAUSAL: gl.constexpr
    PAIRED: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, num_tiles, num_m_blocks, num_bh, nheads, group, section_heads, seqlen_q, seqlen_k, BLOCK_M,
                 BLOCK_N, CAUSAL, PAIRED):
        self.num_tiles = num_tiles
        self.num_m_blocks = num_m_blocks
        self.num_bh = num_bh
        self.nheads = nheads
        self.group = group
        self.section_heads = section_heads
        self.seqlen_q = seqlen_q
        self.seqlen_k = seqlen_k
        self.BLOCK_M = gl.constexpr(BLOCK_M)
        self.BLOCK_N = gl.constexpr(BLOCK_N)
        self.CAUSAL = gl.constexpr(CAUSAL)
        self.PAIRED = gl.constexpr(PAIRED)

    @gluon.jit
    def create(batch, nheads, group, section_heads, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               CAUSAL: gl.constexpr, PAIRED: gl.constexpr):
        n_m = gl.cdiv(seqlen_q, BLOCK_M)
        num_bh = batch * nheads
        return TileScheduler(n_m * num_bh, n_m, num_bh, nheads, group, section_heads, seqlen_q, seqlen_k, BLOCK_M,
                             BLOCK_N, CAUSAL, PAIRED)

    @gluon.jit
    def tiles_here(self):
        """How many tiles this program runs."""
        pid = gl.program_id(0)
        grid = gl.num_programs(0)
        if self.CAUSAL and self.PAIRED:
            _, singles = self.paired_counts()
            my_units = self.program_units(pid, grid)
            my_singles = gl.cdiv(gl.maximum(singles - (grid - 1 - pid), 0), grid)  # dealt from the last program
            return 2 * my_units + my_singles
        return gl.cdiv(self.num_tiles - pid, grid)

    @gluon.jit
    def tile(self, k):
        """(batch, head, m_block) of this program's k-th tile."""
        pid = gl.program_id(0)
        grid = gl.num_programs(0)
        if self.CAUSAL and self.PAIRED:
            bh, m_block = self.paired_tile(pid, grid, k)
            return bh // self.nheads, bh % self.nheads, m_block
        tile_id = pid + k * grid
        if self.CAUSAL:  # odd waves in reverse
            wave = k
            wave_size = gl.minimum(grid, self.num_tiles - wave * grid)
            tile_id = gl.where(wave % 2 == 1, wave * grid + wave_size - 1 - pid, tile_id)
        section_tiles = self.section_heads * self.num_m_blocks
        section = tile_id // section_tiles
        first_bh = section * self.section_heads
        heads_here = gl.minimum(self.section_heads, self.num_bh - first_bh)
        r = tile_id - section * section_tiles
        m_idx = r // heads_here
        bh = first_bh + r % heads_here
        if self.CAUSAL:
            m_block = self.num_m_blocks - 1 - m_idx
        else:
            m_block = m_idx
        return bh // self.nheads, bh % self.nheads, m_block

    @gluon.jit
    def paired_counts(self):
        """Causal paired order: (units, single tiles). A unit is two m-blocks of one head whose key counts add up
        to the same total, (n_m - 1 - j, j), or (n_m - 1 - j, j + 1) when n_m is odd; m-block 0 of each head then
        runs alone."""
        units = self.num_bh * (self.num_m_blocks // 2)
        return units, self.num_bh * (self.num_m_blocks % 2)

    @gluon.jit
    def program_units(self, pid, grid):
        """Causal paired order: how many units program pid runs (units pid, pid + grid, ...)."""
        units, _ = self.paired_counts()
        return gl.cdiv(gl.maximum(units - pid, 0), grid)

    @gluon.jit
    def paired_tile(self, pid, grid, k):
        """(batch * nheads + head, m_block) of program pid's k-th tile in the paired order.

        Units go head after head and program pid runs units pid, pid + grid, ...,
        each as its long tile then its short one, so every program does the
        same work but for one unit, and the programs running together read the
        K/V of a few heads. Single tiles (m-block 0, the shortest) come last,
        dealt from the last program down: where the units do not fill their
        last round, the last programs ran one unit fewer.
        """
        pairs = gl.maximum(self.num_m_blocks // 2, 1)  # no units when n_m is 1
        my_units = self.program_units(pid, grid)
        unit = pid + k // 2 * grid
        j = unit % pairs
        m_block = gl.where(k % 2 == 1, j + self.num_m_blocks % 2, self.num_m_blocks - 1 - j)
        single = grid - 1 - pid + (k - 2 * my_units) * grid
        in_unit = k < 2 * my_units
        return gl.where(in_unit, unit // pairs, single), gl.where(in_unit, m_block, 0)


@gluon.jit
def kv_block_count(sched: TileScheduler, m_block):
    """Number of BLOCK_N key blocks that tile row block `m_block` attends to (0 if it sees none)."""
    n_keys = sched.seqlen_k
    if sched.CAUSAL:
        # Bottom-right causal: query i sees keys j <= i + seqlen_k - seqlen_q.
        last_row = gl.minimum((m_block + 1) * sched.BLOCK_M, sched.seqlen_q) - 1
        n_keys = gl.maximum(gl.minimum(n_keys, last_row + 1 + sched.seqlen_k - sched.seqlen_q), 0)
    return gl.cdiv(n_keys, sched.BLOCK_N)
