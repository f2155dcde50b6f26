"""Host side of the Hopper attention backward: checks, tiles, preprocess, launch, dQ conversion.

`attention_backward` has `kernels.ops.attention_backward`'s contract (the
Triton backward's signature) and runs three steps:

1. preprocess (the Triton backward's kernel): delta = rowsum(dO * O) and LSE
   in log2 units, padded with +inf to whole query blocks; the dQ accumulator zeroed;
2. the main kernel (bwd_kernel.py): dK, dV written once per key block, dQ
   added in float32 (atomics or TMA reduce-adds) into the
   (batch, seqlen_q, nheads, d) accumulator;
3. dQ = the accumulator cast to q's dtype (the softmax scale is already in it).

Atomic adds (the worker's, or the TMA's reduce-adds) make dQ's summation order vary between runs:
`deterministic=True` is refused here (the Triton backward is deterministic). `compile_backward` builds
a variant ahead of time for a GPU target (CPU compile test, no GPU needed).
"""
import functools
from dataclasses import dataclass

import torch
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.launch import Launcher, compile_for, rebased
from kernels.triton.bwd import (CAUSAL_SECTION_L2_BYTES, PREPROCESS_BLOCK_M, causal_section_heads, launch_preprocess,
                               preprocess_launch, program_grid)
from kernels.triton.fwd import set_descriptor_allocator

from .bwd_kernel import attention_bwd_kernel
from .forward import GL_DTYPES, HALF_DTYPES, HOPPER, LOG2_E, shared_layout


# Warp-specialized: 12 warps (8 MMA + 4 load/reduce) share 64K registers, 168 per thread at launch,
# moved by setmaxnreg to 240 (MMA) / 32 (worker) (kernels.gluon.bwd_kernel).
WS_MAXNREG = 168
# LSE2/delta boxes are read by plain shared-memory loads, not by wgmma: no swizzle.
STAT_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)


@dataclass(frozen=True)
class BwdTile:
    block_m: int  # query rows per step: 64 (the warpgroups split dQ_partial's head dim) or 128 (its rows)
    # Keys per program, on two MMA warpgroups of 4 warps: 128 (16 keys a warp) or 64 (hd256: the warpgroups split
    # the head dim of dK, dV and dQ_partial, and P^T reaches dV through shared memory).
    block_n: int
    stages: int  # Q/dO ring depth
    warp_specialize: bool = True  # a worker warpgroup issues the loads and the dQ atomics
    # Each MMA warpgroup its own partition with its own keys and dQ_partial: no barrier in common.
    split_warpgroups: bool = False
    # FA3's order of the last two products: dQ_partial first, then dK from dS^T in registers (RS, as P^T reaches
    # dV), which runs on the tensor cores while dQ_partial is handed over. Off: dK first, from shared memory.
    fa3_dk_order: bool = False
    # The worker adds dQ_partial to the accumulator by TMA reduce-adds from the shared-memory hand-over (FA3),
    # instead of reading it back and issuing v4 atomics: the adds leave the load/store unit.
    dq_tma_reduce: bool = False
    # Causal: per head, the query blocks that cross the diagonal run first in a loop of their own (FA3's masking
    # steps), so that the mask's registers weigh on that loop alone, not on the main one.
    mask_loop: bool = False
    # dQ_partial handed over in its query block's ring slot (Q's and dO's 16-bit buffers hold as many bytes as
    # float32 dQ_partial), added from there by TMA before the slot's next load: no hand-over buffer of its own, so
    # hd256's ring gets a second slot. Needs warp specialization, TMA reduce-adds and one MMA partition.
    dq_in_slot: bool = False

    def __post_init__(self):
        if self.block_m not in (64, 128) or self.block_n not in (64, 128):
            raise ValueError(f"a backward tile needs block_m and block_n 64 or 128, got {self}")
        if self.block_n == 64 and (self.split_warpgroups or self.fa3_dk_order):
            raise ValueError(f"64-key tiles share their keys between the warpgroups: no split warpgroups, and dK "
                             f"from dS^T in shared memory (no FA3 dK order), got {self}")
        if self.dq_in_slot and not (self.warp_specialize and self.dq_tma_reduce and not self.split_warpgroups):
            raise ValueError(f"dq_in_slot needs warp specialization, TMA reduce-adds and one MMA partition, got {self}")
        if (self.split_warpgroups or self.dq_tma_reduce) and not self.warp_specialize:
            raise ValueError(f"split warpgroups and TMA dQ reduce-adds need warp specialization, got {self}")

    @property
    def mma_partitions(self):
        return 2 if self.split_warpgroups else 1

    @property
    def num_warps(self):
        """Warps of the launch's (default) partition: all MMA warps, or the first MMA warpgroup when split."""
        return 8 // self.mma_partitions


# Head dim -> tile. Shared memory (of 227 KB), 16-bit: K + V + stages * (Q + dO) + 2 dS^T buffers + the float32
# dQ_partial hand-over (one per MMA partition): hd128 32 + 32 + 3 * 32 + 32 + 32 = 224 KB (plus 1.5 KB of
# LSE2/delta), hd64 (128 query rows) 16 + 16 + 2 * 32 + 64 + 32 = 192 KB. Registers per MMA thread (256): dK + dV
# accumulators 2 * (128 * d / 256), S^T and dP^T 2 * (128 * block_m / 256), dQ_partial block_m * d / 256. Split
# warpgroups measured 2-16% slower (docs/tuning-gluon.md, B3): the second float32 hand-over costs more
# shared-memory traffic than the overlap gains.
BWD_TILES = {
    # FA3's hd64 tile, 128 query rows a step, with the causal masked blocks in a loop of their own and dK first:
    # +2-7% non-causal, +5-8% causal from 2k keys, level at 1k, against 64 rows in FA3's dK order (B9, H100).
    64: BwdTile(block_m=128, block_n=128, stages=2, mask_loop=True),
    # TMA reduce-adds for dQ with FA3's dK order: +10-13% against atomics and dK first from 2k to 16k keys (B6);
    # with the atomics the two orders were level (B5). The mask loop: +2-4% causal from 2k keys (B9).
    128: BwdTile(block_m=64, block_n=128, stages=3, fa3_dk_order=True, dq_tma_reduce=True, mask_loop=True),
    # 64 keys (FA3 takes 80, not a power of two): dK and dV 64 registers each a thread. With dQ_partial handed over
    # in its ring slot, 32 + 32 + 2 * 64 (two ring slots) + 2 * 8 (dS^T) + 2 * 8 (P^T) = 224 KB.
    256: BwdTile(block_m=64, block_n=64, stages=2, dq_tma_reduce=True, mask_loop=True, dq_in_slot=True),
}
# Causal, up to so many keys: hd64's 64-row tile (shorter steps, twice as many), with the mask loop: +3-6% against
# the 128-row tile at 1k keys, level at 2k, behind from 4k (B9, H100).
FEW_KEYS_CAUSAL_BWD_TILES = {64: (1024, BwdTile(block_m=64, block_n=128, stages=3, fa3_dk_order=True,
                                                mask_loop=True))}


def default_tile(head_dim, causal, seqlen_k):
    """The tile attention_backward runs where none is given: BWD_TILES', or FEW_KEYS_CAUSAL_BWD_TILES' up to its
    key count."""
    few = FEW_KEYS_CAUSAL_BWD_TILES.get(head_dim) if causal else None
    return few[1] if few and seqlen_k <= few[0] else BWD_TILES[head_dim]


@dataclass(frozen=True)
class BwdVariant:
    """Compile-time shape of one backward kernel."""
    dtype: torch.dtype
    head_dim: int
    causal: bool
    tile_override: BwdTile | None = None

    @property
    def tile(self):
        return self.tile_override or BWD_TILES[self.head_dim]

    @functools.cached_property  # built once per configuration (`cached_bwd_variant`), read on every launch
    def constexprs(self):
        return dict(CAUSAL=self.causal, STAGES=self.tile.stages, WARP_SPECIALIZE=self.tile.warp_specialize,
                    MMA_PARTITIONS=self.tile.mma_partitions, FA3_DK_ORDER=self.tile.fa3_dk_order,
                    MASK_LOOP=self.tile.mask_loop, DQ_IN_SLOT=self.tile.dq_in_slot)

    @functools.cached_property
    def options(self):
        opts = dict(num_warps=self.tile.num_warps)
        if self.tile.warp_specialize:
            opts["maxnreg"] = WS_MAXNREG
        return opts

    def descriptors(self, q, k, v, dout, dk, dv, lse2, delta, dq_acc):
        """TMA descriptors: 4-D with boxes of one (batch, head), Q/dO blocks of block_m rows, K/V/dK/dV of one MMA
        partition's keys; LSE2 and delta (flat) block_m values per box; the dQ accumulator with Q's box when the
        tile adds into it by TMA, else None."""
        q_block = [1, self.tile.block_m, 1, self.head_dim]
        kv_block = [1, self.tile.block_n // self.tile.mma_partitions, 1, self.head_dim]

        def desc(t, block):
            return TensorDescriptor.from_tensor(t, block, shared_layout(tuple(block), GL_DTYPES[t.dtype]))

        def stat_desc(t):
            return TensorDescriptor.from_tensor(t, [self.tile.block_m], STAT_LAYOUT)

        return (desc(q, q_block), desc(k, kv_block), desc(v, kv_block), desc(dout, q_block), desc(dk, kv_block),
                desc(dv, kv_block), stat_desc(lse2), stat_desc(delta),
                desc(dq_acc, q_block) if self.tile.dq_tma_reduce else None)


launch_backward = Launcher(attention_bwd_kernel)
cached_bwd_variant = functools.lru_cache(maxsize=None)(BwdVariant)


def _check_inputs(dout, q, k, v, out, lse, softmax_scale, deterministic):
    tensors = dict(dout=dout, q=q, k=k, v=v, out=out)
    if not all(t.is_cuda for t in tensors.values()) or not lse.is_cuda:
        raise ValueError("the Gluon backward needs CUDA tensors")
    if q.dtype not in HALF_DTYPES or any(t.dtype != q.dtype for t in tensors.values()):
        raise TypeError(f"dout, q, k, v, out must all be bfloat16 or float16, got "
                        f"{[str(t.dtype) for t in tensors.values()]}")
    if lse.dtype != torch.float32:
        raise TypeError(f"lse must be float32, got {lse.dtype}")
    if q.shape[-1] not in BWD_TILES:
        raise ValueError(f"the Gluon backward takes head dims {tuple(BWD_TILES)}, got {q.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] == 0:
        raise ValueError(f"the Gluon backward needs seqlen_q, seqlen_k > 0, got q {tuple(q.shape)} k {tuple(k.shape)}")
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale}")
    if deterministic:
        raise ValueError("the Gluon backward adds dQ with atomics; use the Triton backward for deterministic=True")


def _kernel_args(descriptors, dq_acc, softmax_scale, scalars):
    """The kernel's arguments: BwdVariant.descriptors (the dQ accumulator's pointer among them), the scale in log2
    units and as given, then BwdPlan.scalars."""
    return (*descriptors[:8], dq_acc, descriptors[8], softmax_scale * LOG2_E, softmax_scale, *scalars)


def backward_grid(variant, batch, seqlen_k, nheads_kv):
    """One program per (key block, batch, kv head); causal as one dimension, ordered by the kernel."""
    return program_grid(triton.cdiv(seqlen_k, variant.tile.block_n), batch * nheads_kv, variant.causal)


def padded_seqlen_q(variant, seqlen_q):
    """LSE2 and delta's row length: whole query blocks of the kernel and of the preprocess."""
    block = max(variant.tile.block_m, PREPROCESS_BLOCK_M)
    return triton.cdiv(seqlen_q, block) * block


@dataclass(frozen=True, eq=False)  # compared by identity: part of a Launcher key
class BwdPlan:
    """What a backward's two launches need but the tensors' addresses and the softmax scale, worked out once per
    variant, shapes, strides and L2 budget (`backward_plan`); a call then allocates, rebases the descriptors and
    launches. Building the descriptors and the per-argument launch key cost ~85 µs a call on our CPU."""
    grid: tuple
    descriptors: tuple  # of q, k, v, dout, dk, dv, lse2, delta, dQ accumulator (or None), over meta tensors
    scalars: tuple  # nheads, GQA group, seqlen_q, seqlen_k, seqlen_q_pad, causal section heads
    preprocess: tuple  # kernels.triton.bwd.preprocess_launch's


@functools.lru_cache(maxsize=256)
def backward_plan(variant: BwdVariant, q_shape, k_shape, strides, section_l2_bytes=CAUSAL_SECTION_L2_BYTES
                  ) -> BwdPlan:
    """The plan of a backward over tma_ready dout, q, k, v, out of these shapes and strides (dout's, q's, k's,
    v's, out's); dk, dv and the dQ accumulator are fresh allocations, LSE2 and delta flat ones."""
    batch, seqlen_q, nheads, head_dim = q_shape
    seqlen_q_pad = padded_seqlen_q(variant, seqlen_q)
    dout, q, k, v = (torch.empty_strided(shape, stride, dtype=variant.dtype, device="meta")
                     for shape, stride in zip((q_shape, q_shape, k_shape, k_shape), strides))
    dk = torch.empty(k_shape, dtype=variant.dtype, device="meta")
    stats = torch.empty(batch * nheads * seqlen_q_pad, dtype=torch.float32, device="meta")
    dq_acc = torch.empty(q_shape, dtype=torch.float32, device="meta")
    group = nheads // k_shape[2]
    section = causal_section_heads(seqlen_q, head_dim, group, variant.dtype.itemsize * 2 + 4, section_l2_bytes)
    return BwdPlan(backward_grid(variant, batch, k_shape[1], k_shape[2]),
                   variant.descriptors(q, k, v, dout, dk, dk, stats, stats, dq_acc),
                   (nheads, group, seqlen_q, k_shape[1], seqlen_q_pad, section),
                   preprocess_launch(q_shape, strides[4], strides[0], seqlen_q_pad))


def attention_backward(dout, q, k, v, out, lse, softmax_scale, causal, deterministic=False, *,
                       tile: BwdTile | None = None, section_l2_bytes: int = CAUSAL_SECTION_L2_BYTES,
                       dq_float32: bool = False):
    """(dq, dk, dv) like q, k, v, from the saved out and lse ((batch, nheads, seqlen_q) float32, natural log).

    Layout (batch, seqlen, nheads, headdim), 16-byte aligned strides (kernels.checks.tma_ready);
    GQA (dK/dV summed over each kv head's group), bottom-right causal, any seqlens.
    `tile` overrides default_tile and `section_l2_bytes` the causal order's L2 budget (tuning).
    `dq_float32`: dq as accumulated, in float32 (for a caller that transforms it before rounding it).
    """
    _check_inputs(dout, q, k, v, out, lse, softmax_scale, deterministic)
    head_dim = q.shape[3]
    variant = cached_bwd_variant(q.dtype, head_dim, bool(causal), tile or default_tile(head_dim, causal, k.shape[1]))
    plan = backward_plan(variant, q.shape, k.shape, tuple(t.stride() for t in (dout, q, k, v, out)), section_l2_bytes)
    dev = q.device
    lse = lse.contiguous()
    lse2 = torch.empty(plan.descriptors[6].base.shape, dtype=torch.float32, device=dev)
    delta = torch.empty_like(lse2)
    dq_acc = torch.empty(q.shape, dtype=torch.float32, device=dev)  # zeroed by the preprocess
    dk = torch.empty(k.shape, dtype=k.dtype, device=dev)
    dv = torch.empty(v.shape, dtype=v.dtype, device=dev)

    set_descriptor_allocator(dev)
    # The plan fixes the preprocess's specialization but for the alignment of the caller's tensors it reads by
    # pointer (the rest are fresh allocations).
    aligned = tuple(t.data_ptr() % 16 == 0 for t in (out, dout, lse))
    grid, rest, constexprs = plan.preprocess
    launch_preprocess(grid, (out, dout, lse, lse2, delta, dq_acc, *rest), constexprs, {}, plan=(plan, aligned))
    tensors = (q, k, v, dout, dk, dv, lse2, delta, dq_acc)
    descriptors = tuple(None if desc is None else rebased(desc, t) for desc, t in zip(plan.descriptors, tensors))
    launch_backward(plan.grid, _kernel_args(descriptors, dq_acc, softmax_scale, plan.scalars), variant.constexprs,
                    variant.options, plan=plan)
    return (dq_acc if dq_float32 else dq_acc.to(q.dtype)), dk, dv


def compile_backward(variant: BwdVariant, target=HOPPER):
    """Compile one variant ahead of time (no GPU needed); returns triton's CompiledKernel.

    As `kernels.gluon.forward.compile_forward`: the launch path's specialization with every size 1; needs a
    process where TRITON_INTERPRET was unset when triton was imported.
    """
    shape = (1, 1, 1, variant.head_dim)
    plan = backward_plan(variant, shape, shape, (torch.empty(shape).stride(),) * 5)
    args = _kernel_args(plan.descriptors, torch.empty(shape), 1.0, plan.scalars)
    return compile_for(attention_bwd_kernel, args, variant.constexprs, variant.options, target)
