"""Epilogue of the Hopper forward: normalize O, store it with TMA, write the log-sum-exp.

O goes registers -> shared memory -> TMA store, which clips rows past seqlen_q
per batch; LSE is a plain masked store of one float per row.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma

from .pipeline import Pipeline
from .softmax import p_log2_offset, softmax_finish


@gluon.jit
def write_output(p: Pipeline, o, m, l, v_unit, o_tile, lse_ptr, batch, head, nheads, row0, seqlen_q):
    """Store rows [row0, row0 + rows) of O (normalized; O was in units of v_unit) and LSE for one (batch, head),
    staging O in shared-memory buffer o_tile."""
    shape: gl.constexpr = p.o_desc.block_type.shape
    o_layout: gl.constexpr = o.type.layout
    inv_l, lse = softmax_finish(m, l, p_log2_offset(p.q_desc.dtype))
    o = o * gl.expand_dims(gl.convert_layout(inv_l * v_unit, gl.SliceLayout(1, o_layout)), 1)
    if not p.O_IN_Q:
        tma.store_wait(0)  # the previous tile's store must be done reading this buffer
    o_tile.reshape([shape[1], shape[3]]).store(o.to(p.o_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(p.o_desc, [batch, row0, head, 0], o_tile)

    rows = row0 + gl.arange(0, shape[1], layout=lse.type.layout)
    lse_row0 = (batch * nheads + head).to(gl.int64) * seqlen_q
    gl.store(lse_ptr + lse_row0 + rows, lse, mask=rows < seqlen_q)
    if p.O_IN_Q:
        tma.store_wait(0)  # O sits in the Q buffer: the store must finish before the next Q lands there
