"""Consumer mainloop of the Hopper forward: one warpgroup's rows of one tile against all its key blocks.

S = Q K^T runs as an SS wgmma (both operands in shared memory; with Q_IN_REGISTERS
an RS wgmma on Q loaded into registers once a tile, at hd256 on its first half
followed by an SS wgmma on the other, kernel.py and qk_mma); P = softmax
numerators go to registers as bf16/fp16/fp8 and O += P V runs as an RS wgmma (A
from registers), so P never touches shared memory.

With OVERLAP (FA3's intra-warpgroup pipelining) each step issues QK^T of block
i and PV of block i-1 back to back, then does the softmax of block i while PV
is still on the tensor cores. With PINGPONG the consumer warpgroups take turns
issuing their GEMMs, in order (on FA3's named hardware barriers with
NAMED_TURN, else one mbarrier per consumer), so one warpgroup's softmax runs
under the others' GEMMs.

With INLINE_LOADS (warp specialization off) the consumer issues the TMA loads
itself: a released ring slot is refilled at once with the block STAGES ahead.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from kernels.quant import WGMMA_KEY_GROUP

from .pipeline import Pipeline, Ring, kv_block_start
from .softmax import (block_needs_mask, causal_full_blocks, mask_scores, p_log2_offset, row_sum_init, softmax_update,
                      total_row_sum)


@gluon.constexpr_function
def wgmma_layout(num_warps, n, dtype):
    """Accumulator layout of a [16 * num_warps, n] wgmma tile: warps stacked along M, one instruction spans n."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                     instr_shape=[16, n, 256 // dtype.primitive_bitwidth])


@gluon.constexpr_function
def a_operand_layout(acc_layout, dtype):
    """Register layout of a wgmma A operand taken from registers (32-bit registers of 16- or 8-bit values), for the
    accumulator layout acc_layout: P for O += P V, Q for S = Q K^T with TileConfig.q_in_registers."""
    return gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=32 // dtype.primitive_bitwidth)


# Named hardware barriers of the NAMED_TURN ping-pong: consumer c waits on TURN_BARRIER0 + c. Triton's own
# warpgroup bar.syncs take IDs 0 to NUM_CONSUMERS; 16 exist.
TURN_BARRIER0 = 8
WARPGROUP_THREADS = 128
# FP8 P's columns are permuted inside groups of this many keys when V^T's keys are in wgmma order (p_operand).
P_KEY_GROUP = gl.constexpr(WGMMA_KEY_GROUP)


@gluon.constexpr_function
def turn_asm(op, consumer):
    """PTX of one named-barrier turn step: two warpgroups meet on a barrier, the waiting one and the passing one."""
    return f"{op} {TURN_BARRIER0 + consumer}, {2 * WARPGROUP_THREADS}; mov.b32 $0, 0;"


@gluon.jit
def named_turn(op: gl.constexpr, consumer: gl.constexpr):
    # Inline asm with side effects: kept in order with the wgmma asm around it, invisible to Gluon's barrier
    # insertion (an mbarrier arrive gets a warpgroup bar.sync before it).
    gl.inline_asm_elementwise(turn_asm(op, consumer), "=r,r", [gl.to_tensor(0)], dtype=gl.int32, is_pure=False,
                              pack=1)


@gluon.jit
def first_turn(p: Pipeline, CID: gl.constexpr, PINGPONG: gl.constexpr):
    """Before the first tile: with NAMED_TURN the last consumer passes the turn to consumer 0 (with mbarriers,
    consumer 0's first wait is on the already-completed phase)."""
    if PINGPONG and p.NAMED_TURN and CID == p.NUM_CONSUMERS - 1:
        named_turn("bar.arrive", 0)


@gluon.jit
def take_turn(p: Pipeline, turn_phase, CID: gl.constexpr, PINGPONG: gl.constexpr):
    """Wait until this consumer may issue its GEMMs; returns the next turn parity."""
    if PINGPONG:
        if p.NAMED_TURN:
            named_turn("bar.sync", CID)
        else:
            mbarrier.wait(p.turn[CID], turn_phase)
            turn_phase ^= 1
    return turn_phase


@gluon.jit
def pass_turn(p: Pipeline, CID: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        if p.NAMED_TURN:
            named_turn("bar.arrive", (CID + 1) % p.NUM_CONSUMERS)
        else:
            p.release(p.turn[(CID + 1) % p.NUM_CONSUMERS])


@gluon.jit
def release_k(p: Pipeline, kv: Ring):
    """QK^T of the block in slot kv is complete: with SPLIT_KV its K slot goes back to the producer now."""
    if p.SPLIT_KV:
        p.release(p.k_empty.index(kv.index))


@gluon.jit
def release_v(p: Pipeline, kv: Ring, i_done, n_blocks, batch, head_kv, INLINE_LOADS: gl.constexpr):
    """PV of block i_done (in slot kv) is complete: its V slot goes back (and its K slot, unless SPLIT_KV), to the
    producer, or (no producer) both are refilled at once with block i_done + STAGES."""
    if INLINE_LOADS:
        i_next = i_done + p.STAGES
        if i_next < n_blocks:
            key0 = kv_block_start(n_blocks, i_next, p.k_desc.block_type.shape[1])
            p.load_k(kv.index, batch, head_kv, key0)
            p.load_v(kv.index, batch, head_kv, key0)
    else:
        p.release(p.v_empty.index(kv.index))


@gluon.jit
def prefetch_tile(p: Pipeline, kv: Ring, q_slot: Ring, n_blocks, batch, head, head_kv, row0):
    """No producer: issue Q and the first STAGES key blocks of a tile before consuming it."""
    p.load_q(0, q_slot, batch, head, row0)
    slot = kv
    for i in range(gl.minimum(n_blocks, p.STAGES)):
        key0 = kv_block_start(n_blocks, i, p.k_desc.block_type.shape[1])
        p.load_k(slot.index, batch, head_kv, key0)
        p.load_v(slot.index, batch, head_kv, key0)
        slot = slot.next()


@gluon.jit
def qk_mma(q, q_rest, k_t, s_zero):
    """S = Q K^T, issued async. q: Q in shared memory or registers; q_rest: None, or Q's last columns in shared
    memory (q then holds the first ones in registers), whose products are accumulated after q's, in the order one
    wgmma over all of Q would take them."""
    if q_rest is None:
        return warpgroup_mma(q, k_t, s_zero, use_acc=False, is_async=True)
    else:
        COLS: gl.constexpr = q.shape[1]
        s = warpgroup_mma(q, k_t.slice(0, COLS, dim=0), s_zero, use_acc=False, is_async=True)
        return warpgroup_mma(q_rest, k_t.slice(COLS, k_t.shape[0] - COLS, dim=0), s, is_async=True)


@gluon.jit
def key_block(p: Pipeline, kv: Ring):
    """K^T view of slot kv, [HEAD_DIM, BLOCK_N], for the B operand of QK^T."""
    shape: gl.constexpr = p.k_desc.block_type.shape
    return p.k_smem.index(kv.index).reshape([shape[1], shape[3]]).permute((1, 0))


@gluon.jit
def value_block(p: Pipeline, kv: Ring, HALF: gl.constexpr = False):
    """V view of slot kv, [BLOCK_N, HEAD_DIM], for the B operand of PV (FP8: a K-major view of V^T); HALF: its first
    BLOCK_N / 2 keys (16-bit)."""
    shape: gl.constexpr = p.v_desc.block_type.shape
    if p.V_TRANSPOSED:
        return p.v_smem.index(kv.index).reshape([shape[2], shape[3]]).permute((1, 0))
    elif HALF:
        return p.v_smem.index(kv.index).reshape([shape[1], shape[3]]).slice(0, shape[1] // 2, dim=0)
    else:
        return p.v_smem.index(kv.index).reshape([shape[1], shape[3]])


@gluon.jit
def wait_pv(o, pm, pr):
    """Wait for O += P V; returns (O, pr).

    Passing the in-flight P operand `pm` through the wait keeps its registers
    alive until the wgmma has read them (Triton cannot carry 8-bit values
    through the wait, so FP8 P relies on ptxas's own wgmma hazard checks).
    Passing the next block's fp32 P `pr` through it pins its conversion to
    16 bits after the wait: hoisted above, the new P would need the old P's
    registers while the wgmma still reads them, and ptxas serializes wgmma
    (FP8 P is converted in the next iteration anyway, see carried_p).
    """
    if pm.dtype.is_fp8():
        o, pr = warpgroup_mma_wait(0, deps=(o, pr))
    else:
        o, pm, pr = warpgroup_mma_wait(0, deps=(o, pm, pr))
    return o, pr


@gluon.jit
def p_operand(p, dtype: gl.constexpr, layout: gl.constexpr, V_WGMMA_KEYS: gl.constexpr):
    """P as the A operand of PV: cast to the MMA dtype in the A-operand register layout (a no-op if it is already).

    FP8 with V_WGMMA_KEYS: V^T's keys are stored in wgmma order, position 16a + 4t + 2h + b holding key
    16a + 8h + 2t + b (kernels.quant.to_wgmma_key_order), so P's columns are permuted the same way; the
    accumulator's registers then already sit where the 8-bit A operand (k_width 4) wants them, and the
    conversion is checked at compile time to move no data. Otherwise FP8 takes 16 SHFL + SEL/PRMT per 64 values
    (FA3's scheme).
    """
    if p.dtype == dtype:
        return p
    elif V_WGMMA_KEYS:
        ROWS: gl.constexpr = p.shape[0]
        N: gl.constexpr = p.shape[1]
        # column 16a + 8h + 2t + b = index (a, h, t, b) -> (a, t, h, b) = column 16a + 4t + 2h + b
        p8 = p.to(dtype).reshape([ROWS, N // P_KEY_GROUP, 2, 4, 2]).permute((0, 1, 3, 2, 4)).reshape([ROWS, N])
        return gl.convert_layout(p8, layout, assert_trivial=True)
    else:
        return gl.convert_layout(p.to(dtype), layout)


@gluon.jit
def carried_p(pr, dtype: gl.constexpr, layout: gl.constexpr, V_WGMMA_KEYS: gl.constexpr, F32: gl.constexpr = False):
    """What the loop carries from one block's softmax to its PV in the next iteration.

    16-bit P is converted at once (unless F32). FP8 P stays fp32 and is converted after
    the back edge: an 8-bit tensor carried by the loop is kept one byte per
    register and re-packed at the top of every iteration (about 170 extra
    PRMT/LOP3 per thread per block in SASS).
    """
    if dtype.is_fp8() or F32:
        return pr
    else:
        return p_operand(pr, dtype, layout, V_WGMMA_KEYS)


@gluon.jit
def schedule_fence(p: Pipeline, l):
    """Keep the softmax ahead of the wait for PV in the final schedule; returns l unchanged.

    Inside one basic block ptxas places `wgmma.wait_group` as early as it can,
    i.e. before the softmax it is meant to overlap; a block boundary after the
    softmax stops it. BRANCH_FENCE: a branch on the new row sum l, a loop that
    would step a negative l up to 0 (ptxas cannot prove that it never runs;
    l >= 0, so it never does). Otherwise: a wait on the fence barrier, which
    nobody arrives on, for the parity of the phase before its first, which
    counts as complete (it returns at once); its try-wait loop is the
    boundary. Its own allocation spares it the bar.sync that a second wait on
    the V `ready` barriers would get.
    """
    if p.BRANCH_FENCE:
        return gl.inline_asm_elementwise(
            "{ .reg .pred neg; mov.b32 $0, $1; sm_fence: setp.lt.f32 neg, $0, 0f00000000; "
            "@neg add.f32 $0, $0, 0f3F800000; @neg bra.uni sm_fence; }", "=r,r", [l], dtype=gl.float32,
            is_pure=False, pack=1)
    else:
        mbarrier.wait(p.fence, 1)
        return l


@gluon.jit
def fp8_block_scales(i, n_blocks, k_scales, v_scales, BLOCK_N: gl.constexpr, KV_SCALE_BLOCK: gl.constexpr):
    """The i-th visited key block's K and V scales (FP8; a scale block holds one or more key blocks), loaded
    before the block's GEMMs so that their latency hides under them; unused ones for 16-bit inputs."""
    if k_scales is not None:
        block = kv_block_start(n_blocks, i, BLOCK_N) // KV_SCALE_BLOCK
        return gl.load(k_scales + block), gl.load(v_scales + block)
    else:
        return gl.to_tensor(1.0), gl.to_tensor(1.0)


@gluon.jit
def block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scale, BLOCK_N: gl.constexpr,
                 CAUSAL: gl.constexpr, FP8: gl.constexpr, MAY_MASK: gl.constexpr = True, ROW_BOUND: gl.constexpr = False):
    """Masked S of the i-th visited key block and its per-row score scale (FP8: times the block's K scale).
    MAY_MASK False: the caller knows the block needs no mask. ROW_BOUND: softmax.mask_scores."""
    key0 = kv_block_start(n_blocks, i, BLOCK_N)
    if MAY_MASK and block_needs_mask(key0, row0, seqlen_q, seqlen_k, BLOCK_N, CAUSAL):
        s = mask_scores(s, key0, row0, seqlen_q, seqlen_k, CAUSAL, ROW_BOUND)
    if FP8:
        row_scale = row_scale * k_scale
    return s, row_scale


@gluon.jit
def approx_reciprocal(x):
    """1/x by rcp.approx.ftz.f32: one MUFU.RCP, within 1 ulp, but a subnormal x (a V block with amax below
    5e-36) gives inf. `/` compiles to div.full.f32, a dozen more instructions of range checks and rescales;
    rcp.approx.f32 without ftz keeps half of them."""
    return gl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def v_rescale(alpha, v_unit, v_scale, FP8: gl.constexpr, FAST_V_RATIO: gl.constexpr = False):
    """Row factor that moves O to the current block's units: alpha, and for FP8 the ratio of V block scales.

    FP8 keeps O in units of the latest V block scale (so P and V stay unscaled
    fp8 operands); returns (factor, new unit).
    """
    if FP8:
        if FAST_V_RATIO:
            alpha = alpha * (v_unit * approx_reciprocal(v_scale))
        else:
            alpha = alpha * (v_unit / v_scale)
        v_unit = v_scale
    return alpha, v_unit


@gluon.constexpr_function
def rescale_asm(n):
    """PTX for n O registers of one thread: multiply each by its alpha unless the thread's flag is 0 (a branch
    round the multiplies). Operands: n outputs tied to the n O inputs, then n alphas, then n flags (all equal)."""
    muls = " ".join(f"mul.f32 ${i}, ${i}, ${2 * n + i};" for i in range(n))
    return f"{{ .reg .pred keep; setp.eq.s32 keep, ${3 * n}, 0; @keep bra done; {muls} done: }}"


@gluon.constexpr_function
def rescale_constraints(n):
    return ",".join(["=r"] * n + [str(i) for i in range(n)] + ["r"] * (2 * n))


@gluon.jit
def rescale_o(o, alpha, LAZY: gl.constexpr):
    """O times alpha per row. LAZY: a thread whose rows all kept their max (alpha exactly 1) skips its multiplies;
    the flag is reduced over the thread's own rows only (wgmma rows 16w + 8h + lane/4: h in registers)."""
    o_layout: gl.constexpr = o.type.layout
    a = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    if LAZY:
        ROWS: gl.constexpr = o.shape[0]
        moved = (a != 1.0).to(gl.int32)
        per_thread = gl.max(moved.reshape([ROWS // 16, 2, 8]), axis=1)
        flag = gl.convert_layout(gl.expand_dims(per_thread, 1).broadcast_to([ROWS // 16, 2, 8]).reshape([ROWS]),
                                 a.type.layout, assert_trivial=True)
        a2 = gl.expand_dims(a, 1).broadcast_to(o.shape)
        f2 = gl.expand_dims(flag, 1).broadcast_to(o.shape)
        # One asm block, so one branch, per thread (a thread holds ROWS * HEAD_DIM / 128 of O), at most 64 registers.
        PACK: gl.constexpr = min(64, ROWS * o.shape[1] // (32 * gl.num_warps()))
        return gl.inline_asm_elementwise(rescale_asm(PACK), rescale_constraints(PACK), [o, a2, f2], dtype=gl.float32,
                                         is_pure=True, pack=PACK)
    else:
        return o * gl.expand_dims(a, 1)


@gluon.jit
def attend_tile(p: Pipeline, q, q_rest, kv: Ring, turn_phase, n_blocks, row0, batch, head_kv, seqlen_q, seqlen_k,
                row_scale, k_scales, v_scales, KV_SCALE_BLOCK: gl.constexpr, CID: gl.constexpr, CAUSAL: gl.constexpr,
                INLINE_LOADS: gl.constexpr, OVERLAP: gl.constexpr, PINGPONG: gl.constexpr):
    """Unnormalized O, scaled row max and row sum of q's rows over the tile's n_blocks key blocks.

    q: the consumer's Q rows in shared memory or registers; q_rest: None, or their last columns in shared memory
    (qk_mma). row_scale: per-row factor from S to the base-2 softmax domain. k_scales /
    v_scales: this (batch, kv head)'s FP8 block scales (one per KV_SCALE_BLOCK
    keys), None for 16-bit inputs.
    Returns (o, m, l, v_unit, kv, turn_phase): O is in units of v_unit (1 for
    16-bit), the ring and turn are advanced past this tile.
    """
    ROWS: gl.constexpr = q.shape[0]
    HEAD_DIM: gl.constexpr = p.q_desc.block_type.shape[3]
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    dtype: gl.constexpr = p.q_desc.dtype
    NW: gl.constexpr = gl.num_warps()
    s_layout: gl.constexpr = wgmma_layout(NW, BLOCK_N, dtype)
    o_layout: gl.constexpr = wgmma_layout(NW, HEAD_DIM, dtype)
    p_layout: gl.constexpr = a_operand_layout(o_layout, dtype)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)

    m = gl.full([ROWS], -float("inf"), gl.float32, s_rows)
    l = row_sum_init(ROWS, BLOCK_N, s_layout, p.THREAD_ROW_SUM)
    o = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    # Non-causal blocks are visited from the last one down, so only the first (peeled when OVERLAP) can reach
    # past seqlen_k, and every row has a finite max after it.
    LOOP_MASK: gl.constexpr = CAUSAL or not p.UNMASKED_LOOP
    # Causal with CAUSAL_UNMASKED_LOOP (FA3's order): the blocks visited first cross the diagonal and loop with the
    # mask test, those below it (visited last) in a second loop without; 16-bit P then crosses the back edge in
    # fp32, as FP8's does (carried_p: carried as bf16 from one loop into the other, ptxas swapped its halves with
    # 32-64 PRMT per block).
    SPLIT_MASK: gl.constexpr = CAUSAL and p.CAUSAL_UNMASKED_LOOP
    if SPLIT_MASK:
        mask_end = gl.maximum(n_blocks - causal_full_blocks(n_blocks, row0, seqlen_q, seqlen_k, BLOCK_N), 1)
    else:
        mask_end = n_blocks
    v_unit = gl.to_tensor(1.0)

    if OVERLAP:
        if n_blocks > 0:
            if p.HALF_DIAGONAL and CAUSAL and CID == 0 and BLOCK_N == 2 * ROWS:
                # The diagonal block on its first 64 keys, then block 1 with a 64-key PV of it; the rest as below.
                pr, m, l, alpha, v_unit = half_diagonal_block(p, q, q_rest, kv, n_blocks, row0, seqlen_q, seqlen_k,
                                                              row_scale, k_scales, v_scales, KV_SCALE_BLOCK, s_rows)
                ph = carried_p(pr, dtype, p_layout, p.V_WGMMA_KEYS, SPLIT_MASK)
                if n_blocks > 1:
                    # Block 1 lies below the diagonal for every row of this consumer (row0 is the block's key0).
                    o, pc1, pr1, m, l, alpha1, v_unit, kv, turn_phase = overlapped_block(
                        p, q, q_rest, kv, turn_phase, 1, n_blocks, o, ph, m, l, alpha, v_unit, s_zero, row0, batch,
                        head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL,
                        INLINE_LOADS, PINGPONG, LOOP_MASK and not SPLIT_MASK, True, HALF_PV=True)
                    # P enters the loop in fp32 (carried as bf16 from outside, ptxas swapped its halves with 32 PRMT
                    # a block in the hd128 loop).
                    o, m, l, v_unit, kv, turn_phase = overlapped_tail(
                        p, q, q_rest, kv, turn_phase, 2, gl.maximum(mask_end, 2), n_blocks, o, pc1, pr1, m, l, alpha1,
                        v_unit, s_zero, row0, batch, head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales,
                        KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS, PINGPONG, LOOP_MASK, SPLIT_MASK, True)
                else:
                    o, kv = last_pv(p, kv, n_blocks, o, ph, pr, alpha, batch, head_kv, INLINE_LOADS, HALF_PV=True)
            else:
                first = 0
                if p.HALF_DIAGONAL and CAUSAL and CID == 0:
                    # 64-key blocks: the first visited one goes back unread where it lies wholly above these rows
                    # (every full tile when seqlen_q == seqlen_k).
                    skip = (n_blocks > 1) & (kv_block_start(n_blocks, 0, BLOCK_N) >= row0 + ROWS + seqlen_k - seqlen_q)
                    if skip:
                        kv, turn_phase = skip_block(p, kv, turn_phase, n_blocks, batch, head_kv, CID, PINGPONG)
                    first = skip.to(gl.int32)
                    mask_end = gl.maximum(mask_end, first + 1)
                pr, m, l, alpha, v_unit = first_block(p, q, q_rest, kv, first, s_zero, m, l, n_blocks, row0, seqlen_q,
                                                      seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CAUSAL)
                pc = carried_p(pr, dtype, p_layout, p.V_WGMMA_KEYS, SPLIT_MASK)
                o, m, l, v_unit, kv, turn_phase = overlapped_tail(
                    p, q, q_rest, kv, turn_phase, first + 1, mask_end, n_blocks, o, pc, pr, m, l, alpha, v_unit,
                    s_zero, row0, batch, head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK,
                    CID, CAUSAL, INLINE_LOADS, PINGPONG, LOOP_MASK, SPLIT_MASK)
    else:
        if n_blocks > 0:  # the first visited block may need the mask even where the rest do not (LOOP_MASK)
            o, m, l, v_unit, kv, turn_phase = plain_block(
                p, q, q_rest, kv, turn_phase, 0, n_blocks, o, m, l, v_unit, s_zero, row0, batch, head_kv, seqlen_q,
                seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS, PINGPONG, True)
        for i in range(1, mask_end):
            o, m, l, v_unit, kv, turn_phase = plain_block(
                p, q, q_rest, kv, turn_phase, i, n_blocks, o, m, l, v_unit, s_zero, row0, batch, head_kv, seqlen_q,
                seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS, PINGPONG, LOOP_MASK)
        if SPLIT_MASK:
            for i in range(mask_end, n_blocks):
                o, m, l, v_unit, kv, turn_phase = plain_block(
                    p, q, q_rest, kv, turn_phase, i, n_blocks, o, m, l, v_unit, s_zero, row0, batch, head_kv, seqlen_q,
                    seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS, PINGPONG, False)
    return o, m, total_row_sum(l, s_rows), v_unit, kv, turn_phase


@gluon.jit
def overlapped_tail(p: Pipeline, q, q_rest, kv: Ring, turn_phase, first, mask_end, n_blocks, o, pc, pr, m, l, alpha,
                    v_unit, s_zero, row0, batch, head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales,
                    KV_SCALE_BLOCK: gl.constexpr, CID: gl.constexpr, CAUSAL: gl.constexpr, INLINE_LOADS: gl.constexpr,
                    PINGPONG: gl.constexpr, LOOP_MASK: gl.constexpr, SPLIT_MASK: gl.constexpr,
                    CARRY_F32: gl.constexpr = False):
    """Blocks first.. of the overlapped loop (those before mask_end, at least first, with the mask test where
    LOOP_MASK, the rest without it where SPLIT_MASK), then the last block's PV; pc / pr: block first - 1's P.
    CARRY_F32: 16-bit P crosses the first loop's back edge in fp32 (as it does the second's; carried_p)."""
    # With RESCALE_UNDER_S, O's rescale by block i - 1's alpha waits for block i's QK^T issue (the peeled block's
    # alpha meets O = 0).
    for i in range(first, mask_end):
        o, pc, pr, m, l, alpha, v_unit, kv, turn_phase = overlapped_block(
            p, q, q_rest, kv, turn_phase, i, n_blocks, o, pc, m, l, alpha, v_unit, s_zero, row0, batch, head_kv,
            seqlen_q, seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS, PINGPONG,
            LOOP_MASK, SPLIT_MASK or CARRY_F32)
    if SPLIT_MASK:
        for i in range(mask_end, n_blocks):
            o, pc, pr, m, l, alpha, v_unit, kv, turn_phase = overlapped_block(
                p, q, q_rest, kv, turn_phase, i, n_blocks, o, pc, m, l, alpha, v_unit, s_zero, row0, batch, head_kv,
                seqlen_q, seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK, CID, CAUSAL, INLINE_LOADS,
                PINGPONG, False, True)
    o, kv = last_pv(p, kv, n_blocks, o, pc, pr, alpha, batch, head_kv, INLINE_LOADS)
    return o, m, l, v_unit, kv, turn_phase


@gluon.jit
def last_pv(p: Pipeline, kv: Ring, n_blocks, o, pc, pr, alpha, batch, head_kv, INLINE_LOADS: gl.constexpr,
            HALF_PV: gl.constexpr = False):
    """The overlapped loop's end: PV of the tile's last block (P carried as pc; HALF_PV: over its first half of
    keys, half_diagonal_block); returns (O, the ring past the block)."""
    dtype: gl.constexpr = p.q_desc.dtype
    p_layout: gl.constexpr = a_operand_layout(o.type.layout, dtype)
    if p.O_IN_K:
        p.release(p.k_done)  # this consumer's QK^T of the last block is complete
    pm = p_operand(pc, dtype, p_layout, p.V_WGMMA_KEYS)
    if p.RESCALE_UNDER_S:
        o = rescale_o(o, alpha, p.LAZY_RESCALE)
    mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
    o = warpgroup_mma(pm, value_block(p, kv, HALF_PV), o, is_async=True)
    o, pr = wait_pv(o, pm, pr)
    if not p.O_IN_K:  # else the slot goes back once O's store has read its K buffer (kernel.py)
        release_v(p, kv, n_blocks - 1, n_blocks, batch, head_kv, INLINE_LOADS)
    return o, kv.next()


@gluon.jit
def skip_block(p: Pipeline, kv: Ring, turn_phase, n_blocks, batch, head_kv, CID: gl.constexpr,
               PINGPONG: gl.constexpr):
    """Hand back unread the block in slot kv, which lies wholly above this consumer's rows, and take and pass its turn
    so that the consumers' turns stay paired; returns (the ring past it, the turn parity)."""
    # Once the loads have landed, the producer has passed its waits for this block's slots, so these releases count
    # for this block and not the slot's last one (which the other consumer may still be reading).
    mbarrier.wait(p.k_ready.index(kv.index), kv.phase)
    release_k(p, kv)
    mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
    release_v(p, kv, 0, n_blocks, batch, head_kv, False)
    turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
    pass_turn(p, CID, PINGPONG)
    return kv.next(), turn_phase


@gluon.jit
def first_block(p: Pipeline, q, q_rest, kv: Ring, i, s_zero, m, l, n_blocks, row0, seqlen_q, seqlen_k, row_scale,
                k_scales, v_scales, KV_SCALE_BLOCK: gl.constexpr, CAUSAL: gl.constexpr, HALF: gl.constexpr = False):
    """The overlapped loop's peeled first block (visited block i, in slot kv), with nothing to overlap its softmax
    with yet: QK^T (HALF: over the block's first half of keys, s_zero as wide), its scores and the first
    online-softmax step from m, l; returns (P in fp32, m, l, alpha, v_unit)."""
    dtype: gl.constexpr = p.q_desc.dtype
    FP8: gl.constexpr = dtype.is_fp8()
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    k_scale, v_scale = fp8_block_scales(i, n_blocks, k_scales, v_scales, BLOCK_N, KV_SCALE_BLOCK)
    mbarrier.wait(p.k_ready.index(kv.index), kv.phase)
    keys = key_block(p, kv)
    if HALF:
        keys = keys.slice(0, BLOCK_N // 2, dim=1)
    s = qk_mma(q, q_rest, keys, s_zero)
    s = warpgroup_mma_wait(0, deps=(s, ))
    release_k(p, kv)
    s, c = block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scale, BLOCK_N, CAUSAL, FP8,
                        ROW_BOUND=p.ROW_BOUND_MASK)
    pr, m, l, alpha = softmax_update(s, m, l, c, p_log2_offset(dtype), LAZY=p.LAZY_RESCALE)
    _, v_unit = v_rescale(alpha, gl.to_tensor(1.0), v_scale, FP8)
    return pr, m, l, alpha, v_unit


@gluon.jit
def half_diagonal_block(p: Pipeline, q, q_rest, kv: Ring, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scales,
                        v_scales, KV_SCALE_BLOCK: gl.constexpr, s_rows: gl.constexpr):
    """Consumer 0's first visited block under HALF_DIAGONAL: the tile's diagonal block, whose key0 is row0, so these
    64 rows see only its first 64 keys. first_block on those (m64n64), masked; returns its P [rows, 64] and (m, l,
    alpha, v_unit) with m and l in the 128-key tiles' layouts."""
    ROWS: gl.constexpr = row_scale.shape[0]
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    HALF: gl.constexpr = BLOCK_N // 2
    dtype: gl.constexpr = p.q_desc.dtype
    h_layout: gl.constexpr = wgmma_layout(gl.num_warps(), HALF, dtype)
    h_rows: gl.constexpr = gl.SliceLayout(1, h_layout)
    if not isinstance(q, gl.shared_memory_descriptor):
        q = gl.convert_layout(q, a_operand_layout(h_layout, dtype), assert_trivial=True)
    pr, m, l, alpha, v_unit = first_block(p, q, q_rest, kv, 0, gl.zeros([ROWS, HALF], gl.float32, h_layout),
                                          gl.full([ROWS], -float("inf"), gl.float32, h_rows),
                                          row_sum_init(ROWS, HALF, h_layout, p.THREAD_ROW_SUM), n_blocks, row0,
                                          seqlen_q, seqlen_k, gl.convert_layout(row_scale, h_rows, assert_trivial=True),
                                          k_scales, v_scales, KV_SCALE_BLOCK, True, HALF=True)
    l_128 = row_sum_init(ROWS, BLOCK_N, wgmma_layout(gl.num_warps(), BLOCK_N, dtype), p.THREAD_ROW_SUM)
    return (pr, gl.convert_layout(m, s_rows, assert_trivial=True),
            gl.convert_layout(l, l_128.type.layout, assert_trivial=True), alpha, v_unit)


@gluon.jit
def block_softmax(p: Pipeline, s, i, n_blocks, m, l, v_unit, row0, seqlen_q, seqlen_k, row_scale, k_scale, v_scale,
                  CAUSAL: gl.constexpr, MAY_MASK: gl.constexpr):
    """The online softmax of loop block i's scores s: (P in fp32, m, l, O's rescale factor, O's new unit)."""
    dtype: gl.constexpr = p.q_desc.dtype
    FP8: gl.constexpr = dtype.is_fp8()
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    s, c = block_scores(s, i, n_blocks, row0, seqlen_q, seqlen_k, row_scale, k_scale, BLOCK_N, CAUSAL, FP8, MAY_MASK,
                        p.ROW_BOUND_MASK)
    pr, m, l, alpha = softmax_update(s, m, l, c, p_log2_offset(dtype), not MAY_MASK, p.LAZY_RESCALE)
    alpha, v_unit = v_rescale(alpha, v_unit, v_scale, FP8, p.FAST_V_RATIO)
    return pr, m, l, alpha, v_unit


@gluon.jit
def overlapped_block(p: Pipeline, q, q_rest, kv: Ring, turn_phase, i, n_blocks, o, pc, m, l, alpha, v_unit, s_zero,
                     row0, batch, head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales,
                     KV_SCALE_BLOCK: gl.constexpr, CID: gl.constexpr, CAUSAL: gl.constexpr, INLINE_LOADS: gl.constexpr,
                     PINGPONG: gl.constexpr, MAY_MASK: gl.constexpr, CARRY_F32: gl.constexpr = False,
                     HALF_PV: gl.constexpr = False):
    """Key block i of the overlapped loop: QK^T of block i and PV of block i - 1 (whose P is pc) back to back, then
    block i's softmax under that PV; returns block i's P as carried (pc) and as fp32 (pr, for the last wait_pv).
    MAY_MASK False: block i needs no mask and every row's max is finite. HALF_PV: block i - 1's P covers only the
    first half of its keys (half_diagonal_block)."""
    dtype: gl.constexpr = p.q_desc.dtype
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    p_layout: gl.constexpr = a_operand_layout(o.type.layout, dtype)
    kv_next = kv.next()
    pm = p_operand(pc, dtype, p_layout, p.V_WGMMA_KEYS)
    k_scale, v_scale = fp8_block_scales(i, n_blocks, k_scales, v_scales, BLOCK_N, KV_SCALE_BLOCK)
    mbarrier.wait(p.k_ready.index(kv_next.index), kv_next.phase)
    turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
    s = qk_mma(q, q_rest, key_block(p, kv_next), s_zero)
    if p.RESCALE_UNDER_S:
        o = rescale_o(o, alpha, p.LAZY_RESCALE)
    mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
    o = warpgroup_mma(pm, value_block(p, kv, HALF_PV), o, is_async=True)
    pass_turn(p, CID, PINGPONG)
    s = warpgroup_mma_wait(1, deps=(s, ))
    release_k(p, kv_next)
    pr, m, l, alpha, v_unit = block_softmax(p, s, i, n_blocks, m, l, v_unit, row0, seqlen_q, seqlen_k, row_scale,
                                            k_scale, v_scale, CAUSAL, MAY_MASK)
    l = schedule_fence(p, l)
    o, pr = wait_pv(o, pm, pr)
    release_v(p, kv, i - 1, n_blocks, batch, head_kv, INLINE_LOADS)
    if not p.RESCALE_UNDER_S:
        o = rescale_o(o, alpha, p.LAZY_RESCALE)
    pc = carried_p(pr, dtype, p_layout, p.V_WGMMA_KEYS, CARRY_F32)
    return o, pc, pr, m, l, alpha, v_unit, kv_next, turn_phase


@gluon.jit
def plain_block(p: Pipeline, q, q_rest, kv: Ring, turn_phase, i, n_blocks, o, m, l, v_unit, s_zero, row0, batch,
                head_kv, seqlen_q, seqlen_k, row_scale, k_scales, v_scales, KV_SCALE_BLOCK: gl.constexpr,
                CID: gl.constexpr, CAUSAL: gl.constexpr, INLINE_LOADS: gl.constexpr, PINGPONG: gl.constexpr,
                MAY_MASK: gl.constexpr):
    """One key block without intra-warpgroup overlap: QK^T, softmax, PV, each GEMM waited on at once (the other
    consumers' turns fill the gaps). MAY_MASK False: the block needs no mask and every row's max is finite."""
    dtype: gl.constexpr = p.q_desc.dtype
    BLOCK_N: gl.constexpr = p.k_desc.block_type.shape[1]
    o_layout: gl.constexpr = o.type.layout
    p_layout: gl.constexpr = a_operand_layout(o_layout, dtype)
    k_scale, v_scale = fp8_block_scales(i, n_blocks, k_scales, v_scales, BLOCK_N, KV_SCALE_BLOCK)
    mbarrier.wait(p.k_ready.index(kv.index), kv.phase)
    turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
    s = qk_mma(q, q_rest, key_block(p, kv), s_zero)
    pass_turn(p, CID, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s, ))
    release_k(p, kv)
    pr, m, l, alpha, v_unit = block_softmax(p, s, i, n_blocks, m, l, v_unit, row0, seqlen_q, seqlen_k, row_scale,
                                            k_scale, v_scale, CAUSAL, MAY_MASK)
    o = rescale_o(o, alpha, p.LAZY_RESCALE)
    pm = p_operand(pr, dtype, p_layout, p.V_WGMMA_KEYS)
    mbarrier.wait(p.v_ready.index(kv.index), kv.phase)
    turn_phase = take_turn(p, turn_phase, CID, PINGPONG)
    o = warpgroup_mma(pm, value_block(p, kv), o, is_async=True)
    pass_turn(p, CID, PINGPONG)
    o, pr = wait_pv(o, pm, pr)
    release_v(p, kv, i, n_blocks, batch, head_kv, INLINE_LOADS)
    return o, m, l, v_unit, kv.next(), turn_phase
