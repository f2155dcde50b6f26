"""Shared-memory pipeline of the Hopper forward: buffers, mbarriers, TMA loads, the producer.

One producer warp streams Q tiles and K/V blocks into shared memory with TMA;
consumer warpgroups wait on `ready` mbarriers and hand slots back through
`empty` mbarriers. K and V have separate `ready` barriers, so QK^T can start
before V lands. With SPLIT_KV (FA3's two pipelines) K and V also have separate
`empty` barriers: a K slot goes back right after its QK^T, a V slot after its
PV, and the producer loads V one block behind K where the consumer overlaps
(it wants V of block i after QK^T of block i + 1), else right after K.
Without it a block's K and V slots go back together after its PV; since the
overlapped consumer holds K of block i and V of block i-1 at once, it then
ties up two stages.

All partitions walk the same tile sequence and the same KV block order, and
the K and V rings each take one load per block, so a plain count of KV
iterations tells each partition the slot and phase it is at in both rings.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
from triton.language.core import _aggregate as aggregate

from .scheduler import TileScheduler, kv_block_count

CONSUMER_THREADS = gl.constexpr(128)  # a consumer partition is one warpgroup


@gluon.jit
def new_barrier(count: gl.constexpr):
    """An mbarrier in its own allocation, expecting `count` arrivals per phase."""
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=count)
    return bar


@aggregate
class Ring:
    """Position in a circular buffer of STAGES slots: slot index and mbarrier phase parity."""
    index: gl.tensor
    phase: gl.tensor
    STAGES: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, index, phase, STAGES):
        self.index = index
        self.phase = phase
        self.STAGES = gl.constexpr(STAGES)

    @gluon.jit
    def start(STAGES: gl.constexpr):
        return Ring(gl.to_tensor(0), gl.to_tensor(0), STAGES)

    @gluon.must_use_result
    @gluon.jit
    def next(self):
        index = self.index + 1
        wrap = index == self.STAGES
        return Ring(gl.where(wrap, 0, index), gl.where(wrap, self.phase ^ 1, self.phase), self.STAGES)


@aggregate
class Pipeline:
    """Descriptors, shared buffers and barriers that all partitions share.

    Q and O tiles are [NUM_CONSUMERS] slices of rows, one per consumer, in a
    ring of Q_STAGES tiles (2: the next tile's Q loads while the current one
    is consumed; O is staged in its tile's Q slot when O_IN_Q, in the K buffer of
    the tile's last key block when O_IN_K). With SPLIT_Q
    each slice has its own ready/empty barriers, so a consumer that finishes a
    tile first gets its next Q without waiting for the others. K and
    V rings hold STAGES blocks of BLOCK_N keys. Tiles are 4-D (batch, seq,
    head, dim) TMA boxes with unit batch/head extents, so TMA zero-fills reads
    past seqlen and clips writes past it per batch; FP8 V is (batch, head,
    dim, seq) with boxes (1, 1, dim, BLOCK_N).

    Gluon 3.6 orders a partition's accesses to one barrier allocation with a
    warpgroup bar.sync (an mbarrier wait counts as one) and puts one before
    every mbarrier.arrive. With THREAD_ARRIVE the consumers arrive from every
    thread (Pipeline.release), and since each turn barrier and the fence
    barrier have an allocation of their own, a key block costs one bar.sync
    (before the K wait, the ring's allocation again) instead of four. Two
    consumer policies ride along (mainloop.py): BRANCH_FENCE keeps the
    softmax ahead of the PV wait with a branch instead of an mbarrier wait,
    and NAMED_TURN passes the ping-pong turn on named hardware barriers
    instead of the `turn` mbarriers. Three more trim the consumer's
    instructions per key block (mainloop.py): FAST_V_RATIO, THREAD_ROW_SUM and
    UNMASKED_LOOP; LAZY_RESCALE skips most O rescales, and RESCALE_UNDER_S
    moves O's rescale after the next block's QK^T issue (FA3's order).
    """
    q_desc: tma.tensor_descriptor
    k_desc: tma.tensor_descriptor
    v_desc: tma.tensor_descriptor
    o_desc: tma.tensor_descriptor
    q_smem: gl.shared_memory_descriptor
    k_smem: gl.shared_memory_descriptor
    v_smem: gl.shared_memory_descriptor
    o_smem: gl.shared_memory_descriptor
    q_ready: gl.shared_memory_descriptor
    q_empty: gl.shared_memory_descriptor
    k_ready: gl.shared_memory_descriptor
    v_ready: gl.shared_memory_descriptor
    k_empty: gl.shared_memory_descriptor
    v_empty: gl.shared_memory_descriptor  # k_empty itself unless SPLIT_KV
    turn: gl.tuple  # one barrier per consumer
    fence: gl.shared_memory_descriptor  # an mbarrier whose wait never blocks (mainloop.schedule_fence)
    k_done: gl.shared_memory_descriptor  # O_IN_K: every consumer's QK^T of the tile's last block is complete
    NUM_CONSUMERS: gl.constexpr
    STAGES: gl.constexpr
    O_IN_Q: gl.constexpr  # TileConfig.o_buffer "q"
    O_IN_K: gl.constexpr  # TileConfig.o_buffer "k": O staged in the K buffer of the tile's last key block
    SPLIT_KV: gl.constexpr
    SPLIT_Q: gl.constexpr
    Q_STAGES: gl.constexpr
    BRANCH_FENCE: gl.constexpr
    NAMED_TURN: gl.constexpr
    THREAD_ARRIVE: gl.constexpr  # consumers arrive from every thread (Pipeline.release)
    V_TRANSPOSED: gl.constexpr
    V_WGMMA_KEYS: gl.constexpr  # FP8: V^T's keys in wgmma order (kernels.quant.FP8QKV), P needs no shuffles
    FAST_V_RATIO: gl.constexpr  # FP8: the V-scale ratio by an approximate reciprocal, not a full-range divide
    THREAD_ROW_SUM: gl.constexpr  # row sums kept per thread, reduced across the quad once per tile (FA3)
    UNMASKED_LOOP: gl.constexpr  # non-causal: loop blocks skip the mask test and the -inf max guard
    CAUSAL_UNMASKED_LOOP: gl.constexpr  # causal: so do the blocks below the diagonal, in a loop of their own
    ROW_BOUND_MASK: gl.constexpr  # causal masks: one compare per score against each row's last key
    LAZY_RESCALE: gl.constexpr  # 16-bit: the row max moves only when it grows by 2^8; O is rescaled only then
    RESCALE_UNDER_S: gl.constexpr  # overlapped loop: O is rescaled while the next block's QK^T runs
    HALF_DIAGONAL: gl.constexpr  # causal: consumer 0 runs only the half of its diagonal keys that its rows see

    @gluon.constexpr_function
    def __init__(self, q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_ready, q_empty, k_ready,
                 v_ready, k_empty, v_empty, turn, fence, k_done, NUM_CONSUMERS, STAGES, O_BUFFER, SPLIT_KV, SPLIT_Q,
                 Q_STAGES, BRANCH_FENCE, NAMED_TURN, THREAD_ARRIVE, V_TRANSPOSED, V_WGMMA_KEYS, FAST_V_RATIO,
                 THREAD_ROW_SUM, UNMASKED_LOOP, CAUSAL_UNMASKED_LOOP, ROW_BOUND_MASK, LAZY_RESCALE, RESCALE_UNDER_S,
                 HALF_DIAGONAL):
        self.q_desc = q_desc
        self.k_desc = k_desc
        self.v_desc = v_desc
        self.o_desc = o_desc
        self.q_smem = q_smem
        self.k_smem = k_smem
        self.v_smem = v_smem
        self.o_smem = o_smem
        self.q_ready = q_ready
        self.q_empty = q_empty
        self.k_ready = k_ready
        self.v_ready = v_ready
        self.k_empty = k_empty
        self.v_empty = v_empty
        self.turn = turn
        self.fence = fence
        self.k_done = k_done
        self.NUM_CONSUMERS = gl.constexpr(NUM_CONSUMERS)
        self.STAGES = gl.constexpr(STAGES)
        self.O_IN_Q = gl.constexpr(O_BUFFER == "q")
        self.O_IN_K = gl.constexpr(O_BUFFER == "k")
        self.SPLIT_KV = gl.constexpr(SPLIT_KV)
        self.SPLIT_Q = gl.constexpr(SPLIT_Q)
        self.Q_STAGES = gl.constexpr(Q_STAGES)
        self.BRANCH_FENCE = gl.constexpr(BRANCH_FENCE)
        self.NAMED_TURN = gl.constexpr(NAMED_TURN)
        self.THREAD_ARRIVE = gl.constexpr(THREAD_ARRIVE)
        self.V_TRANSPOSED = gl.constexpr(V_TRANSPOSED)
        self.V_WGMMA_KEYS = gl.constexpr(V_WGMMA_KEYS)
        self.FAST_V_RATIO = gl.constexpr(FAST_V_RATIO)
        self.THREAD_ROW_SUM = gl.constexpr(THREAD_ROW_SUM)
        self.UNMASKED_LOOP = gl.constexpr(UNMASKED_LOOP)
        self.CAUSAL_UNMASKED_LOOP = gl.constexpr(CAUSAL_UNMASKED_LOOP)
        self.ROW_BOUND_MASK = gl.constexpr(ROW_BOUND_MASK)
        self.LAZY_RESCALE = gl.constexpr(LAZY_RESCALE)
        self.RESCALE_UNDER_S = gl.constexpr(RESCALE_UNDER_S)
        self.HALF_DIAGONAL = gl.constexpr(HALF_DIAGONAL)

    @gluon.jit
    def create(q_desc, k_desc, v_desc, o_desc, NUM_CONSUMERS: gl.constexpr, STAGES: gl.constexpr,
               O_BUFFER: gl.constexpr, SPLIT_KV: gl.constexpr, SPLIT_Q: gl.constexpr, Q_STAGES: gl.constexpr,
               BRANCH_FENCE: gl.constexpr, NAMED_TURN: gl.constexpr, THREAD_ARRIVE: gl.constexpr,
               V_WGMMA_KEYS: gl.constexpr,
               FAST_V_RATIO: gl.constexpr, THREAD_ROW_SUM: gl.constexpr, UNMASKED_LOOP: gl.constexpr,
               CAUSAL_UNMASKED_LOOP: gl.constexpr, ROW_BOUND_MASK: gl.constexpr, LAZY_RESCALE: gl.constexpr,
               RESCALE_UNDER_S: gl.constexpr, HALF_DIAGONAL: gl.constexpr):
        Q_BARRIERS: gl.constexpr = Q_STAGES * (NUM_CONSUMERS if SPLIT_Q else 1)  # Pipeline.q_barrier
        ARRIVALS: gl.constexpr = CONSUMER_THREADS if THREAD_ARRIVE else 1  # per consumer release (Pipeline.release)
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [Q_STAGES * NUM_CONSUMERS] + q_desc.block_type.shape,
                                           q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        if O_BUFFER != "own":
            o_smem = q_smem  # "k": unused (Pipeline.k_rows)
        else:
            o_smem = gl.allocate_shared_memory(o_desc.dtype, [NUM_CONSUMERS] + o_desc.block_type.shape,
                                               o_desc.layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [Q_BARRIERS, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [Q_BARRIERS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        if SPLIT_KV:
            v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        else:
            v_empty = k_empty
        # One allocation per turn barrier: Gluon orders accesses to one allocation with a bar.sync, and each
        # consumer waits on its own turn and arrives on the next one's.
        turn = ()
        for c in gl.static_range(NUM_CONSUMERS):
            turn = turn + (new_barrier(ARRIVALS), )
        fence = new_barrier(1)  # never arrived on: its parity-1 wait returns at once (schedule_fence)
        if O_BUFFER == "k":
            k_done = new_barrier(NUM_CONSUMERS * ARRIVALS)
        else:
            k_done = fence  # unused
        for g in gl.static_range(Q_BARRIERS):
            mbarrier.init(q_ready.index(g), count=1)
            mbarrier.init(q_empty.index(g), count=NUM_CONSUMERS * Q_STAGES // Q_BARRIERS * ARRIVALS)
        for s in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(s), count=1)
            mbarrier.init(v_ready.index(s), count=1)
            mbarrier.init(k_empty.index(s), count=NUM_CONSUMERS * ARRIVALS)
            if SPLIT_KV:
                mbarrier.init(v_empty.index(s), count=NUM_CONSUMERS * ARRIVALS)
        # FP8 wgmma reads B K-major only: FP8 V arrives transposed, (batch, head, dim, seq) (kernels.quant).
        return Pipeline(q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_ready, q_empty, k_ready,
                        v_ready, k_empty, v_empty, turn, fence, k_done, NUM_CONSUMERS, STAGES, O_BUFFER, SPLIT_KV,
                        SPLIT_Q, Q_STAGES, BRANCH_FENCE, NAMED_TURN, THREAD_ARRIVE, v_desc.dtype.is_fp8(),
                        V_WGMMA_KEYS, FAST_V_RATIO, THREAD_ROW_SUM, UNMASKED_LOOP, CAUSAL_UNMASKED_LOOP, ROW_BOUND_MASK,
                        LAZY_RESCALE, RESCALE_UNDER_S, HALF_DIAGONAL)

    @gluon.jit
    def release(self, bar):
        """A consumer's arrive on `bar` (a slot given back, a turn passed). Gluon 3.6 puts a warpgroup bar.sync
        before mbarrier.arrive, whose one thread then stands for all; with THREAD_ARRIVE every thread arrives for
        itself (bars count CONSUMER_THREADS per consumer) and none waits for the others. With no cp.async in
        flight the arrive-on is immediate."""
        if self.THREAD_ARRIVE:
            async_copy.mbarrier_arrive(bar, increment_count=False)
        else:
            mbarrier.arrive(bar)

    @gluon.constexpr_function
    def q_groups(self):
        """Number of Q ready/empty barrier pairs: one per consumer with SPLIT_Q, else one for all."""
        return self.NUM_CONSUMERS if self.SPLIT_Q else 1

    @gluon.constexpr_function
    def q_load_step(self, group):
        """After which K block the producer loads Q group `group`: the g-th, but no later than block STAGES - 1.

        Each group waits for its consumers to be done with the Q slot, K need
        not; all must be in before K block STAGES, whose slot needs every
        consumer's QK^T of block 0 (three consumers, two stages: group 2
        after K block 2 would wait forever).
        """
        return min(group, self.STAGES - 1)

    @gluon.jit
    def q_barrier(self, q_slot, group):
        """Index of the Q ready/empty barriers of Q ring slot q_slot, barrier group `group`."""
        return q_slot * self.q_groups() + group

    @gluon.jit
    def q_tile(self, q_slot, consumer: gl.constexpr):
        """This consumer's slice of Q ring slot q_slot (also where O is staged when O_IN_Q)."""
        return self.q_smem.index(q_slot * self.NUM_CONSUMERS + consumer)

    @gluon.jit
    def k_rows(self, slot, consumer: gl.constexpr):
        """O_IN_K: this consumer's rows of K ring slot `slot` (a key block holds all consumers' rows), as an O box
        for the TMA store and as [rows, head_dim] (Gluon cannot reshape a slice)."""
        rows: gl.constexpr = self.o_desc.block_type.shape[1]
        keys: gl.constexpr = self.k_desc.block_type.shape[1]
        dim: gl.constexpr = self.k_desc.block_type.shape[3]
        k_box = self.k_smem.index(slot)
        return k_box.slice(consumer * rows, rows, dim=1), k_box.reshape([keys, dim]).slice(consumer * rows, rows)

    @gluon.jit
    def load_q(self, group, q_slot: Ring, batch, head, row0):
        """Wait until the consumers of Q barrier group `group` are done with Q ring slot q_slot, then issue the
        TMA loads of their slices of a tile's Q into it (row0: the tile's first row)."""
        rows: gl.constexpr = self.q_desc.block_type.shape[1]
        slices: gl.constexpr = self.NUM_CONSUMERS // self.q_groups()
        bar = self.q_barrier(q_slot.index, group)
        ready = self.q_ready.index(bar)
        mbarrier.wait(self.q_empty.index(bar), q_slot.phase ^ 1)
        mbarrier.expect(ready, slices * self.q_desc.block_type.nbytes)
        for j in gl.static_range(slices):
            c = group * slices + j
            tma.async_copy_global_to_shared(self.q_desc, [batch, row0 + c * rows, head, 0], ready,
                                            self.q_smem.index(q_slot.index * self.NUM_CONSUMERS + c))

    @gluon.jit
    def load_k(self, slot, batch, head_kv, key0):
        """Issue the TMA load of the K block at key0 into K ring slot `slot`."""
        bar = self.k_ready.index(slot)
        mbarrier.expect(bar, self.k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(self.k_desc, [batch, key0, head_kv, 0], bar, self.k_smem.index(slot))

    @gluon.jit
    def load_v(self, slot, batch, head_kv, key0):
        """Issue the TMA load of the V block at key0 into V ring slot `slot`."""
        bar = self.v_ready.index(slot)
        mbarrier.expect(bar, self.v_desc.block_type.nbytes)
        if self.V_TRANSPOSED:
            tma.async_copy_global_to_shared(self.v_desc, [batch, head_kv, 0, key0], bar, self.v_smem.index(slot))
        else:
            tma.async_copy_global_to_shared(self.v_desc, [batch, key0, head_kv, 0], bar, self.v_smem.index(slot))


@gluon.jit
def kv_block_start(n_blocks, i, BLOCK_N: gl.constexpr):
    """First key of the i-th block visited: blocks run from the last (masked) one down to 0, as in FA3."""
    return (n_blocks - 1 - i) * BLOCK_N


@gluon.jit
def wait_for_prior_grids():
    """griddepcontrol.wait: block until the kernels before this one on the stream are done and their writes are
    visible. The forward is a programmatic dependent launch (Variant.launch_pdl), so its programs may start while
    the kernel before it (the FP8 pre-pass, a QKV projection) still runs; every partition calls this before its
    first global load or store. A no-op in a kernel launched without PDL."""
    gl.inline_asm_elementwise("griddepcontrol.wait; mov.b32 $0, 0;", "=r,r", [gl.to_tensor(0)], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def producer_partition(p: Pipeline, sched: TileScheduler, schedule, OVERLAP: gl.constexpr):
    """One warp: for each tile of this program, every K and V block into their rings and Q.

    Q group g (all of Q, or with SPLIT_Q consumer g's slice) loads after K
    block q_load_step(g), once its consumers are done with the Q slot. Without SPLIT_KV,
    K and V of a block wait on one `empty` barrier and load together. With
    it, V loads one block behind K (FA3's order) for the overlapped consumer, which needs V of block i only
    after QK^T of block i + 1 is issued; for the unoverlapped one V follows its own block's K, so a one-stage
    ring does not wait out a V load after every QK^T.
    """
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    V_LAG: gl.constexpr = p.SPLIT_KV and OVERLAP
    wait_for_prior_grids()
    k_slot = Ring.start(p.STAGES)
    v_slot = Ring.start(p.STAGES)
    q_slot = Ring.start(p.Q_STAGES)
    next_id = sched.tile_id(0, schedule)
    for k in range(sched.tiles_here(schedule)):
        tile_id = next_id
        next_id = sched.tile_id(k + 1, schedule)
        batch, head, m_block = sched.tile(tile_id)
        head_kv = head // sched.group
        n_blocks = kv_block_count(sched, m_block)
        row0 = m_block * sched.BLOCK_M
        for i in range(n_blocks):
            key0 = kv_block_start(n_blocks, i, BLOCK_N)
            # Mbarriers start with the phase before 0 complete, so the first waits on `empty` pass.
            mbarrier.wait(p.k_empty.index(k_slot.index), k_slot.phase ^ 1)
            p.load_k(k_slot.index, batch, head_kv, key0)
            if not p.SPLIT_KV:
                p.load_v(k_slot.index, batch, head_kv, key0)
            k_slot = k_slot.next()
            if V_LAG and i > 0:
                v_slot = load_v_when_free(p, v_slot, batch, head_kv, kv_block_start(n_blocks, i - 1, BLOCK_N))
            if p.SPLIT_KV and not V_LAG:
                v_slot = load_v_when_free(p, v_slot, batch, head_kv, key0)
            for g in gl.static_range(p.q_groups()):
                if i == p.q_load_step(g):
                    p.load_q(g, q_slot, batch, head, row0)
        for g in gl.static_range(p.q_groups()):  # tiles with fewer key blocks than load steps (or none)
            if n_blocks <= p.q_load_step(g):
                p.load_q(g, q_slot, batch, head, row0)
        if V_LAG and n_blocks > 0:
            v_slot = load_v_when_free(p, v_slot, batch, head_kv, kv_block_start(n_blocks, n_blocks - 1, BLOCK_N))
        q_slot = q_slot.next()


@gluon.jit
def load_v_when_free(p: Pipeline, v_slot: Ring, batch, head_kv, key0):
    """SPLIT_KV producer: wait until V ring slot v_slot is released, load the V block at key0 into it; returns
    the next slot."""
    mbarrier.wait(p.v_empty.index(v_slot.index), v_slot.phase ^ 1)
    p.load_v(v_slot.index, batch, head_kv, key0)
    return v_slot.next()
