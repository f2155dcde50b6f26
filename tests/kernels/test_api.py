"""The public API: flash_attn_func's contract, input checks before launch, and backend dispatch."""
import inspect

import pytest
import torch

import kernels
from kernels import flash_attn_func
from kernels.ops import select_backward_impl, select_impl
from kernels.reference import attention_ref
from kernels.triton.fwd import interpreting

# On CPU the Triton backend needs the interpreter (conftest sets TRITON_INTERPRET=1 where there is no GPU).
on_interpreter = pytest.mark.skipif(not interpreting(), reason="CPU Triton kernels need TRITON_INTERPRET=1")
IMPLS = [pytest.param("triton", marks=on_interpreter), "reference"]


def qkv(batch=1, seqlen_q=24, seqlen_k=24, nheads=4, nheads_kv=2, head_dim=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, nheads, head_dim, generator=g).to(dtype)
    k = torch.randn(batch, seqlen_k, nheads_kv, head_dim, generator=g).to(dtype)
    v = torch.randn(batch, seqlen_k, nheads_kv, head_dim, generator=g).to(dtype)
    return q, k, v


def test_signature_follows_fa3():
    params = inspect.signature(flash_attn_func).parameters
    assert list(params)[:5] == ["q", "k", "v", "softmax_scale", "causal"]
    assert params["softmax_scale"].default is None and params["causal"].default is False
    for name in ("deterministic", "return_attn_probs"):
        assert params[name].default is False and params[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("impl", IMPLS)
def test_returns_out_or_out_and_lse(impl, monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", impl)
    q, k, v = qkv(seqlen_q=40, seqlen_k=24)
    out = flash_attn_func(q, k, v, causal=True)
    out2, lse = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.equal(out, out2)
    ref_out, ref_lse = attention_ref(q, k, v, causal=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (1, 4, 40) and lse.dtype == torch.float32
    assert torch.isinf(lse[:, :, :16]).all() and (out[:, :16] == 0).all()  # 40 - 24 leading rows see no key
    assert (out.double() - ref_out).abs().max() < 2e-2
    assert (lse[:, :, 16:].double() - ref_lse[:, :, 16:]).abs().max() < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_scale_and_gradients(impl, monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", impl)
    q, k, v = qkv(nheads=4, nheads_kv=1)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = flash_attn_func(qg, kg, vg, softmax_scale=0.3, causal=False)
    out.float().square().sum().backward()
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref, _ = attention_ref(q64, k64, v64, softmax_scale=0.3)
    ref.square().sum().backward()
    assert (out.double() - ref).abs().max() < 2e-2
    for g, r in zip((qg.grad, kg.grad, vg.grad), (q64.grad, k64.grad, v64.grad)):
        assert g.shape == r.shape and g.dtype == torch.bfloat16
        assert (g.double() - r).norm() / r.norm() < 2e-2  # MQA: dk, dv summed over 4 query heads


def test_lse_carries_no_gradient(monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", "reference")
    q, k, v = (t.requires_grad_() for t in qkv())
    out, lse = flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.requires_grad and not lse.requires_grad


def _bad(**overrides):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v, **overrides}
    return args


BAD_INPUTS = [
    ("float32", lambda: {k: t.float() for k, t in zip("qkv", qkv())}, TypeError, "bfloat16 or float16"),
    ("int", lambda: _bad(q=torch.ones(1, 24, 4, 64, dtype=torch.int32)), TypeError, "dtype"),
    ("mixed dtypes", lambda: _bad(k=qkv()[1].half()), TypeError, "share a dtype"),
    ("not a tensor", lambda: _bad(q=[[1.0]]), TypeError, "torch.Tensor"),
    ("3-d", lambda: _bad(q=qkv()[0][0]), ValueError, "batch, seqlen, nheads, headdim"),
    ("headdim not contiguous", lambda: _bad(q=qkv()[0].transpose(1, 3).contiguous().transpose(1, 3)),
     ValueError, "contiguous in its last dim"),
    ("device mismatch", lambda: _bad(k=qkv()[1].to("meta"), v=qkv()[2].to("meta")), ValueError, "one device"),
    ("batch mismatch", lambda: _bad(k=qkv(batch=2)[1], v=qkv(batch=2)[2]), ValueError, "batch size"),
    ("head dim mismatch", lambda: _bad(k=qkv(head_dim=32)[1], v=qkv(head_dim=32)[2]), ValueError, "head dim"),
    ("k/v mismatch", lambda: _bad(v=qkv(seqlen_k=25)[2]), ValueError, "same shape"),
    ("nheads % nheads_kv", lambda: _bad(k=qkv(nheads_kv=3)[1], v=qkv(nheads_kv=3)[2]), ValueError, "multiple"),
    ("head dim 20", lambda: {k: t for k, t in zip("qkv", qkv(head_dim=20))}, ValueError, "multiple of 8"),
    ("head dim 264", lambda: {k: t for k, t in zip("qkv", qkv(head_dim=264))}, ValueError, "up to 256"),
    ("empty", lambda: {k: t for k, t in zip("qkv", qkv(seqlen_q=0))}, ValueError, "empty"),
    ("negative scale", lambda: _bad(softmax_scale=-1.0), ValueError, "positive finite"),
    ("nan scale", lambda: _bad(softmax_scale=float("nan")), ValueError, "positive finite"),
]


def _backward_on(args):
    """kernels.attention_backward on the bad q, k, v (and scale) of `args`, with a good dout, out and lse."""
    good_q = qkv()[0]
    dout, out = torch.randn_like(good_q), torch.randn_like(good_q)
    lse = torch.randn(1, 4, 24)
    return kernels.attention_backward(dout, args["q"], args["k"], args["v"], out, lse,
                                      args.get("softmax_scale"))


ENTRY_POINTS = {"flash_attn_func": lambda args: flash_attn_func(**args),
                "attention_forward": lambda args: kernels.attention_forward(**args),
                "attention_backward": _backward_on}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name, make, error, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_before_launch(name, make, error, message, entry, monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", "triton")
    launched = []
    monkeypatch.setattr("kernels.ops.attention_forward_triton", lambda *a: launched.append(a))
    monkeypatch.setattr("kernels.ops.attention_backward_triton", lambda *a: launched.append(a))
    with pytest.raises(error, match=message):
        ENTRY_POINTS[entry](make())
    assert not launched


def test_backward_checks_dout_out_and_lse():
    q, k, v = qkv()
    out, lse = attention_ref(q, k, v, dtype=torch.float32)
    out = out.to(q.dtype)
    dout = torch.randn_like(out)
    bad = [((q[:, :5], q, k, v, out, lse), "dout must have q's shape"),
           ((dout.half(), q, k, v, out, lse), "dout must have q's shape, dtype"),
           ((dout, q, k, v, out.to("meta"), lse), "out must have q's shape, dtype and device"),
           ((dout, q, k, v, out.transpose(1, 3).contiguous().transpose(1, 3), lse), "out must be contiguous"),
           ((dout, q, k, v, out, lse.transpose(1, 2)), "lse must be float32"),
           ((dout, q, k, v, out, lse.double()), "lse must be float32"),
           ((dout, q, k, v, out, lse, -1.0), "softmax_scale")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            kernels.attention_backward(*args)


@pytest.mark.parametrize("impl", IMPLS)
def test_building_blocks_against_float64(impl, monkeypatch):
    """attention_forward's (out, lse) and attention_backward's gradients from them, GQA and causal with
    seqlen_q > seqlen_k (rows that see no key: out 0, lse +inf, no gradient)."""
    monkeypatch.setenv("KERNELS_IMPL", impl)
    q, k, v = qkv(seqlen_q=40, seqlen_k=24, nheads=4, nheads_kv=2, seed=3)
    out, lse = kernels.attention_forward(q, k, v, causal=True)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = attention_ref(q64, k64, v64, causal=True)
    assert (out.double() - ref).abs().max() < 2e-2
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert (lse[:, :, 16:].double() - ref_lse[:, :, 16:]).abs().max() < 1e-4
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out.dtype)
    grads = kernels.attention_backward(dout, q, k, v, out, lse, causal=True)
    ref.backward(dout.double())
    for g, r in zip(grads, (q64.grad, k64.grad, v64.grad)):
        assert g.shape == r.shape and g.dtype == torch.bfloat16
        assert (g.double() - r).norm() / r.norm() < 2e-2


@on_interpreter
def test_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("KERNELS_IMPL", raising=False)
    assert select_impl(cpu) == "triton"
    for impl in ("auto", "triton", "reference"):
        monkeypatch.setenv("KERNELS_IMPL", impl)
        assert select_impl(cpu) == ("triton" if impl == "auto" else impl)
        assert select_backward_impl(torch.empty(1, 1, 1, 64), False) == select_impl(cpu)
    monkeypatch.setenv("KERNELS_IMPL", "gluon")
    with pytest.raises(RuntimeError, match="gluon needs an sm_90 GPU"):
        select_impl(cpu)
    monkeypatch.setenv("KERNELS_IMPL", "cudnn")
    with pytest.raises(ValueError, match="KERNELS_IMPL must be one of"):
        flash_attn_func(*qkv())


@on_interpreter
def test_dispatch_is_read_per_call(monkeypatch):
    calls = []
    monkeypatch.setattr("kernels.ops.attention_forward_triton", lambda *a: calls.append("triton") or
                        (torch.zeros_like(a[0]), torch.zeros(a[0].shape[0], a[0].shape[2], a[0].shape[1])))
    monkeypatch.setenv("KERNELS_IMPL", "triton")
    flash_attn_func(*qkv())
    monkeypatch.setenv("KERNELS_IMPL", "reference")
    out = flash_attn_func(*qkv())
    assert calls == ["triton"] and out.abs().sum() > 0


@pytest.mark.hopper
def test_auto_picks_gluon_only_where_it_measured_faster(monkeypatch):
    from kernels.fp8 import fp8_backend
    monkeypatch.setenv("KERNELS_IMPL", "auto")
    cuda = torch.device("cuda")
    assert all(select_impl(cuda, d) == "gluon" for d in (64, 128, 256))
    assert select_impl(cuda, 96) == "triton" and select_impl(cuda) == "triton"  # no Gluon tile, no shape given
    assert fp8_backend(cuda, 128) == "gluon" and fp8_backend(cuda, 256) == "gluon"
    assert fp8_backend(cuda, 64) == "triton"
    monkeypatch.setenv("KERNELS_IMPL", "triton")
    assert fp8_backend(cuda, 128) == "triton"


@pytest.mark.hopper
def test_backward_runs_on_gluon_where_it_applies(monkeypatch):
    q = lambda d: torch.empty(1, 1, 1, d, device="cuda")  # noqa: E731
    for impl in ("auto", "gluon"):
        monkeypatch.setenv("KERNELS_IMPL", impl)
        assert all(select_backward_impl(q(d), False) == "gluon" for d in (64, 128, 256))
        assert select_backward_impl(q(96), False) == "triton"  # no Gluon tile at head dim 96
        assert select_backward_impl(q(128), True) == "triton"  # Gluon's dQ uses atomics
    monkeypatch.setenv("KERNELS_IMPL", "triton")
    assert select_backward_impl(q(128), False) == "triton"
