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
def write_output(p: Pipeline, o, m, l, v_unit, o_box, o_rows, lse_ptr, batch, head, nheads, row0, seqlen_q):
    """Store rows [row0, row0 + rows) of O (normalized; O was in units of v_unit) and LSE for one (batch, head),
    staging O in shared memory: o_box as the TMA store's source, o_rows the same bytes as [rows, head_dim]."""
    shape: gl.constexpr = p.o_desc.block_type.shape
    o_layout: gl.constexpr = o.type.layout
    inv_l, lse = softmax_finish(m, l, p_log2_offset(p.q_desc.dtype))
    o = o * gl.expand_dims(gl.convert_layout(inv_l * v_unit, gl.SliceLayout(1, o_layout)), 1)
    if not p.O_IN_Q and not p.O_IN_K:
        tma.store_wait(0)  # the previous tile's store must be done reading this buffer
    o_rows.store(o.to(p.o_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(p.o_desc, [batch, row0, head, 0], o_box)

    rows = row0 + gl.arange(0, shape[1], layout=lse.type.layout)
    lse_row0 = (batch * nheads + head).to(gl.int64) * seqlen_q
    gl.store(lse_ptr + lse_row0 + rows, lse, mask=rows < seqlen_q)
    if p.O_IN_Q or p.O_IN_K:
        tma.store_wait(0)  # O sits in a Q or K buffer: the store must have read it before the next load lands there
