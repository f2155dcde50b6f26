"""The attention implementations the paper figures time: ours and the peers present on this machine.

A candidate's `build(problem, q, k, v)` does all set-up that must stay out of
the timing (imports, compilation handles, FP8 casts of a peer's inputs) and
returns a zero-argument call that runs one attention and returns its output in
FlashAttention layout (batch, seqlen, heads, headdim). It raises Unavailable
when the implementation cannot run here; the runner records the reason in a
skipped row instead of failing the table.
"""
import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


class Unavailable(Exception):
    """The implementation cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Candidate:
    name: str   # column/legend name
    kind: str   # "ours" or "peer"
    build: Callable
    # Environment for the whole measurement, backward included (KERNELS_IMPL is read on every call).
    env: tuple = ()
    # (q, k, mode) -> which of our kernels runs that pass (ours only; read inside `env`).
    backend: Callable = None


def _need_cuda():
    if not torch.cuda.is_available():
        raise Unavailable("needs CUDA")


@contextlib.contextmanager
def environment(variables):
    """Set environment variables for the block, then restore them."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def _kernels_attr(name):
    try:
        import kernels
        return getattr(kernels, name)
    except (ImportError, AttributeError) as err:
        raise Unavailable(f"kernels.{name} not available: {err}") from err


def _first(out):
    """The attention output of an API that may also return the LSE (FA3's interface did in early releases)."""
    return out[0] if isinstance(out, tuple) else out


def _bf16_backend(q, k, mode):
    from kernels.ops import select_backward_impl, select_impl
    if mode == "fwd":
        return select_impl(q.device, q.shape[-1])
    return select_backward_impl(q, deterministic=False)


def _fp8_backend(q, k, mode):
    from kernels.fp8 import fp8_backend
    return fp8_backend(q.device, q.shape[-1])


# ---- ours -------------------------------------------------------------------------------------

def _is_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _ours_bf16(impl):
    def build(problem, q, k, v):
        attn = _kernels_attr("flash_attn_func")
        if impl == "gluon" and not _is_hopper():
            raise Unavailable("Gluon kernels need an sm_90 GPU")
        return lambda: attn(q, k, v, causal=problem.causal)
    return build


def _ours_fp8(impl):
    """FP8 forward from BF16 inputs: the timing includes the quantization pre-pass (Hadamard + block scales)."""
    def build(problem, q, k, v):
        attn = _kernels_attr("flash_attn_fp8_func")
        if impl == "gluon" and not _is_hopper():
            raise Unavailable("Gluon kernels need an sm_90 GPU")
        config = _kernels_attr("FP8Config")()
        return lambda: attn(q, k, v, causal=problem.causal, config=config)
    return build


def _ours_fp8_kernel(problem, q, k, v):
    """The FP8 forward alone, on inputs quantized before timing (how the paper times FP8 kernels)."""
    quantize, forward = _kernels_attr("quantize_qkv"), _kernels_attr("fp8_attention_forward")
    qkv = quantize(q.detach(), k.detach(), v.detach(), _kernels_attr("FP8Config")())
    return lambda: _first(forward(qkv, causal=problem.causal, out_dtype=q.dtype))


def ours_gluon_ablation(name, warp_specialize=True, pipeline=True, pingpong=True):
    """Our Hopper forward with FA3's scheduling features switched on or off (the Table 2 ablation)."""
    def build(problem, q, k, v):
        if not _is_hopper():
            raise Unavailable("Gluon kernels need an sm_90 GPU")
        try:
            from kernels.gluon import attention_forward
        except ImportError as err:
            raise Unavailable(f"kernels.gluon.attention_forward not available: {err}") from err
        scale = problem.headdim ** -0.5
        return lambda: _first(attention_forward(q, k, v, scale, problem.causal, warp_specialize=warp_specialize,
                                                pipeline=pipeline, pingpong=pingpong))
    return Candidate(name, "ours", build, backend=lambda q, k, mode: "gluon")


# ---- peers ------------------------------------------------------------------------------------

def _sdpa(backend_name):
    def build(problem, q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        if backend_name != "MATH":
            _need_cuda()
        backend = getattr(SDPBackend, backend_name)
        # SDPA wants (batch, heads, seqlen, headdim): transposed views, no copies.
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

        def call():
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=problem.causal)
            return out.transpose(1, 2)
        return call
    return build


FLEX_RECOMPILE_LIMIT = 256  # one static compile per (shape, mask): the grid has 36 of them per figure


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Past dynamo's default limit (8) flex_attention would silently run eagerly, materializing
    # the scores; this benchmark process raises the limit instead.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), FLEX_RECOMPILE_LIMIT))
    return torch.compile(flex_attention, dynamic=False)


def _flex(problem, q, k, v):
    _need_cuda()
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as err:
        raise Unavailable(f"FlexAttention not in this torch: {err}") from err
    block_mask = None
    if problem.causal:
        block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None,
                                       problem.seqlen, problem.seqlen, device=q.device)
    flex = _compiled_flex()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    return lambda: flex(qt, kt, vt, block_mask=block_mask).transpose(1, 2)


def _fa3_module(problem, fp8=False):
    """FA3's interface, if its build has kernels for this head dim and dtype: a reduced build
    (experiments/fa3_wheel.sh) would otherwise run another head dim's kernel or fail inside the call."""
    _need_cuda()
    try:
        import flash_attn_interface
    except ImportError as err:
        raise Unavailable(f"FA3 flash_attn_interface not installed: {err}") from err
    try:
        from flash_attn_config import CONFIG
        flags = CONFIG["build_flags"]
    except (ImportError, KeyError):  # builds without the config module have every kernel
        flags = {}
    for flag in (f"FLASHATTENTION_DISABLE_HDIM{problem.headdim}", "FLASHATTENTION_DISABLE_FP8" if fp8 else None):
        if flags.get(flag):
            raise Unavailable(f"this FA3 build was made with {flag}")
    return flash_attn_interface


def _fa3(problem, q, k, v):
    fa3 = _fa3_module(problem)
    return lambda: _first(fa3.flash_attn_func(q, k, v, causal=problem.causal))


FP8_MAX = 448.0  # largest float8_e4m3fn value


def _fa3_fp8(problem, q, k, v):
    """FA3's FP8 forward on per-tensor-scaled e4m3 inputs, cast before timing (as the paper times it)."""
    fa3 = _fa3_module(problem, fp8=True)
    shape = (problem.batch, problem.nheads)
    casts, descales = [], []
    for t in (q, k, v):
        scale = t.detach().abs().amax().float().clamp(min=1e-12) / FP8_MAX
        casts.append((t.detach().float() / scale).to(torch.float8_e4m3fn))
        descales.append(scale.expand(shape).contiguous())
    return lambda: _first(fa3.flash_attn_func(*casts, causal=problem.causal, q_descale=descales[0],
                                              k_descale=descales[1], v_descale=descales[2]))


# ---- the rosters --------------------------------------------------------------------------------

OURS_GLUON = Candidate("ours-gluon", "ours", _ours_bf16("gluon"), env=(("KERNELS_IMPL", "gluon"),),
                       backend=_bf16_backend)
OURS_TRITON = Candidate("ours-triton", "ours", _ours_bf16("triton"), env=(("KERNELS_IMPL", "triton"),),
                        backend=_bf16_backend)
OURS_FP8 = Candidate("ours-fp8", "ours", _ours_fp8("auto"), backend=_fp8_backend)
OURS_FP8_KERNEL = Candidate("ours-fp8-kernel", "ours", _ours_fp8_kernel, backend=_fp8_backend)
OURS_FP8_GLUON = Candidate("ours-fp8-gluon", "ours", _ours_fp8("gluon"), env=(("KERNELS_IMPL", "gluon"),),
                           backend=_fp8_backend)
OURS_FP8_TRITON = Candidate("ours-fp8-triton", "ours", _ours_fp8("triton"), env=(("KERNELS_IMPL", "triton"),),
                            backend=_fp8_backend)
SDPA_CUDNN = Candidate("sdpa-cudnn", "peer", _sdpa("CUDNN_ATTENTION"))
SDPA_FLASH = Candidate("sdpa-flash", "peer", _sdpa("FLASH_ATTENTION"))
SDPA_EFFICIENT = Candidate("sdpa-efficient", "peer", _sdpa("EFFICIENT_ATTENTION"))
SDPA_MATH = Candidate("sdpa-math", "peer", _sdpa("MATH"))  # the paper's "standard attention"
FLEX = Candidate("flex", "peer", _flex)
FA3 = Candidate("fa3", "peer", _fa3)
FA3_FP8 = Candidate("fa3-fp8", "peer", _fa3_fp8)

BF16_ROSTER = (OURS_GLUON, OURS_TRITON, SDPA_CUDNN, SDPA_FLASH, SDPA_EFFICIENT, FLEX, FA3, SDPA_MATH)
# FP8 peers we can reach from Python are FA3's; BF16 cuDNN and our BF16 kernel show the FP8 gain.
OURS_BF16 = Candidate("ours-bf16", "ours", _ours_bf16("auto"), env=(("KERNELS_IMPL", "auto"),),
                      backend=_bf16_backend)
FP8_ROSTER = (OURS_FP8, OURS_FP8_GLUON, OURS_FP8_TRITON, OURS_FP8_KERNEL, OURS_BF16, FA3_FP8, SDPA_CUDNN)


def by_name(name: str) -> Candidate:
    """A candidate of the BF16 or FP8 roster by its column name."""
    for cand in (*BF16_ROSTER, *FP8_ROSTER):
        if cand.name == name:
            return cand
    raise KeyError(f"no candidate {name!r}")
