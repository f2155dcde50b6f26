"""FP8 attention's quantization scheme, in plain PyTorch: the oracle for the FP8 kernels.

Scheme (docs/fp8.md has the reasoning):
  * Q and K are multiplied by M = D·H/sqrt(d) along head_dim when `hadamard`
    (kernels.hadamard), computed as (x @ D·H) in fp32, then times 1/sqrt(d).
  * Each tensor is cut into blocks of rows of one (batch, head): block_m rows
    for Q, block_n rows for K and V. A block's scale is amax / fp8_max (1 for
    an all-zero block, NaN for a block holding inf or NaN), so that
    x * (1 / scale), clamped to ±fp8_max, is cast to fp8 without overflow.
    With granularity "head" or "tensor" the amax is taken over the whole head
    or tensor and broadcast to every block, so all granularities share one layout.
  * V is not rotated. It is stored transposed, (batch, nheads_kv, headdim,
    seqlen_k padded to a multiple of 16) with seqlen_k contiguous, the K-major
    B operand an FP8 P·V MMA reads; its keys in natural order, or (on request,
    for the Gluon forward) in "wgmma" order inside every group of 16 keys
    (`to_wgmma_key_order`).
  * The forward walks keys in tiles of exactly block_n (one K/V scale per
    tile), keeps an online softmax in fp32 (exp2 domain), and casts
    P = exp2(s - m + 8), i.e. 256 times the usual probabilities, to fp8 so
    that P uses fp8's normal range; the factor cancels in O = acc / l, where l
    sums the fp32 P. V's per-tile scale multiplies P·V exactly in fp32.
"""
import math
from dataclasses import dataclass

import torch

from kernels.checks import check_inputs
from kernels.hadamard import signed_hadamard

GRANULARITIES = ("block", "head", "tensor")
FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
BLOCK_SIZES = (32, 64, 128, 256)
HEAD_DIMS = (64, 128, 256)
# P is scaled by 2**P_LOG2_OFFSET before its fp8 cast (FA3's choice): P <= 256 < fp8 max.
P_LOG2_OFFSET = 8.0
# seqlen_k of the transposed V is padded to this many elements (16 bytes: TMA's stride alignment).
V_SEQ_ALIGN = 16
# Orders of the keys along V^T's seqlen axis (FP8QKV.v_key_order).
V_KEY_ORDERS = ("natural", "wgmma")
# The wgmma order permutes keys inside groups of this many (a multiple of it divides every block size and
# V_SEQ_ALIGN, so no group straddles a scale block or the padding boundary).
WGMMA_KEY_GROUP = 16
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@dataclass(frozen=True)
class FP8Config:
    """How FP8 attention quantizes Q, K and V.

    block_m / block_n: rows per scale block of Q / of K and V (block_n is also
    the forward's key tile). hadamard: rotate Q and K by D·H/sqrt(d) first.
    granularity: one scale per "block", per (batch, head) ("head") or per
    "tensor". fmt: "e4m3" or "e5m2" (for Q, K, V and P). seed: seeds D's signs.
    """

    block_m: int = 128
    block_n: int = 128
    hadamard: bool = True
    granularity: str = "block"
    fmt: str = "e4m3"
    seed: int = 0

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value not in BLOCK_SIZES:
                raise ValueError(f"FP8Config.{name} must be one of {BLOCK_SIZES}, got {value!r}")
        if not isinstance(self.hadamard, bool):
            raise ValueError(f"FP8Config.hadamard must be a bool, got {self.hadamard!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"FP8Config.granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"FP8Config.fmt must be one of {tuple(FORMATS)}, got {self.fmt!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"FP8Config.seed must be a non-negative int, got {self.seed!r}")

    @property
    def dtype(self) -> torch.dtype:
        return FORMATS[self.fmt]

    @property
    def fp8_max(self) -> float:
        return float(torch.finfo(self.dtype).max)


@dataclass(frozen=True, eq=False)
class FP8QKV:
    """The pre-pass's output, the FP8 forward's input (stable layout, shared by all FP8 kernels).

    q: (batch, seqlen_q, nheads, headdim) fp8, contiguous: round(Q·M / q_scale).
    k: (batch, seqlen_k, nheads_kv, headdim) fp8, contiguous: round(K·M / k_scale).
    v_t: (batch, nheads_kv, headdim, seqlen_k_padded) fp8, contiguous, seqlen_k
        padded with zeros to a multiple of V_SEQ_ALIGN: round(V / v_scale), transposed.
    q_scale: (batch, nheads, cdiv(seqlen_q, block_m)) fp32; q_scale[b, h, i]
        dequantizes rows [i*block_m, (i+1)*block_m) of head h.
    k_scale, v_scale: (batch, nheads_kv, cdiv(seqlen_k, block_n)) fp32, likewise.
    v_key_order: "natural" (v_t[..., j] is key j) or "wgmma" (keys permuted inside every group of
        WGMMA_KEY_GROUP, `to_wgmma_key_order`; v_t[..., :seqlen_k] then holds some padding zeros and
        misses some keys, so read it through `natural_v_t`).
    M is the identity when config.hadamard is off.
    """

    q: torch.Tensor
    k: torch.Tensor
    v_t: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    config: FP8Config
    v_key_order: str = "natural"

    def __post_init__(self):
        check_v_key_order(self.v_key_order)

    @property
    def seqlen_k(self) -> int:
        return self.k.shape[1]

    def natural_v_t(self) -> torch.Tensor:
        """V^T with its keys in natural order, (batch, nheads_kv, headdim, seqlen_k): a view or a permuted copy."""
        v_t = self.v_t if self.v_key_order == "natural" else from_wgmma_key_order(self.v_t)
        return v_t[..., :self.seqlen_k]


def check_v_key_order(order) -> None:
    if order not in V_KEY_ORDERS:
        raise ValueError(f"v_key_order must be one of {V_KEY_ORDERS}, got {order!r}")


# The wgmma key order. An m64nNk32 FP8 wgmma accumulator gives thread (lane % 4 = t) of a quad the score columns
# 8h + 2t + b (h, b in 0..1) of every 16, while the FP8 A operand wants that thread to hold k = 4t + 2h + b
# (PTX ISA, wgmma register fragments). Storing key 16a + 8h + 2t + b of V^T at position 16a + 4t + 2h + b makes
# P's accumulator registers the A operand as they are: P V = sum over positions of P[key(pos)] V_t[pos].
# Group index bits (h, t1, t0, b) in natural order become (t1, t0, h, b): a rotation of the top three bits.
def _key_groups(x: torch.Tensor) -> int:
    """Groups of WGMMA_KEY_GROUP keys along x's last axis; a clear error if it does not divide."""
    n = x.shape[-1]
    if n % WGMMA_KEY_GROUP:
        raise ValueError(f"the key axis must be a multiple of {WGMMA_KEY_GROUP}, got {n}")
    return n // WGMMA_KEY_GROUP


def to_wgmma_key_order(x: torch.Tensor) -> torch.Tensor:
    """Permute the last axis (a multiple of WGMMA_KEY_GROUP) from natural to wgmma key order."""
    # natural key 16a + 8h + 2t + b = index (a, h, t, b) -> position (a, t, h, b)
    return x.unflatten(-1, (_key_groups(x), 2, 4, 2)).transpose(-3, -2).flatten(-4)


def from_wgmma_key_order(x: torch.Tensor) -> torch.Tensor:
    """The inverse of to_wgmma_key_order."""
    return x.unflatten(-1, (_key_groups(x), 4, 2, 2)).transpose(-3, -2).flatten(-4)


def check_qkv(q, k, v, config: FP8Config) -> None:
    """Raise a clear error unless q, k, v are FP8 attention inputs for `config`."""
    check_inputs(q, k, v)
    head_dim = q.shape[3]
    if config.hadamard and head_dim & (head_dim - 1):
        raise ValueError(f"hadamard=True needs a power-of-two head dim, got {head_dim}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"FP8 attention supports head dims {HEAD_DIMS}, got {head_dim}")


def fp8qkv_shapes(q_shape, k_shape, config: FP8Config) -> dict[str, tuple]:
    """The shapes of FP8QKV's v_t (padded) and scales for q and k of these shapes (q8 and k8 keep theirs)."""
    b, sq, h, d = q_shape
    sk, hk = k_shape[1], k_shape[2]
    return {"v_t": (b, hk, d, -(-sk // V_SEQ_ALIGN) * V_SEQ_ALIGN), "q_scale": (b, h, -(-sq // config.block_m)),
            "k_scale": (b, hk, -(-sk // config.block_n)), "v_scale": (b, hk, -(-sk // config.block_n))}


def check_fp8qkv(x: FP8QKV) -> None:
    """Raise a clear error unless x's tensors have the layouts, dtypes and scale shapes FP8QKV documents for
    its config (one made by hand, or with dataclasses.replace, may not)."""
    cfg = x.config
    if not isinstance(cfg, FP8Config):
        raise TypeError(f"FP8QKV.config must be a kernels.FP8Config, got {type(cfg).__name__}")
    names = ("q", "k", "v_t", "q_scale", "k_scale", "v_scale")
    for name in names:
        t = getattr(x, name)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"FP8QKV.{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != x.q.device:
            raise ValueError(f"FP8QKV.{name} is on {t.device}, q on {x.q.device}: one device for all")
        if not t.is_contiguous():
            raise ValueError(f"FP8QKV.{name} must be contiguous, got strides {t.stride()}")
        want = cfg.dtype if name in ("q", "k", "v_t") else torch.float32
        if t.dtype != want:
            raise TypeError(f"FP8QKV.{name} must be {want} (config fmt {cfg.fmt!r} for q, k, v_t), got {t.dtype}")
        if name in ("q", "k", "v_t") and t.data_ptr() % 16:
            # The forwards read them through TMA descriptors, whose base must be aligned (the pre-pass's are).
            raise ValueError(f"FP8QKV.{name} must start 16-byte aligned, got address {t.data_ptr():#x}")
    if x.q.dim() != 4 or x.k.dim() != 4:
        raise ValueError(f"FP8QKV.q and .k must be (batch, seqlen, heads, headdim), got {tuple(x.q.shape)}, "
                         f"{tuple(x.k.shape)}")
    b, sq, h, d = x.q.shape
    _, sk, hk, _ = x.k.shape
    if x.k.shape[0] != b or x.k.shape[3] != d or hk == 0 or h % hk:
        raise ValueError(f"FP8QKV.k {tuple(x.k.shape)} does not match q {tuple(x.q.shape)} (batch, head dim, "
                         "kv heads dividing heads)")
    if d not in HEAD_DIMS:
        raise ValueError(f"FP8 attention supports head dims {HEAD_DIMS}, got {d}")
    for name, want in fp8qkv_shapes(x.q.shape, x.k.shape, cfg).items():
        got = tuple(getattr(x, name).shape)
        if got != want:
            raise ValueError(f"FP8QKV.{name} must be {want} for q {tuple(x.q.shape)}, k {tuple(x.k.shape)} and "
                             f"block_m={cfg.block_m}, block_n={cfg.block_n}; got {got}")


def rotate(x: torch.Tensor, seed: int, inverse: bool = False) -> torch.Tensor:
    """x·M (x·Mᵀ when inverse) in fp32, computed as the kernels do: (x @ D·H) in fp32, then times 1/sqrt(d)."""
    d = x.shape[-1]
    dh = signed_hadamard(d, seed, torch.float32, x.device)
    dh = dh.T if inverse else dh
    return (x.float() @ dh) * (1.0 / math.sqrt(d))  # the Python scalar multiplies in fp32, as kernels do


def block_amax(x: torch.Tensor, block: int) -> torch.Tensor:
    """(batch, seqlen, heads, d) -> (batch, heads, cdiv(seqlen, block)) fp32 max |x| per block (NaN propagates)."""
    b, s, h, d = x.shape
    nblk = -(-s // block)
    xa = torch.nn.functional.pad(x.float().abs(), (0, 0, 0, 0, 0, nblk * block - s))
    return xa.view(b, nblk, block, h, d).amax(dim=(2, 4)).transpose(1, 2).contiguous()


def scales_from_amax(amax: torch.Tensor, config: FP8Config) -> torch.Tensor:
    """Per-block amax -> per-block scales at config's granularity (same shape)."""
    if config.granularity == "head":
        amax = amax.amax(dim=2, keepdim=True).expand_as(amax)
    elif config.granularity == "tensor":
        amax = amax.amax().expand_as(amax)
    scale = torch.where(amax > 0, amax / config.fp8_max, torch.ones_like(amax))
    return torch.where(torch.isfinite(amax), scale, torch.full_like(amax, float("nan"))).contiguous()


def rows_of(scale: torch.Tensor, block: int, seqlen: int) -> torch.Tensor:
    """(batch, heads, nblk) block values -> (batch, seqlen, heads, 1), one per row."""
    return scale.repeat_interleave(block, dim=2)[:, :, :seqlen].transpose(1, 2).unsqueeze(-1)


def quantize_rows(x: torch.Tensor, scale: torch.Tensor, block: int, config: FP8Config) -> torch.Tensor:
    """fp32 (batch, seqlen, heads, d) -> fp8: x * (1/scale), clamped to ±fp8_max, rounded to nearest even."""
    inv = rows_of(1.0 / scale, block, x.shape[1])
    return (x * inv).clamp(-config.fp8_max, config.fp8_max).to(config.dtype)


def quantize_qkv_ref(q, k, v, config: FP8Config = FP8Config(), v_key_order: str = "natural") -> FP8QKV:
    """The pre-pass in plain PyTorch: same scheme, same layouts as the Triton kernel (V^T's keys in
    v_key_order, FP8QKV)."""
    check_qkv(q, k, v, config)
    check_v_key_order(v_key_order)
    tensors = {}
    for name, x, block in (("q", q, config.block_m), ("k", k, config.block_n), ("v", v, config.block_n)):
        x = rotate(x, config.seed) if config.hadamard and name != "v" else x.float()
        scale = scales_from_amax(block_amax(x, block), config)
        tensors[name] = quantize_rows(x, scale, block, config)
        tensors[name + "_scale"] = scale
    v_t = torch.zeros(fp8qkv_shapes(q.shape, k.shape, config)["v_t"], dtype=config.dtype, device=v.device)
    v_t[..., :k.shape[1]] = tensors.pop("v").permute(0, 2, 3, 1)
    if v_key_order == "wgmma":
        v_t = to_wgmma_key_order(v_t).contiguous()
    return FP8QKV(v_t=v_t, config=config, v_key_order=v_key_order, **tensors)


def dequantize(x: FP8QKV):
    """fp32 (Q·M, K·M, V) in (batch, seqlen, heads, headdim) layout."""
    cfg = x.config
    sk = x.seqlen_k
    q = x.q.float() * rows_of(x.q_scale, cfg.block_m, x.q.shape[1])
    k = x.k.float() * rows_of(x.k_scale, cfg.block_n, sk)
    v = x.natural_v_t().permute(0, 3, 1, 2).float() * rows_of(x.v_scale, cfg.block_n, sk)
    return q, k, v


def fp8_forward_ref(x: FP8QKV, softmax_scale: float, causal: bool = False):
    """The FP8 forward kernel's arithmetic in PyTorch fp32, from pre-pass outputs: (out fp32, lse fp32).

    Same key tiling (block_n), same online softmax, same fp8 rounding of
    2**8 * P; only fp32 summation order and exp2's last bits can differ.
    """
    cfg = x.config
    b, sq, h, d = x.q.shape
    sk, hk = x.seqlen_k, x.k.shape[2]
    group = h // hk
    q = x.q.float().transpose(1, 2)  # (b, h, sq, d)
    k = x.k.float().transpose(1, 2).repeat_interleave(group, dim=1)
    v_t = x.natural_v_t().float().repeat_interleave(group, dim=1)  # (b, h, d, sk)
    k_scale = x.k_scale.repeat_interleave(group, dim=1)
    v_scale = x.v_scale.repeat_interleave(group, dim=1)
    qk_scale = torch.tensor(softmax_scale * LOG2E, dtype=torch.float32, device=q.device)
    row_scale = rows_of(x.q_scale, cfg.block_m, sq).squeeze(-1).transpose(1, 2) * qk_scale  # (b, h, sq)
    if causal:
        rows = torch.arange(sq, device=q.device)[:, None]
        visible = torch.arange(sk, device=q.device)[None, :] <= rows + (sk - sq)
    m = torch.full((b, h, sq), float("-inf"), device=q.device)
    l = torch.zeros((b, h, sq), device=q.device)
    acc = torch.zeros((b, h, sq, d), device=q.device)
    for j, n0 in enumerate(range(0, sk, cfg.block_n)):
        n1 = min(sk, n0 + cfg.block_n)
        s = (q @ k[:, :, n0:n1].transpose(-1, -2)) * (row_scale * k_scale[:, :, j, None])[..., None]
        if causal:
            s = s.masked_fill(~visible[:, n0:n1], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1))
        m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(s - (m_safe - P_LOG2_OFFSET)[..., None])
        alpha = torch.exp2(m - m_safe)
        l = l * alpha + p.sum(dim=-1)
        pv = p.to(cfg.dtype).float() @ v_t[..., n0:n1].transpose(-1, -2)
        acc = acc * alpha[..., None] + pv * v_scale[:, :, j, None, None]
        m = m_new
    empty = l == 0  # rows that see no key (causal, seqlen_q > seqlen_k); NaN rows stay NaN
    out = torch.where(empty[..., None], torch.zeros_like(acc), acc / l[..., None])
    lse = torch.where(empty, torch.full_like(l, float("inf")), (m + torch.log2(l) - P_LOG2_OFFSET) * LN2)
    return out.transpose(1, 2), lse


def fp8_attention_ref(q, k, v, causal=False, softmax_scale=None, config: FP8Config = FP8Config()):
    """FP8 attention in plain PyTorch (pre-pass + forward, as the kernels compute it): (out fp32, lse fp32)."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return fp8_forward_ref(quantize_qkv_ref(q, k, v, config), scale, causal)
