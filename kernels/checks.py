"""Input checks shared by every attention entry point (clear errors before any launch), and the layout
the TMA tensor descriptors need."""
import torch

DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256
HEAD_DIM_MULTIPLE = 8  # 16-byte rows for the TMA tensor descriptors


def check_inputs(q, k, v):
    """Raise a clear TypeError/ValueError for inputs the kernels do not take, before any launch."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; the kernels take bfloat16 or float16")
        if t.dim() != 4:
            raise ValueError(f"{name} must be (batch, seqlen, nheads, headdim), got shape {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (headdim), got strides {t.stride()}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, _, nheads, head_dim = q.shape
    if k.shape[0] != batch:
        raise ValueError(f"q and k/v must have the same batch size, got {batch} and {k.shape[0]}")
    if k.shape[3] != head_dim:
        raise ValueError(f"q and k/v must have the same head dim, got {head_dim} and {k.shape[3]}")
    if nheads % k.shape[2]:
        raise ValueError(f"nheads ({nheads}) must be a multiple of nheads_kv ({k.shape[2]})")
    if head_dim % HEAD_DIM_MULTIPLE or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be a multiple of {HEAD_DIM_MULTIPLE} up to {MAX_HEAD_DIM}, got {head_dim}")


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy if its base or strides break the 16-byte alignment tensor descriptors need."""
    aligned = t.stride(-1) == 1 and t.data_ptr() % 16 == 0
    aligned = aligned and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])
    return t if aligned else t.contiguous()
