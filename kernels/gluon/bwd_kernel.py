"""The Hopper attention backward kernel (FA3's design).

One program per (key block of BLOCK_N, batch, kv head); causal launches run
the heaviest key blocks first (kernels.triton.bwd.causal_program, the order
the Triton backward's causal grids take too). K and V stay in shared
memory; the program walks the query blocks (BLOCK_M rows) of every query head
of its GQA group, Q, dO, LSE2 and delta streaming through a TMA ring of
STAGES slots. Two MMA warpgroups split the BLOCK_N keys, so every product but
dQ runs with keys as its M dimension (FA3's "swapAB" layouts); with 64 keys
(hd256) the keys are one warpgroup's M and the two warpgroups split N instead
(keys_layout), and P^T reaches dV through shared memory as dS^T reaches dK:

    S^T  = K Q^T,  dP^T = V dO^T            (SS wgmma)
    P^T  = exp2(S^T * scale*log2e - LSE2),   dS^T = P^T * (dP^T - delta) * scale
    dV  += P^T dO                           (RS wgmma: P^T stays in registers)
    dK  += dS^T Q,  dQ_partial = dS K       (dS^T through shared memory, read as is and transposed)

Two orders of the last two products (BwdTile.fa3_dk_order): dK first, its dS^T from shared memory, or FA3's
(the default tiles'), dQ_partial first and dK from dS^T in registers, so dK runs through the dQ_partial hand-over.
dK and dV stay in registers until the end; dQ_partial goes to a float32
accumulator, by relaxed atomic adds from registers or (DQ_TMA_REDUCE, FA3's way) by TMA
reduce-adds straight from the shared-memory hand-over, which keep the adds off the load/store unit. The
softmax scale is folded into dS, so neither dK nor the accumulator needs a rescale afterwards.

MMA_PARTITIONS says how the two MMA warpgroups share the work. 1: one 8-warp
partition, dQ_partial = dS K over all BLOCK_N keys with the warpgroups
splitting head_dim, so both warpgroups meet at a barrier once per query block
(lockstep). 2: each warpgroup is its own partition with its own BLOCK_N / 2
keys (K/V boxes of that many rows) and its own dQ_partial over them; nothing
but the query ring and the dQ hand-over ties them, so one warpgroup's
exp2/dS phase can run under the other's products. Measured 2-16% slower than
lockstep (the second float32 hand-over; docs/tuning-gluon.md, B3), so the
default tile keeps 1.

Warp-specialized (WARP_SPECIALIZE): one extra warpgroup issues every TMA load
(waiting on `q_empty` for ring slots) and adds the dQ_partials, handed over
through shared memory (`dq_full` / `dq_empty`, one buffer per MMA partition;
summed before the atomics, or each added by a TMA reduce-add; with DQ_IN_SLOT
in the query block's own ring slot, which the worker refills only after its
reduce-add has read it), to the accumulator, so the MMA warpgroups never
wait for loads to be issued nor for atomics; setmaxnreg gives the MMA
warpgroups 240 registers (232 to the first of two split ones: the launch's
168 per thread caps the total). Without it one 8-warp partition issues loads
and atomics itself.

Query tails need no mask: TMA zero-fills Q/dO rows past seqlen_q and their
padded LSE2 is +inf, so P = 0 there. Key tails need none either: padded K/V
rows are zero, so they add nothing to dQ, and their dK/dV rows are clipped by
the TMA store.
"""
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.language.core import _aggregate as aggregate

from kernels.triton.bwd import causal_program

# Registers per thread after setmaxnreg: the load/reduce warpgroup, and (two partitions) the second MMA
# warpgroup; the default partition takes the rest of 64K (240).
WORKER_REGS = gl.constexpr(32)
MMA_REGS = gl.constexpr(240)


@builtin
def tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """cp.reduce.async.bulk.tensor .add: add the shared-memory box src into the global box at coord (clipped at the
    tensor's bounds like a TMA store; completion is waited for with tma.store_wait). Triton 3.6's builder has the
    op (ttng.async_tma_reduce), its Gluon API does not wrap it yet."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


@gluon.constexpr_function
def keys_layout(num_warps, keys, n, dtype):
    """Accumulator layout of a [keys, n] product: the warps split the keys (M), 16 rows each; where they are more
    than keys / 16 (64 keys, two warpgroups: hd256), the warpgroups split n as well, each taking its half."""
    split_n = num_warps * 16 // keys
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[keys // 16, split_n],
                                     instr_shape=[16, n // split_n, 256 // dtype.primitive_bitwidth])


@gluon.constexpr_function
def dq_layout(num_warps, block_m, head_dim, dtype):
    """Accumulator layout of dQ_partial [block_m, head_dim]: the warpgroups split the rows, 64 each (FA3's hd64
    tile: each reads only its rows of dS), and the rest of them head_dim (64 rows: two warpgroups, half each)."""
    groups = num_warps // 4
    row_groups = min(groups, block_m // 64)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4 * row_groups, groups // row_groups],
                                     instr_shape=[16, head_dim * row_groups // groups, 256 // dtype.primitive_bitwidth])


@gluon.constexpr_function
def dq_rows_layout(num_warps, head_dim):
    """Layout in which the reducing warps read dQ_partial back: 4 consecutive floats per thread, rows across warps
    (a warp spans at most 128 columns: hd256 rows take two turns)."""
    cols = min(head_dim, 128) // 4
    return gl.BlockedLayout(size_per_thread=[1, 4], threads_per_warp=[32 // cols, cols],
                            warps_per_cta=[num_warps, 1], order=[1, 0])


@aggregate
class Work:
    """What one program computes: its key block, (batch, kv head), and the flat loop over query blocks."""
    key0: gl.tensor
    batch: gl.tensor
    head_kv: gl.tensor
    nheads: gl.tensor
    group: gl.tensor
    seqlen_q: gl.tensor
    seqlen_k: gl.tensor
    seqlen_q_pad: gl.tensor
    first_block: gl.tensor
    n_iter: gl.tensor
    total: gl.tensor
    BLOCK_M: gl.constexpr
    BLOCK_N: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, key0, batch, head_kv, nheads, group, seqlen_q, seqlen_k, seqlen_q_pad, first_block, n_iter,
                 total, BLOCK_M, BLOCK_N):
        self.key0 = key0
        self.batch = batch
        self.head_kv = head_kv
        self.nheads = nheads
        self.group = group
        self.seqlen_q = seqlen_q
        self.seqlen_k = seqlen_k
        self.seqlen_q_pad = seqlen_q_pad
        self.first_block = first_block
        self.n_iter = n_iter
        self.total = total
        self.BLOCK_M = gl.constexpr(BLOCK_M)
        self.BLOCK_N = gl.constexpr(BLOCK_N)

    @gluon.jit
    def create(nheads, group, seqlen_q, seqlen_k, seqlen_q_pad, section_heads, BLOCK_M: gl.constexpr,
               BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
        nheads_kv = nheads // group
        if CAUSAL:
            key_block, bh = causal_program(gl.cdiv(seqlen_k, BLOCK_N), section_heads)
        else:
            key_block = gl.program_id(0)
            bh = gl.program_id(1)
        key0 = key_block * BLOCK_N
        first_block = gl.to_tensor(0)
        if CAUSAL:  # bottom-right: row i sees key j iff j <= i + seqlen_k - seqlen_q
            first_block = gl.maximum(key0 - (seqlen_k - seqlen_q), 0) // BLOCK_M
        n_iter = gl.maximum(gl.cdiv(seqlen_q, BLOCK_M) - first_block, 0)
        return Work(key0, bh // nheads_kv, bh % nheads_kv, nheads, group, seqlen_q, seqlen_k, seqlen_q_pad,
                    first_block, n_iter, n_iter * group, BLOCK_M, BLOCK_N)

    @gluon.jit
    def query_block(self, it):
        """(head, first row) of flat iteration `it`: head-major over the GQA group, and within a head the n_iter
        query blocks from first_block on. All key blocks of a head walk the query blocks in the same order, so
        the programs running at once share each Q/dO block in L2 (rotating the order per key block, to spread
        their dQ atomics over different rows, measured up to 6% slower: docs/tuning-gluon.md)."""
        head = self.head_kv * self.group + it // self.n_iter
        row0 = (self.first_block + it % self.n_iter) * self.BLOCK_M
        return head, row0


@aggregate
class Buffers:
    """Descriptors, shared memory and mbarriers of one program.

    K and V are held as MMA_PARTITIONS boxes of keys, one per MMA partition.
    The query ring holds STAGES slots of Q, dO (block_m rows), LSE2 and delta,
    each slot filled by TMA onto `ready` and handed back on `q_empty` (one
    arrival per MMA partition). dS^T has two buffers: with one partition they
    alternate (one warpgroup may write the next while the other still reads
    this one for dQ), with two each partition owns one. dq (float32, one per
    MMA partition) is the hand-over to the reducing warps; with DQ_TMA_REDUCE it
    is laid out as the accumulator descriptor's box, which the TMA adds from.
    """
    q_desc: tma.tensor_descriptor
    k_desc: tma.tensor_descriptor
    v_desc: tma.tensor_descriptor
    do_desc: tma.tensor_descriptor
    lse2_desc: tma.tensor_descriptor
    delta_desc: tma.tensor_descriptor
    q_smem: gl.shared_memory_descriptor
    k_smem: gl.shared_memory_descriptor
    v_smem: gl.shared_memory_descriptor
    do_smem: gl.shared_memory_descriptor
    lse2_smem: gl.shared_memory_descriptor
    delta_smem: gl.shared_memory_descriptor
    ds_smem: gl.shared_memory_descriptor
    pt_smem: gl.shared_memory_descriptor
    dq_smem: gl.shared_memory_descriptor
    kv_ready: gl.shared_memory_descriptor
    ready: gl.shared_memory_descriptor
    q_empty: gl.shared_memory_descriptor
    dq_full: gl.shared_memory_descriptor
    dq_empty: gl.shared_memory_descriptor
    STAGES: gl.constexpr
    MMA_PARTITIONS: gl.constexpr
    DQ_TMA_REDUCE: gl.constexpr
    P_T_SMEM: gl.constexpr
    DQ_IN_SLOT: gl.constexpr

    @gluon.constexpr_function
    def __init__(self, q_desc, k_desc, v_desc, do_desc, lse2_desc, delta_desc, q_smem, k_smem, v_smem, do_smem,
                 lse2_smem, delta_smem, ds_smem, pt_smem, dq_smem, kv_ready, ready, q_empty, dq_full, dq_empty,
                 STAGES, MMA_PARTITIONS, DQ_TMA_REDUCE, P_T_SMEM, DQ_IN_SLOT):
        self.q_desc = q_desc
        self.k_desc = k_desc
        self.v_desc = v_desc
        self.do_desc = do_desc
        self.lse2_desc = lse2_desc
        self.delta_desc = delta_desc
        self.q_smem = q_smem
        self.k_smem = k_smem
        self.v_smem = v_smem
        self.do_smem = do_smem
        self.lse2_smem = lse2_smem
        self.delta_smem = delta_smem
        self.ds_smem = ds_smem
        self.pt_smem = pt_smem
        self.dq_smem = dq_smem
        self.kv_ready = kv_ready
        self.ready = ready
        self.q_empty = q_empty
        self.dq_full = dq_full
        self.dq_empty = dq_empty
        self.STAGES = gl.constexpr(STAGES)
        self.MMA_PARTITIONS = gl.constexpr(MMA_PARTITIONS)
        self.DQ_TMA_REDUCE = gl.constexpr(DQ_TMA_REDUCE)
        self.P_T_SMEM = gl.constexpr(P_T_SMEM)
        self.DQ_IN_SLOT = gl.constexpr(DQ_IN_SLOT)

    @gluon.jit
    def create(q_desc, k_desc, v_desc, do_desc, lse2_desc, delta_desc, dq_desc, STAGES: gl.constexpr,
               MMA_PARTITIONS: gl.constexpr, DQ_IN_SMEM: gl.constexpr, P_T_SMEM: gl.constexpr,
               DQ_IN_SLOT: gl.constexpr):
        """dq_desc: the accumulator's descriptor when dQ_partial is added by TMA, else None; P_T_SMEM: P^T reaches
        dV through two shared-memory buffers (query_step); DQ_IN_SLOT: dQ_partial is handed over in its query
        block's ring slot, Q's and dO's buffers side by side (as many bytes as float32 dQ_partial)."""
        BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
        KEYS: gl.constexpr = k_desc.block_type.shape[1]  # per MMA partition
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[3]
        dtype: gl.constexpr = q_desc.dtype
        if DQ_IN_SLOT:
            q_smem = gl.allocate_shared_memory(dtype, [2 * STAGES] + q_desc.block_type.shape, q_desc.layout)
            do_smem = q_smem  # slot s: Q at 2s, dO at 2s + 1 (q_slot, do_slot)
        else:
            q_smem = gl.allocate_shared_memory(dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
            do_smem = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
        lse2_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + lse2_desc.block_type.shape, lse2_desc.layout)
        delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + delta_desc.block_type.shape, delta_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [MMA_PARTITIONS] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [MMA_PARTITIONS] + v_desc.block_type.shape, v_desc.layout)
        ds_smem = gl.allocate_shared_memory(dtype, [2, KEYS, BLOCK_M],
                                            gl.NVMMASharedLayout.get_default_for([KEYS, BLOCK_M], dtype))
        if P_T_SMEM:
            pt_smem = gl.allocate_shared_memory(dtype, [2, KEYS, BLOCK_M],
                                                gl.NVMMASharedLayout.get_default_for([KEYS, BLOCK_M], dtype))
        else:
            pt_smem = ds_smem  # placeholder: P^T stays in registers
        if DQ_IN_SLOT:
            dq_smem = q_smem._reinterpret(gl.float32, [STAGES] + dq_desc.block_type.shape, dq_desc.layout)
        elif dq_desc is not None:
            dq_smem = gl.allocate_shared_memory(gl.float32, [MMA_PARTITIONS] + dq_desc.block_type.shape,
                                                dq_desc.layout)
        elif DQ_IN_SMEM:
            dq_smem = gl.allocate_shared_memory(gl.float32, [MMA_PARTITIONS, BLOCK_M, HEAD_DIM],
                                                gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM], gl.float32))
        else:
            dq_smem = ds_smem  # placeholder: no hand-over without warp specialization
        kv_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        # DQ_IN_SLOT: one dq_full per ring slot; the worker frees a slot itself (reduce_in_slots), so q_empty and
        # dq_empty are allocated and initialized but never waited on (left so: the build measured on the GPU).
        DQ_BARRIERS: gl.constexpr = STAGES if DQ_IN_SLOT else MMA_PARTITIONS
        dq_full = gl.allocate_shared_memory(gl.int64, [DQ_BARRIERS, 1], mbarrier.MBarrierLayout())
        dq_empty = gl.allocate_shared_memory(gl.int64, [DQ_BARRIERS, 1], mbarrier.MBarrierLayout())
        mbarrier.init(kv_ready, count=1)
        for g in gl.static_range(DQ_BARRIERS):
            mbarrier.init(dq_full.index(g), count=1)
            mbarrier.init(dq_empty.index(g), count=1)
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(q_empty.index(s), count=MMA_PARTITIONS)
        return Buffers(q_desc, k_desc, v_desc, do_desc, lse2_desc, delta_desc, q_smem, k_smem, v_smem, do_smem,
                       lse2_smem, delta_smem, ds_smem, pt_smem, dq_smem, kv_ready, ready, q_empty, dq_full, dq_empty,
                       STAGES, MMA_PARTITIONS, dq_desc is not None, P_T_SMEM, DQ_IN_SLOT)

    @gluon.jit
    def dq_tile(self, g):
        """Hand-over buffer g (DQ_IN_SLOT: ring slot g) as [BLOCK_M, HEAD_DIM]."""
        return self.dq_smem.index(g).reshape([self.q_desc.block_type.shape[1], self.q_desc.block_type.shape[3]])

    @gluon.jit
    def q_slot(self, stage):
        return self.q_smem.index(2 * stage if self.DQ_IN_SLOT else stage)

    @gluon.jit
    def do_slot(self, stage):
        return self.do_smem.index(2 * stage + 1 if self.DQ_IN_SLOT else stage)

    @gluon.jit
    def load_kv(self, w: Work):
        KEYS: gl.constexpr = self.k_desc.block_type.shape[1]
        mbarrier.expect(self.kv_ready,
                        self.MMA_PARTITIONS * (self.k_desc.block_type.nbytes + self.v_desc.block_type.nbytes))
        for g in gl.static_range(self.MMA_PARTITIONS):
            coord = [w.batch, w.key0 + g * KEYS, w.head_kv, 0]
            tma.async_copy_global_to_shared(self.k_desc, coord, self.kv_ready, self.k_smem.index(g))
            tma.async_copy_global_to_shared(self.v_desc, coord, self.kv_ready, self.v_smem.index(g))

    @gluon.jit
    def load_query_block(self, w: Work, it):
        """Issue the TMA loads of Q, dO, LSE2 and delta of flat iteration `it` into its ring slot."""
        stage = it % self.STAGES
        head, row0 = w.query_block(it)
        stat0 = (w.batch * w.nheads + head) * w.seqlen_q_pad + row0
        bar = self.ready.index(stage)
        mbarrier.expect(bar, self.q_desc.block_type.nbytes + self.do_desc.block_type.nbytes +
                        2 * self.lse2_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(self.q_desc, [w.batch, row0, head, 0], bar, self.q_slot(stage))
        tma.async_copy_global_to_shared(self.do_desc, [w.batch, row0, head, 0], bar, self.do_slot(stage))
        tma.async_copy_global_to_shared(self.lse2_desc, [stat0], bar, self.lse2_smem.index(stage))
        tma.async_copy_global_to_shared(self.delta_desc, [stat0], bar, self.delta_smem.index(stage))


@gluon.jit
def add_dq(dq, dq_acc_ptr, w: Work, head, row0):
    """Atomically add dQ_partial [BLOCK_M, HEAD_DIM] into rows row0.. of the (batch, seqlen_q, nheads, d)
    accumulator."""
    layout: gl.constexpr = dq.type.layout
    HEAD_DIM: gl.constexpr = dq.shape[1]
    rows = row0 + gl.arange(0, dq.shape[0], layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    offs = ((w.batch * w.seqlen_q + rows).to(gl.int64) * w.nheads + head) * HEAD_DIM
    ptrs = dq_acc_ptr + gl.expand_dims(offs, 1) + gl.expand_dims(cols, 0)
    if row0 + dq.shape[0] <= w.seqlen_q:  # whole block: no per-element predicate
        gl.atomic_add(ptrs, dq, sem="relaxed")
    else:
        gl.atomic_add(ptrs, dq, mask=gl.expand_dims(rows < w.seqlen_q, 1), sem="relaxed")


@gluon.jit
def store_grad(desc, smem, grad, w: Work, key0):
    """dK or dV rows key0..: registers -> (the now idle K or V box) -> TMA store, clipped at seqlen_k."""
    shape: gl.constexpr = desc.block_type.shape
    smem.reshape([shape[1], shape[3]]).store(grad.to(desc.dtype))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(desc, [w.batch, key0, w.head_kv, 0], smem)


# query_step's masks: none, where the block crosses the diagonal (a run-time test), or always.
NO_MASK = gl.constexpr(0)
MASK_IF_CROSSING = gl.constexpr(1)
MASK = gl.constexpr(2)


@gluon.jit
def mma_partition(b: Buffers, w: Work, dk_desc, dv_desc, dq_acc_ptr, qk_scale, softmax_scale, CAUSAL: gl.constexpr,
                  WARP_SPECIALIZE: gl.constexpr, FA3_DK_ORDER: gl.constexpr, MASK_LOOP: gl.constexpr,
                  G: gl.constexpr):
    """MMA partition G: every product and the elementwise work of the loop over its keys (box G of K/V),
    then their dK and dV. MASK_LOOP (causal): per head, the query blocks that cross the diagonal run first in a
    loop of their own, the only one that holds the mask's registers."""
    KEYS: gl.constexpr = b.k_desc.block_type.shape[1]
    HEAD_DIM: gl.constexpr = b.q_desc.block_type.shape[3]
    NW: gl.constexpr = gl.num_warps()
    gl.static_assert(KEYS == 16 * NW or 2 * KEYS == 16 * NW, "the warps split the partition's keys 16 rows each")
    kv_layout: gl.constexpr = keys_layout(NW, KEYS, HEAD_DIM, b.q_desc.dtype)

    if not WARP_SPECIALIZE:
        b.load_kv(w)
        for it in range(gl.minimum(w.total, b.STAGES)):
            b.load_query_block(w, it)
    k_box = b.k_smem.index(G)
    v_box = b.v_smem.index(G)
    key0 = w.key0 + G * KEYS
    keys = key0 + gl.arange(0, KEYS, layout=gl.SliceLayout(1, keys_layout(NW, KEYS, b.q_desc.block_type.shape[1],
                                                                          b.q_desc.dtype)))
    dk = gl.zeros([KEYS, HEAD_DIM], gl.float32, kv_layout)
    dv = gl.zeros([KEYS, HEAD_DIM], gl.float32, kv_layout)
    mbarrier.wait(b.kv_ready, 0)

    if CAUSAL and MASK_LOOP:
        # Query blocks whose first row is above the last key's diagonal row, from first_block on.
        last_row = gl.maximum(key0 + KEYS - 1 - (w.seqlen_k - w.seqlen_q), 0)
        n_masked = gl.minimum(gl.maximum(gl.cdiv(last_row, w.BLOCK_M) - w.first_block, 0), w.n_iter)
        for h in range(w.group):
            for i in range(n_masked):
                dk, dv = query_step(b, w, k_box, v_box, key0, keys, dk, dv, h * w.n_iter + i, dq_acc_ptr, qk_scale,
                                    softmax_scale, MASK, WARP_SPECIALIZE, FA3_DK_ORDER, G)
            for i in range(n_masked, w.n_iter):
                dk, dv = query_step(b, w, k_box, v_box, key0, keys, dk, dv, h * w.n_iter + i, dq_acc_ptr, qk_scale,
                                    softmax_scale, NO_MASK, WARP_SPECIALIZE, FA3_DK_ORDER, G)
    else:
        for it in range(w.total):
            dk, dv = query_step(b, w, k_box, v_box, key0, keys, dk, dv, it, dq_acc_ptr, qk_scale, softmax_scale,
                                MASK_IF_CROSSING if CAUSAL else NO_MASK, WARP_SPECIALIZE, FA3_DK_ORDER, G)

    # K and V are no longer read: their boxes stage dK and dV for the TMA stores.
    store_grad(dk_desc, k_box, dk, w, key0)
    store_grad(dv_desc, v_box, dv, w, key0)
    tma.store_wait(0)


@gluon.jit
def query_step(b: Buffers, w: Work, k_box, v_box, key0, keys, dk, dv, it, dq_acc_ptr, qk_scale, softmax_scale,
               MASKING: gl.constexpr, WARP_SPECIALIZE: gl.constexpr, FA3_DK_ORDER: gl.constexpr, G: gl.constexpr):
    """Flat iteration `it` of partition G: its query block's five products against the partition's keys key0..
    (`keys`: their indices in S^T's row layout), dK and dV accumulated; returns (dk, dv)."""
    BLOCK_M: gl.constexpr = b.q_desc.block_type.shape[1]
    KEYS: gl.constexpr = b.k_desc.block_type.shape[1]
    HEAD_DIM: gl.constexpr = b.q_desc.block_type.shape[3]
    dtype: gl.constexpr = b.q_desc.dtype
    NW: gl.constexpr = gl.num_warps()
    s_layout: gl.constexpr = keys_layout(NW, KEYS, BLOCK_M, dtype)
    kv_layout: gl.constexpr = keys_layout(NW, KEYS, HEAD_DIM, dtype)
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    cols_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    k = k_box.reshape([KEYS, HEAD_DIM])
    v = v_box.reshape([KEYS, HEAD_DIM])
    shift = w.seqlen_k - w.seqlen_q

    stage = it % b.STAGES
    head, row0 = w.query_block(it)
    mbarrier.wait(b.ready.index(stage), (it // b.STAGES) & 1)
    q = b.q_slot(stage).reshape([BLOCK_M, HEAD_DIM])
    do = b.do_slot(stage).reshape([BLOCK_M, HEAD_DIM])
    s_t = warpgroup_mma(k, q.permute((1, 0)), gl.zeros([KEYS, BLOCK_M], gl.float32, s_layout),
                        use_acc=False, is_async=True)
    dp_t = warpgroup_mma(v, do.permute((1, 0)), gl.zeros([KEYS, BLOCK_M], gl.float32, s_layout),
                         use_acc=False, is_async=True)
    s_t = warpgroup_mma_wait(1, deps=(s_t, ))
    # Per-query statistics come from shared memory at their use: held in registers they would spill.
    lse2 = b.lse2_smem.index(stage).load(cols_layout)
    p_t = gl.exp2(s_t * qk_scale - gl.expand_dims(lse2, 0))
    if MASKING != NO_MASK:
        crosses = True
        if MASKING == MASK_IF_CROSSING:
            crosses = row0 + shift < key0 + KEYS - 1
        if crosses:  # bottom-right: row i sees key j iff j <= i + seqlen_k - seqlen_q
            cols = row0 + gl.arange(0, BLOCK_M, layout=cols_layout)
            p_t = gl.where(gl.expand_dims(keys, 1) <= gl.expand_dims(cols + shift, 0), p_t, 0.0)
    dp_t = warpgroup_mma_wait(0, deps=(dp_t, ))
    delta = b.delta_smem.index(stage).load(cols_layout)
    ds_t = p_t * (dp_t - gl.expand_dims(delta, 0)) * softmax_scale
    if b.P_T_SMEM:
        # The warpgroups split the queries of P^T, and each needs all of them for its half of dV: P^T goes
        # through shared memory, in place with dS^T at the barrier below (two buffers, as dS^T's).
        pt_buf = b.pt_smem.index(it % 2)
        pt_buf.store(p_t.to(dtype))
    else:
        p_op = gl.convert_layout(p_t.to(dtype), op_layout)
        dv = warpgroup_mma(p_op, do, dv, is_async=True)
    if b.MMA_PARTITIONS == 1:
        ds_buf = b.ds_smem.index(it % 2)
    else:
        ds_buf = b.ds_smem.index(G)  # read only by this partition, whose products of it - 1 are complete
    ds16 = ds_t.to(dtype)
    ds_buf.store(ds16)
    fence_async_shared()
    # The partition's dS^T is in place (one partition: both warpgroups' halves, and both finished iteration
    # it - 1).
    gl.thread_barrier()
    if not WARP_SPECIALIZE:
        if it > 0:
            if it - 1 + b.STAGES < w.total:
                b.load_query_block(w, it - 1 + b.STAGES)
    dq_zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, dq_layout(NW, BLOCK_M, HEAD_DIM, dtype))
    if b.P_T_SMEM:
        # All three from shared memory; without DQ_IN_SLOT the slot goes back once dV and dK are complete, so
        # that the next query block loads while dQ_partial runs and is handed over.
        dv = warpgroup_mma(pt_buf, do, dv, is_async=True)
        dk = warpgroup_mma(ds_buf, q, dk, is_async=True)
        dq = warpgroup_mma(ds_buf.permute((1, 0)), k, dq_zero, use_acc=False, is_async=True)
        dv, dk = warpgroup_mma_wait(1, deps=(dv, dk))
        if WARP_SPECIALIZE and not b.DQ_IN_SLOT:
            mbarrier.arrive(b.q_empty.index(stage))
        dq = warpgroup_mma_wait(0, deps=(dq, ))
    elif FA3_DK_ORDER:
        # dQ_partial first; dK, from dS^T in registers (as P^T for dV), issued once dV is complete and still
        # running while dQ_partial is handed over (or added), so the tensor cores stay busy through it.
        ds_op = gl.convert_layout(ds16, op_layout)
        dq = warpgroup_mma(ds_buf.permute((1, 0)), k, dq_zero, use_acc=False, is_async=True)
        dv, p_op = warpgroup_mma_wait(1, deps=(dv, p_op))
        dk = warpgroup_mma(ds_op, q, dk, is_async=True)
        dq = warpgroup_mma_wait(1, deps=(dq, ))
    else:
        # dS^T is read from shared memory by both products.
        dk = warpgroup_mma(ds_buf, q, dk, is_async=True)
        # dV is complete before dQ_partial takes its registers: P^T's registers are free by then.
        dv, p_op = warpgroup_mma_wait(1, deps=(dv, p_op))
        dq = warpgroup_mma(ds_buf.permute((1, 0)), k, dq_zero, use_acc=False, is_async=True)
        dq, dk = warpgroup_mma_wait(0, deps=(dq, dk))
    if b.DQ_IN_SLOT:
        # Into this query block's slot, once both warpgroups' products have read Q and dO there; the worker adds it
        # by TMA and only then loads the slot's next block.
        if FA3_DK_ORDER:  # dK reads Q in the slot
            dk, ds_op = warpgroup_mma_wait(0, deps=(dk, ds_op))
        gl.thread_barrier()
        b.dq_tile(stage).store(dq)
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.arrive(b.dq_full.index(stage))
    elif WARP_SPECIALIZE:
        mbarrier.wait(b.dq_empty.index(G), (it & 1) ^ 1)  # the reducer has read the previous dQ_partial
        b.dq_tile(G).store(dq)
        if b.DQ_TMA_REDUCE:
            fence_async_shared()  # the TMA (async proxy) reads what these threads wrote
        gl.thread_barrier()
        mbarrier.arrive(b.dq_full.index(G))
    else:
        add_dq(dq, dq_acc_ptr, w, head, row0)
    if FA3_DK_ORDER and not b.DQ_IN_SLOT:  # dS^T's registers stay allocated until dK has read them
        dk, ds_op = warpgroup_mma_wait(0, deps=(dk, ds_op))
    if WARP_SPECIALIZE and not b.P_T_SMEM and not b.DQ_IN_SLOT:
        mbarrier.arrive(b.q_empty.index(stage))  # every product reading this slot is complete
    return dk, dv


@gluon.jit
def load_reduce_partition(b: Buffers, w: Work, dq_acc_ptr, dq_desc):
    """The worker warpgroup: K/V and the query ring's TMA loads, and the dQ_partial atomics (the MMA
    partitions' parts summed first: one atomic per element), or with DQ_TMA_REDUCE one TMA reduce-add per
    partition's hand-over, rows past seqlen_q clipped by the TMA.

    Loads run STAGES - 1 query blocks ahead of the reductions: loading block it waits for the MMA partitions
    to release block it - STAGES, which they do as they hand over its dQ_partials (reduced one step before)."""
    b.load_kv(w)
    if b.DQ_IN_SLOT:
        reduce_in_slots(b, w, dq_desc)
        return
    for it in range(w.total + b.STAGES - 1):
        if it < w.total:
            # Ring slots start free: the first pass waits on the phase before 0, which counts as complete.
            mbarrier.wait(b.q_empty.index(it % b.STAGES), ((it // b.STAGES) & 1) ^ 1)
            b.load_query_block(w, it)
        j = it - (b.STAGES - 1)
        if j >= 0:
            head, row0 = w.query_block(j)
            for g in gl.static_range(b.MMA_PARTITIONS):
                mbarrier.wait(b.dq_full.index(g), j & 1)
            if b.DQ_TMA_REDUCE:
                for g in gl.static_range(b.MMA_PARTITIONS):
                    tma_reduce_add(dq_desc, [w.batch, row0, head, 0], b.dq_smem.index(g))
                tma.store_wait(0)  # the TMA has read the hand-over (the adds themselves may still be in flight)
            else:
                add_dq_from_smem(b, w, dq_acc_ptr, head, row0)
            for g in gl.static_range(b.MMA_PARTITIONS):
                mbarrier.arrive(b.dq_empty.index(g))


@gluon.jit
def reduce_in_slots(b: Buffers, w: Work, dq_desc):
    """The worker with DQ_IN_SLOT: query block it loads into its ring slot once the TMA has read the dQ_partial
    that the block STAGES before it left there (slots start free); the MMA partition needs no release."""
    for it in range(w.total + b.STAGES):
        j = it - b.STAGES
        if j >= 0:
            head, row0 = w.query_block(j)
            mbarrier.wait(b.dq_full.index(j % b.STAGES), (j // b.STAGES) & 1)
            tma_reduce_add(dq_desc, [w.batch, row0, head, 0], b.dq_smem.index(j % b.STAGES))
            tma.store_wait(0)  # read: the slot is free (the adds themselves may still be in flight)
        if it < w.total:
            b.load_query_block(w, it)


@gluon.jit
def add_dq_from_smem(b: Buffers, w: Work, dq_acc_ptr, head, row0):
    """The hand-overs' sum, read back CHUNK rows at a time, added to the accumulator with v4 atomics."""
    BLOCK_M: gl.constexpr = b.q_desc.block_type.shape[1]
    HEAD_DIM: gl.constexpr = b.q_desc.block_type.shape[3]
    CHUNK: gl.constexpr = 8  # rows per read-back (the hand-over's swizzle pattern): 8 floats per thread at hd 128
    layout: gl.constexpr = dq_rows_layout(gl.num_warps(), HEAD_DIM)
    chunk_rows = gl.arange(0, CHUNK, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    for c in gl.static_range(BLOCK_M // CHUNK):
        rows = row0 + c * CHUNK + chunk_rows
        dq = b.dq_smem.index(0).slice(c * CHUNK, CHUNK).load(layout)
        for g in gl.static_range(1, b.MMA_PARTITIONS):
            dq += b.dq_smem.index(g).slice(c * CHUNK, CHUNK).load(layout)
        offs = ((w.batch * w.seqlen_q + rows).to(gl.int64) * w.nheads + head) * HEAD_DIM
        ptrs = dq_acc_ptr + gl.expand_dims(offs, 1) + gl.expand_dims(cols, 0)
        gl.atomic_add(ptrs, dq, mask=gl.expand_dims(rows < w.seqlen_q, 1), sem="relaxed")


# Shapes stay runtime values: no recompile per seqlen, and no int silently turned into a constant.
@gluon.jit(do_not_specialize=["nheads", "group", "seqlen_q", "seqlen_k", "seqlen_q_pad", "section_heads"])
def attention_bwd_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, lse2_desc, delta_desc, dq_acc_ptr,
                         dq_desc, qk_scale, softmax_scale, nheads, group, seqlen_q, seqlen_k, seqlen_q_pad,
                         section_heads, CAUSAL: gl.constexpr, STAGES: gl.constexpr, WARP_SPECIALIZE: gl.constexpr,
                         MMA_PARTITIONS: gl.constexpr, FA3_DK_ORDER: gl.constexpr, MASK_LOOP: gl.constexpr,
                         DQ_IN_SLOT: gl.constexpr):
    """q/k/v/do/dk/dv: 4-D TMA descriptors (batch, seq, head, dim), K/V/dK/dV boxes of one MMA partition's keys;
    lse2/delta: 1-D descriptors over the flat (batch, nheads, seqlen_q_pad) float32 LSE * log2(e) and
    rowsum(dO * O), +inf / 0 past seqlen_q; dq_acc: zeroed float32 like q; dq_desc: a 4-D descriptor of it
    with Q's box when the worker adds dQ_partial by TMA, else None. Grid: (key blocks, batch * kv heads), or
    causal one dimension of as many programs, in causal_program's order over sections of section_heads."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = MMA_PARTITIONS * k_desc.block_type.shape[1]
    w = Work.create(nheads, group, seqlen_q, seqlen_k, seqlen_q_pad, section_heads, BLOCK_M, BLOCK_N, CAUSAL)
    # 64 keys on two MMA warpgroups (hd256): they split the head dim of dK, dV and dQ_partial and the queries of
    # S^T and dP^T (keys_layout).
    P_T_SMEM: gl.constexpr = k_desc.block_type.shape[1] < 16 * gl.num_warps()
    b = Buffers.create(q_desc, k_desc, v_desc, do_desc, lse2_desc, delta_desc, dq_desc, STAGES, MMA_PARTITIONS,
                       WARP_SPECIALIZE, P_T_SMEM, DQ_IN_SLOT)
    if WARP_SPECIALIZE:
        if MMA_PARTITIONS == 2:
            gl.warp_specialize([
                (mma_partition, (b, w, dk_desc, dv_desc, dq_acc_ptr, qk_scale, softmax_scale, CAUSAL, True,
                                FA3_DK_ORDER, MASK_LOOP, 0)),
                (mma_partition, (b, w, dk_desc, dv_desc, dq_acc_ptr, qk_scale, softmax_scale, CAUSAL, True,
                                FA3_DK_ORDER, MASK_LOOP, 1)),
                (load_reduce_partition, (b, w, dq_acc_ptr, dq_desc)),
            ], [4, 4], [MMA_REGS, WORKER_REGS])
        else:
            gl.static_assert(MMA_PARTITIONS == 1, "one or two MMA partitions")
            gl.warp_specialize([
                (mma_partition, (b, w, dk_desc, dv_desc, dq_acc_ptr, qk_scale, softmax_scale, CAUSAL, True,
                                FA3_DK_ORDER, MASK_LOOP, 0)),
                (load_reduce_partition, (b, w, dq_acc_ptr, dq_desc)),
            ], [4], [WORKER_REGS])
    else:
        gl.static_assert(MMA_PARTITIONS == 1, "without warp specialization one partition does everything")
        mma_partition(b, w, dk_desc, dv_desc, dq_acc_ptr, qk_scale, softmax_scale, CAUSAL, False,
                      FA3_DK_ORDER, MASK_LOOP, 0)
