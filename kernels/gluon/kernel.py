"""The Hopper attention forward kernel: partitions and their wiring.

Warp-specialized (default): NUM_CONSUMERS consumer warpgroups (4 warps each,
the first in the default partition) and one producer warp. Without warp
specialization a single partition of num_warps warps consumes the whole tile
and issues its own loads.

With a trace buffer (kernels.gluon.trace; None in every normal launch, and
then no code) each consumer stamps %clock64 at TRACE_EVENTS points of its
first TRACE_TILES tiles.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from .epilogue import write_output
from .mainloop import a_operand_layout, attend_tile, first_turn, prefetch_tile, wgmma_layout
from .pipeline import Pipeline, Ring, producer_partition, wait_for_prior_grids
from .scheduler import TileScheduler, kv_block_count


# Per tile and consumer: start, Q (and its scales) ready, all key blocks attended, O and LSE written.
TRACE_EVENTS = gl.constexpr(4)
TRACE_TILES = gl.constexpr(32)
# With Q_IN_REGISTERS, Q's first columns up to this many go to registers (32 a thread in 16 bits), the rest stay in
# shared memory: all of Q at hd64/128; at 16-bit hd256 all of it spilled in the key loop, half does not (entry 58).
Q_REGISTER_COLS = gl.constexpr(128)


@gluon.jit
def stamp(trace, k, CID: gl.constexpr, event: gl.constexpr, NUM_CONSUMERS: gl.constexpr):
    """Store this SM's cycle counter as `event` of this consumer's tile k (the first TRACE_TILES tiles)."""
    if trace is not None:
        clock = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [gl.to_tensor(0)], dtype=gl.int64,
                                          is_pure=False, pack=1)
        slot = ((gl.program_id(0) * NUM_CONSUMERS + CID) * TRACE_TILES + k) * TRACE_EVENTS + event
        gl.store(trace + slot, clock, mask=k < TRACE_TILES)


@gluon.jit
def row_scales(batch, head, row0, sched: TileScheduler, qk_scale, q_scales, ROWS: gl.constexpr,
               Q_SCALE_BLOCK: gl.constexpr, row_layout: gl.constexpr):
    """Per-row factor from S to the softmax's base-2 domain: softmax scale * log2(e), times the Q block scale (FP8)."""
    row_scale = gl.zeros([ROWS], gl.float32, row_layout) + qk_scale
    if q_scales is not None:
        rows = row0 + gl.arange(0, ROWS, layout=row_layout)
        q_row0 = (batch * sched.nheads + head) * gl.cdiv(sched.seqlen_q, Q_SCALE_BLOCK)
        row_scale *= gl.load(q_scales + q_row0 + rows // Q_SCALE_BLOCK, mask=rows < sched.seqlen_q, other=1.0)
    return row_scale


@gluon.jit
def consumer_partition(p: Pipeline, sched: TileScheduler, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales,
                       trace, Q_SCALE_BLOCK: gl.constexpr, KV_SCALE_BLOCK: gl.constexpr, CID: gl.constexpr,
                       INLINE_LOADS: gl.constexpr, OVERLAP: gl.constexpr, PINGPONG: gl.constexpr,
                       Q_IN_REGISTERS: gl.constexpr):
    ROWS: gl.constexpr = p.q_desc.block_type.shape[1]
    HEAD_DIM: gl.constexpr = p.q_desc.block_type.shape[3]
    s_layout: gl.constexpr = wgmma_layout(gl.num_warps(), sched.BLOCK_N, p.q_desc.dtype)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    # Q's slot goes back once the key loop no longer reads it: at once when all of Q is in registers, unless O is
    # staged there; the next tile's Q then loads under this one.
    Q_FREED_EARLY: gl.constexpr = Q_IN_REGISTERS and not p.O_IN_Q and HEAD_DIM <= Q_REGISTER_COLS
    wait_for_prior_grids()
    kv = Ring.start(p.STAGES)
    # Consumer 0 takes the first GEMM turn (its first wait is on the already-completed phase), then the turn
    # goes round the consumers in order.
    turn_phase = gl.to_tensor(1 if CID == 0 else 0)
    first_turn(p, CID, PINGPONG)
    q_slot = Ring.start(p.Q_STAGES)
    next_id = sched.tile_id(0, schedule)
    for k in range(sched.tiles_here(schedule)):
        stamp(trace, k, CID, 0, p.NUM_CONSUMERS)
        tile_id = next_id
        next_id = sched.tile_id(k + 1, schedule)  # read a tile ahead: a causal launch's ids come from memory
        batch, head, m_block = sched.tile(tile_id)
        head_kv = head // sched.group
        n_blocks = kv_block_count(sched, m_block)
        tile_row0 = m_block * sched.BLOCK_M
        row0 = tile_row0 + CID * ROWS
        if INLINE_LOADS:
            prefetch_tile(p, kv, q_slot, n_blocks, batch, head, head_kv, tile_row0)
        row_scale = row_scales(batch, head, row0, sched, qk_scale, q_scales, ROWS, Q_SCALE_BLOCK, row_layout)
        k_tile_scales = k_scales
        v_tile_scales = v_scales
        if k_scales is not None:  # FP8: this (batch, kv head)'s row of K/V block scales
            kv_row0 = (batch * (sched.nheads // sched.group) + head_kv) * gl.cdiv(sched.seqlen_k, KV_SCALE_BLOCK)
            k_tile_scales = k_scales + kv_row0
            v_tile_scales = v_scales + kv_row0
        q_bar = p.q_barrier(q_slot.index, CID if p.SPLIT_Q else 0)
        mbarrier.wait(p.q_ready.index(q_bar), q_slot.phase)
        q_tile = p.q_tile(q_slot.index, CID)
        q = q_tile.reshape([ROWS, HEAD_DIM])
        q_rest = None  # Q's columns that QK^T reads from shared memory after those in registers (mainloop.qk_mma)
        if Q_IN_REGISTERS:  # QK^T as an RS wgmma: Q is read from shared memory once a tile, not once a key block
            if HEAD_DIM > Q_REGISTER_COLS:
                q_rest = q.slice(Q_REGISTER_COLS, HEAD_DIM - Q_REGISTER_COLS, dim=1)
                q = q.slice(0, Q_REGISTER_COLS, dim=1)
            q = q.load(a_operand_layout(s_layout, p.q_desc.dtype))
            if Q_FREED_EARLY:
                p.release(p.q_empty.index(q_bar))
        stamp(trace, k, CID, 1, p.NUM_CONSUMERS)
        o, m, l, v_unit, kv, turn_phase = attend_tile(p, q, q_rest, kv, turn_phase, n_blocks, row0, batch, head_kv,
                                                      sched.seqlen_q, sched.seqlen_k, row_scale, k_tile_scales,
                                                      v_tile_scales, KV_SCALE_BLOCK, CID, sched.CAUSAL, INLINE_LOADS,
                                                      OVERLAP, PINGPONG)
        stamp(trace, k, CID, 2, p.NUM_CONSUMERS)
        if not p.O_IN_Q and not Q_FREED_EARLY:
            p.release(p.q_empty.index(q_bar))
        if p.O_IN_K:
            # Every consumer's QK^T of the last key block is complete: its K buffer may take O (every tile has a key
            # block: attention_forward stages O in Q's buffer where causal tiles may see none).
            mbarrier.wait(p.k_done, k & 1)
            last = gl.where(kv.index == 0, p.STAGES - 1, kv.index - 1)
            o_box, o_rows = p.k_rows(last, CID)
        else:
            o_box = q_tile if p.O_IN_Q else p.o_smem.index(CID)
            o_rows = o_box.reshape([ROWS, HEAD_DIM])
        write_output(p, o, m, l, v_unit, o_box, o_rows, lse_ptr, batch, head, sched.nheads, row0, sched.seqlen_q)
        if p.O_IN_Q:
            p.release(p.q_empty.index(q_bar))
        if p.O_IN_K:
            p.release(p.k_empty.index(last))  # O's store has read it
        stamp(trace, k, CID, 3, p.NUM_CONSUMERS)
        q_slot = q_slot.next()
    tma.store_wait(0)


# Shapes stay runtime values: no recompile per seqlen, and no int silently turned into a constant.
@gluon.jit(do_not_specialize=["batch", "nheads", "group", "section_heads", "seqlen_q", "seqlen_k", "schedule_stride"])
def attention_fwd_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, q_scales, k_scales, v_scales, qk_scale, batch,
                         nheads, group, section_heads, seqlen_q, seqlen_k, schedule, schedule_stride, trace,
                         CAUSAL: gl.constexpr,
                         STAGES: gl.constexpr, NUM_CONSUMERS: gl.constexpr, O_BUFFER: gl.constexpr,
                         SPLIT_KV: gl.constexpr, SPLIT_Q: gl.constexpr, Q_STAGES: gl.constexpr,
                         BRANCH_FENCE: gl.constexpr, NAMED_TURN: gl.constexpr, THREAD_ARRIVE: gl.constexpr,
                         V_WGMMA_KEYS: gl.constexpr, FAST_V_RATIO: gl.constexpr,
                         THREAD_ROW_SUM: gl.constexpr, UNMASKED_LOOP: gl.constexpr,
                         CAUSAL_UNMASKED_LOOP: gl.constexpr, ROW_BOUND_MASK: gl.constexpr,
                         LAZY_RESCALE: gl.constexpr, RESCALE_UNDER_S: gl.constexpr, HALF_DIAGONAL: gl.constexpr,
                         Q_IN_REGISTERS: gl.constexpr,
                         Q_SCALE_BLOCK: gl.constexpr, KV_SCALE_BLOCK: gl.constexpr,
                         WARP_SPECIALIZE: gl.constexpr, OVERLAP: gl.constexpr, PINGPONG: gl.constexpr,
                         CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    """q/k/v/o: 4-D TMA descriptors; q_scales/k_scales/v_scales: FP8 block scales (kernels.quant), None for 16-bit.

    FP8 scales cover Q_SCALE_BLOCK query rows and KV_SCALE_BLOCK keys (a multiple of the key block);
    V_WGMMA_KEYS: FP8 V^T's keys are in wgmma order (kernels.quant.FP8QKV.v_key_order); schedule: a causal
    launch's tile lists (scheduler.schedule_table, rows of schedule_stride), None otherwise; trace: an int64 buffer of
    (programs, consumers, TRACE_TILES, TRACE_EVENTS) cycle stamps, or None."""
    BLOCK_M: gl.constexpr = NUM_CONSUMERS * q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    sched = TileScheduler.create(batch, nheads, group, section_heads, seqlen_q, seqlen_k, schedule_stride, BLOCK_M,
                                   BLOCK_N, CAUSAL)
    p = Pipeline.create(q_desc, k_desc, v_desc, o_desc, NUM_CONSUMERS, STAGES, O_BUFFER, SPLIT_KV, SPLIT_Q,
                        Q_STAGES, BRANCH_FENCE, NAMED_TURN, THREAD_ARRIVE, V_WGMMA_KEYS, FAST_V_RATIO,
                        THREAD_ROW_SUM, UNMASKED_LOOP, CAUSAL_UNMASKED_LOOP, ROW_BOUND_MASK, LAZY_RESCALE,
                        RESCALE_UNDER_S, HALF_DIAGONAL)
    if WARP_SPECIALIZE:
        if NUM_CONSUMERS == 2:
            gl.warp_specialize([
                (consumer_partition, (p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace,
                                      Q_SCALE_BLOCK, KV_SCALE_BLOCK, 0, False, OVERLAP, PINGPONG, Q_IN_REGISTERS)),
                (consumer_partition, (p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace,
                                      Q_SCALE_BLOCK, KV_SCALE_BLOCK, 1, False, OVERLAP, PINGPONG, Q_IN_REGISTERS)),
                (producer_partition, (p, sched, schedule, OVERLAP)),
            ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
        else:
            gl.static_assert(NUM_CONSUMERS == 3, "the warp-specialized kernel runs two or three consumer warpgroups")
            gl.warp_specialize([
                (consumer_partition, (p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace,
                                      Q_SCALE_BLOCK, KV_SCALE_BLOCK, 0, False, OVERLAP, PINGPONG, Q_IN_REGISTERS)),
                (consumer_partition, (p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace,
                                      Q_SCALE_BLOCK, KV_SCALE_BLOCK, 1, False, OVERLAP, PINGPONG, Q_IN_REGISTERS)),
                (consumer_partition, (p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace,
                                      Q_SCALE_BLOCK, KV_SCALE_BLOCK, 2, False, OVERLAP, PINGPONG, Q_IN_REGISTERS)),
                (producer_partition, (p, sched, schedule, OVERLAP)),
            ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.static_assert(NUM_CONSUMERS == 1, "without warp specialization one partition consumes the whole tile")
        gl.static_assert(not SPLIT_KV, "without a producer K and V slots are refilled together")
        consumer_partition(p, sched, schedule, qk_scale, lse_ptr, q_scales, k_scales, v_scales, trace, Q_SCALE_BLOCK,
                           KV_SCALE_BLOCK, 0, True, OVERLAP, False, Q_IN_REGISTERS)
