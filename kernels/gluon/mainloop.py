"""Consumer mainloop of the Hopper forward: one warpgroup's rows of one tile against all its key blocks.

S = Q K^T runs as an SS wgmma (both operands in shared memory); P = softmax
numerators go to registers as bf16/fp16 and O += P V runs as an RS wgmma (A from
registers), so P never touches shared memory.

With OVERLAP (FA3's intra-warpgroup pipelining) each step issues QK^T of block
i and PV of block i-1 back to back, then does the softmax of block i while PV
is still on the tensor cores. With PINGPONG the two consumer warpgroups take
turns issuing their GEMMs (an mbarrier pair stands in for FA3's named
barriers), so one warpgroup's softmax runs under the other's GEMMs.

With INLINE_LOADS (warp specialization off) the consumer issues the TMA loads
itself: a released ring slot is refilled at once with the block STAGES ahead.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .pipeline import Pipeline, Ring, kv_block_start
from .softmax import block_needs_mask, mask_scores, p_log2_offset, softmax_update


@gluon.constexpr_function
def wgmma_layout(num_warps, n, dtype):
    """Accumulator layout of a [16 * num_warps, n] wgmma tile: warps stacked along M, one instruction spans n."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                     instr_shape=[16, n, 256 // dtype.primitive_bitwidth])



@gluon.jit
def take_turn(p: Pipeline, turn_phase, CID: gl.constexpr, PINGPONG: gl.constexpr):
    """Wait until this consumer may issue its GEMMs; returns the next turn parity."""
    if PINGPONG:
        mbarrier.wait(p.turn.index(CID), turn_phase)
        turn_phase ^= 1
    return turn_phase


@gluon.jit
def pass_turn(p: Pipeline, CID: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(p.turn.index(1 - CID))


@gluon.jit
def release_stage(p: Pipeline, kv: Ring, i_done, valid, n_blocks, batch, head_kv, INLINE_LOADS: gl.constexpr):
    """If `valid`, hand ring slot `kv` (block i_done) back: to the producer, or (no producer) refill it with
    block i_done + STAGES."""
    if INLINE_LOADS:
        i_next = i_done + p.STAGES
        if valid & (i_next < n_blocks):
            p.load_kv(kv.index, batch, head_kv, kv_block_start(n_blocks, i_next, p.k_desc.block_type.shape[1]))
    else:
        mbarrier.arrive(p.kv_empty.index(kv.index), pred=valid)


@gluon.jit
def prefetch_tile(p: Pipeline, kv: Ring, n_blocks, batch, head, head_kv, row0):
    """No producer: issue Q and the first STAGES key blocks of a tile before consuming it."""
    p.load_q(batch, head, row0)
    slot = kv
    for i in range(gl.minimum(n_blocks, p.STAGES)):
        p.load_kv(slot.index, batch, head_kv, kv_block_start(n_blocks, i, p.k_desc.block_type.shape[1]))
        slot = slot.next()


@gluon.jit
def key_block(p: Pipeline, kv: Ring):
    """K^T view of slot kv, [HEAD_DIM, BLOCK_N], for the B operand of QK^T."""
    shape: gl.constexpr = p.k_desc.block_type.shape
    return p.k_smem.index(kv.index).reshape([shape[1], shape[3]]).permute((1, 0))


@gluon.jit
def value_block(p: Pipeline, kv: Ring):
    """V view of slot kv, [BLOCK_N, HEAD_DIM], for the B operand of PV (FP8: a K-major view of V^T)."""
    shape: gl.constexpr = p.v_desc.block_type.shape
    if p.V_TRANSPOSED:
        return p.v_smem.index(kv.index).reshape([shape[2], shape[3]]).permute((1, 0))
    else:
        return p.v_smem.index(kv.index).reshape([shape[1], shape[3]])


@gluon.jit
def wait_pv(o, pm, pr):
    """Wait for O += P V; returns (O, pr).

    Passing the in-flight P operand `pm` through the wait keeps its registers
    alive until the wgmma has read them (Triton cannot carry 8-bit values
    through the wait, so FP8 P relies on ptxas's own wgmma hazard checks).
    Passing the next block's fp32 P `pr` through it pins its conversion to
    16/8 bits after the wait: hoisted above, the new P would need the old P's
    registers while the wgmma still reads them, and ptxas serializes wgmma.
    """
    if pm.dtype.is_fp8():
        o, pr = warpgroup_mma_wait(0, deps=(o, pr))
    else:
        o, pm, pr = warpgroup_mma_wait(0, deps=(o, pm, pr))
    return o, pr


@gluon.jit
def schedule_fence(p: Pipeline, kv: Ring):
    """Keep the softmax ahead of the wait for PV in the final schedule.

    Inside one basic block ptxas places `wgmma.wait_group` as early as it can,
    i.e. before the softmax it is meant to overlap. Re-waiting on V's `ready`
    barrier of the block PV is reading (already complete, so it returns at
    once) puts a try-wait loop, hence a block boundary, between the two.
    """
    mbarrier.wait(p.v_ready.index(kv.index), kv.phase)


@gluon.jit
def block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scales, BLOCK_N: gl.constexpr,
                 CAUSAL: gl.constexpr):
    """Masked S of the i-th visited key block and its per-row score scale (FP8: times the block's K scale)."""
    key0 = kv_block_start(n_blocks, i, BLOCK_N)
    if block_needs_mask(key0, row0, seqlen_q, seqlen_k, BLOCK_N, CAUSAL):
        s = mask_scores(s, key0, row0, seqlen_q, seqlen_k, CAUSAL)
    if k_scales is not None:
        row_scale = row_scale * gl.load(k_scales + key0 // BLOCK_N)
    return s, row_scale


@gluon.jit
def v_rescale(alpha, i, n_blocks, v_unit, v_scales, BLOCK_N: gl.constexpr):
    """Row factor that moves O to the i-th block's units: alpha, and for FP8 the ratio of V block scales.

    FP8 keeps O in units of the latest V block scale (so P and V stay unscaled
    fp8 operands); returns (factor, new unit).
    """
    if v_scales is not None:
        v_new = gl.load(v_scales + kv_block_start(n_blocks, i, BLOCK_N) // BLOCK_N)
        alpha = alpha * (v_unit / v_new)
        v_unit = v_new
    return alpha, v_unit


@gluon.jit
def attend_tile(p: Pipeline, q, kv: Ring, turn_phase, n_blocks, row0, batch, head_kv, seqlen_q, seqlen_k, row_scale,
                k_scales, v_scales, CID: gl.constexpr, CAUSAL: gl.constexpr, INLINE_LOADS: gl.constexpr,
                OVERLAP: gl.constexpr, PINGPONG: gl.constexpr):
    """Unnormalized O, scaled row max and row sum of q's rows over the tile's n_blocks key blocks.

    row_scale: per-row factor from S to the base-2 softmax domain. k_scales /
    v_scales: this (batch, kv head)'s FP8 block scales, None for 16-bit inputs.
    Returns (o, m, l, v_unit, kv, turn_phase): O is in units of v_unit (1 for
    16-bit), the ring and turn are advanced past this tile.
    """
    ROWS: gl.constexpr = q.shape[0]
    HEAD_DIM: gl.constexpr = q.shape[1]
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    dtype: gl.constexpr = p.q_desc.dtype
    P_OFFSET: gl.constexpr = p_log2_offset(dtype)
    NW: gl.constexpr = gl.num_warps()
    s_layout: gl.constexpr = wgmma_layout(NW, BLOCK_N, dtype)
    o_layout: gl.constexpr = wgmma_layout(NW, HEAD_DIM, dtype)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=32 // dtype.primitive_bitwidth)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)

    m = gl.full([ROWS], -float("inf"), gl.float32, s_rows)
    l = gl.zeros([ROWS], gl.float32, s_rows)
    o = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    v_unit = gl.to_tensor(1.0)

    if OVERLAP:
        if n_blocks > 0:
            # Peeled first block: nothing to overlap its softmax with yet.
            mbarrier.wait(p.k_ready.index(kv.index), kv.phase)
            s = warpgroup_mma(q, key_block(p, kv), s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s, ))
            s, c = block_scores(s, 0, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scales, BLOCK_N, CAUSAL)
            pr, m, l, alpha = softmax_update(s, m, l, c, P_OFFSET)
            _, v_unit = v_rescale(alpha, 0, n_blocks, v_unit, v_scales, BLOCK_N)
            pm = gl.convert_layout(pr.to(dtype), p_layout)
            for i in range(1, n_blocks):
                kv_next = kv.next()
                mbarrier.wait(p.k_ready.index(kv_next.index), kv_next.phase)
                turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
                s = warpgroup_mma(q, key_block(p, kv_next), s_zero, use_acc=False, is_async=True)
                mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
                o = warpgroup_mma(pm, value_block(p, kv), o, is_async=True)
                pass_turn(p, CID, PINGPONG)
                s = warpgroup_mma_wait(1, deps=(s, ))
                s, c = block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scales, BLOCK_N, CAUSAL)
                pr, m, l, alpha = softmax_update(s, m, l, c, P_OFFSET)
                alpha, v_unit = v_rescale(alpha, i, n_blocks, v_unit, v_scales, BLOCK_N)
                schedule_fence(p, kv)
                o, pr = wait_pv(o, pm, pr)
                release_stage(p, kv, i - 1, True, n_blocks, batch, head_kv, INLINE_LOADS)
                o = o * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
                pm = gl.convert_layout(pr.to(dtype), p_layout)
                kv = kv_next
            mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
            o = warpgroup_mma(pm, value_block(p, kv), o, is_async=True)
            o, pr = wait_pv(o, pm, pr)
            release_stage(p, kv, n_blocks - 1, True, n_blocks, batch, head_kv, INLINE_LOADS)
            kv = kv.next()
    else:
        for i in range(n_blocks):
            mbarrier.wait(p.k_ready.index(kv.index), kv.phase)
            turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
            s = warpgroup_mma(q, key_block(p, kv), s_zero, use_acc=False, is_async=True)
            pass_turn(p, CID, PINGPONG)
            s = warpgroup_mma_wait(0, deps=(s, ))
            s, c = block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scales, BLOCK_N, CAUSAL)
            pr, m, l, alpha = softmax_update(s, m, l, c, P_OFFSET)
            alpha, v_unit = v_rescale(alpha, i, n_blocks, v_unit, v_scales, BLOCK_N)
            o = o * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
            pm = gl.convert_layout(pr.to(dtype), p_layout)
            mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
            turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
            o = warpgroup_mma(pm, value_block(p, kv), o, is_async=True)
            pass_turn(p, CID, PINGPONG)
            o, pr = wait_pv(o, pm, pr)
            release_stage(p, kv, i, True, n_blocks, batch, head_kv, INLINE_LOADS)
            kv = kv.next()
    return o, m, l, v_unit, kv, turn_phase
