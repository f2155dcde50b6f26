"""FlashAttention-3-style attention kernels for Hopper (sm_90a), written in Gluon (triton 3.6).

Split as FA3 splits them: `pipeline` (buffers, mbarriers, producer), `scheduler`
(persistent tiles), `mainloop` (consumer GEMMs + online softmax), `softmax`,
`epilogue`, `kernel` (partition wiring) and `forward` (host launcher); the backward
in `bwd_kernel` (the kernel) and `bwd` (host side).
"""
from .bwd import BWD_TILES, BwdTile, BwdVariant, attention_backward, compile_backward
from .forward import (TileConfig, Variant, attention_forward, compile_forward, fp8_attention_forward,
                      prepare_fp8_attention_forward)

__all__ = ["BWD_TILES", "BwdTile", "BwdVariant", "TileConfig", "Variant", "attention_backward", "compile_backward",
           "attention_forward", "compile_forward", "fp8_attention_forward", "prepare_fp8_attention_forward"]
