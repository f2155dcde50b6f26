"""FP8 attention: the forward kernel against the reference scheme, the public op, its straight-through
backward, bad input, and Table 3's kernel/reference agreement."""
import dataclasses
import math

import pytest
import torch

import kernels
from experiments.paper import table3_numerics
from kernels import FP8Config, flash_attn_fp8_func, fp8_attention_forward, quantize_qkv
from kernels.quant import fp8_forward_ref, quantize_qkv_ref, to_wgmma_key_order
from kernels.reference import attention_backward_ref, attention_ref
from kernels.triton.fp8_fwd import fp8_attention_forward_triton
from kernels.triton.fp8_quant import quantize_qkv_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel vs the reference scheme. The interpreter reproduces the reference's fp32 arithmetic; Hopper's
# FP8 MMAs accumulate Q·Kᵀ with ~14-bit precision, which moves S by ~1e-4 relative and flips the fp8
# rounding of a few P, so on the GPU the bound is looser (still 4x below the FP8 error itself, ~4e-2).
SCHEME_TOL = {"cpu": (1e-5, 1e-4), "cuda": (1e-2, 1e-2)}  # (relative error of out, lse absolute error)


def make_qkv(b, sq, sk, h, hk, d, seed=0, dtype=torch.bfloat16, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, s, heads, d, generator=gen).to(dtype=dtype, device=device)
                 for s, heads in ((sq, h), (sk, hk), (sk, hk)))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [  # (batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim), config, causal
    ((1, 100, 77, 4, 2, 64), FP8Config(block_m=64, block_n=32), True),  # seqlen_q > seqlen_k: empty rows
    ((1, 70, 130, 2, 1, 128), FP8Config(block_m=32, granularity="head"), False),
    ((1, 50, 90, 2, 2, 64), FP8Config(block_n=32, granularity="tensor", fmt="e5m2", hadamard=False), True),
    pytest.param((2, 1000, 1000, 16, 4, 128), FP8Config(), True, marks=pytest.mark.gpu),
    pytest.param((1, 777, 3001, 8, 8, 256), FP8Config(block_m=64, granularity="head"), False, marks=pytest.mark.gpu),
    pytest.param((4, 2048, 2048, 8, 2, 64), FP8Config(block_n=64, fmt="e5m2"), False, marks=pytest.mark.gpu),
    pytest.param((1, 4096, 4096, 16, 16, 128), FP8Config(block_n=256), True, marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("shape, cfg, causal", CASES)
def test_forward_kernel_matches_reference_scheme(shape, cfg, causal):
    """Same FP8QKV in, same arithmetic (SCHEME_TOL says what may differ)."""
    q, k, v = make_qkv(*shape, seed=1)
    x = quantize_qkv_triton(q, k, v, cfg)
    scale = shape[-1] ** -0.5
    out, lse = fp8_attention_forward_triton(x, scale, causal, torch.float32)
    ref_out, ref_lse = fp8_forward_ref(x, scale, causal)
    out_tol, lse_tol = SCHEME_TOL[DEVICE]
    assert rel_err(out, ref_out) < out_tol
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite], rtol=0, atol=lse_tol)


def test_p_permuted_as_the_gluon_kernel_does_meets_v_t_in_wgmma_order():
    """kernels.gluon.mainloop.p_operand's reshape/permute of P's columns, against V^T stored in wgmma order:
    the same P·V as natural order (float64, so only summation order differs)."""
    gen = torch.Generator().manual_seed(11)
    p, v_t = torch.rand(64, 128, generator=gen, dtype=torch.float64), torch.randn(32, 128, generator=gen,
                                                                                dtype=torch.float64)
    p_kernel = p.reshape(64, 8, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(64, 128)
    torch.testing.assert_close(p_kernel @ to_wgmma_key_order(v_t).T, p @ v_t.T, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(p_kernel @ v_t.T, p @ v_t.T)  # the permutation matters


@pytest.mark.parametrize("shape, cfg, causal", CASES[:3])
def test_reference_and_triton_forward_read_v_in_wgmma_order(shape, cfg, causal):
    """Both orders give the same attention (identical arithmetic); the Triton kernel on the wgmma order also
    matches the reference scheme."""
    q, k, v = make_qkv(*shape, seed=12)
    scale = shape[-1] ** -0.5
    x, xw = quantize_qkv_ref(q, k, v, cfg), quantize_qkv_ref(q, k, v, cfg, v_key_order="wgmma")
    ref_out, ref_lse = fp8_forward_ref(x, scale, causal)
    out_w, lse_w = fp8_forward_ref(xw, scale, causal)
    assert torch.equal(out_w, ref_out) and torch.equal(lse_w, ref_lse)
    out, lse = fp8_attention_forward_triton(xw, scale, causal, torch.float32)
    assert rel_err(out, ref_out) < SCHEME_TOL[DEVICE][0]
    out_n, lse_n = fp8_attention_forward_triton(x, scale, causal, torch.float32)
    torch.testing.assert_close(out, out_n, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, lse_n, rtol=0, atol=1e-6)


@pytest.mark.parametrize("switch", [False, True])
def test_dispatcher_asks_for_wgmma_order_only_for_gluon_with_the_switch(switch, monkeypatch):
    """The op (and quantize_qkv by default) quantizes V^T in wgmma order exactly when the Gluon forward runs and
    GLUON_FP8_WGMMA_V_ORDER is on; a stand-in for the Gluon forward (the reference scheme) records the order it got.
    The op prepares the forward on the pre-pass's outputs before either launches, so the stand-in reads them only
    when launched, as the kernel does: launched first, it would read unfilled tensors."""
    import kernels.fp8 as fp8
    seen = []

    class FakeGluon:
        @staticmethod
        def prepare_fp8_attention_forward(x, scale, causal, out_dtype):
            seen.append(x.v_key_order)
            b, sq, h, _ = x.q.shape
            out = torch.empty(x.q.shape, dtype=out_dtype, device=x.q.device)
            lse = torch.empty(b, h, sq, device=x.q.device)

            def launch():
                ref_out, ref_lse = fp8_forward_ref(x, scale, causal)
                out.copy_(ref_out)
                lse.copy_(ref_lse)
            return out, lse, launch

    q, k, v = make_qkv(1, 40, 72, 2, 1, 64, seed=13)
    cfg = FP8Config(block_m=32, block_n=32)
    want = flash_attn_fp8_func(q, k, v, causal=True, config=cfg)  # this machine's own backend, natural order
    monkeypatch.setattr(fp8, "GLUON_FP8_WGMMA_V_ORDER", switch)
    monkeypatch.setattr(fp8, "fp8_backend", lambda *args: "gluon")
    monkeypatch.setattr(fp8, "gluon_kernels", lambda: FakeGluon)
    out = flash_attn_fp8_func(q, k, v, causal=True, config=cfg)
    assert seen == ["wgmma" if switch else "natural"]
    torch.testing.assert_close(out.float(), want.float(), rtol=2**-7, atol=1e-5)
    # The public pre-pass lays V^T out for that same forward unless told otherwise.
    assert quantize_qkv(q, k, v, cfg).v_key_order == seen[0]
    assert quantize_qkv(q, k, v, cfg, v_key_order="natural").v_key_order == "natural"


# (relative error of out, mean |lse error|) allowed against float64. Measured over seeds 2-7 on CPU: out 0.040-0.044
# (e4m3) / 0.079-0.088 (e5m2), mean |lse error| 0.009-0.010 / 0.018-0.021; a softmax scale 5% off moves the mean
# |lse error| to 0.042-0.054 in both formats, which these bounds refuse (the out error alone would not).
FP8_TOL = {"e4m3": (0.05, 0.02), "e5m2": (0.1, 0.035)}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_attention_against_float64(fmt, dtype):
    """Gaussian inputs give ~4.4% (e4m3) / ~8.7% (e5m2) relative error: three 3-bit (2-bit) roundings."""
    q, k, v = make_qkv(1, 96, 80, 4, 2, 64, seed=2, dtype=dtype)
    out, lse = flash_attn_fp8_func(q, k, v, causal=True, config=FP8Config(block_m=32, block_n=32, fmt=fmt),
                                   return_attn_probs=True)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (1, 4, 96)
    ref_out, ref_lse = attention_ref(q, k, v, causal=True)
    out_tol, lse_mean_tol = FP8_TOL[fmt]
    assert rel_err(out, ref_out) < out_tol
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))  # rows past seqlen_k see no key
    lse_err = (lse.double() - ref_lse)[torch.isfinite(ref_lse)].abs()
    assert lse_err.max() < 0.25 and lse_err.mean() < lse_mean_tol


@pytest.mark.parametrize("causal", [False, True])
def test_backward_is_straight_through(causal):
    """backward="bf16_inputs": the BF16 backward's gradients from the original q, k, v and the FP8 out and lse.
    (The default, "fp8_operands", has its own oracle in test_fp8_backward.py.)"""
    q, k, v = make_qkv(1, 64, 48, 4, 2, 64, seed=3)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = flash_attn_fp8_func(q, k, v, causal=causal, config=FP8Config(block_m=32, block_n=32),
                                   return_attn_probs=True, deterministic=True, backward="bf16_inputs")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out)
    out.backward(dout)
    scale = 64 ** -0.5
    want = kernels.attention_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, scale, causal,
                                      deterministic=True)
    for got, expected in zip((q.grad, k.grad, v.grad), want):
        assert torch.equal(got, expected)
    exact = attention_backward_ref(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, causal, scale)
    for got, expected in zip((q.grad, k.grad, v.grad), exact):
        assert rel_err(got, expected) < 2e-2


@pytest.mark.parametrize("layout", ["contiguous", "heads_first"])
def test_custom_op_registration(layout):
    """Schema, fake (meta) implementations and autograd registration agree with the real ops, for both
    directions (with the pre-pass outputs that the forward returns and the backward takes) and for dense but
    permuted inputs ((batch, heads, seqlen, d) storage seen as (b, s, h, d)), whose outputs the real ops return
    contiguous: a fake that promised q's strides instead broke torch.compile's
    inductor backend in the backward."""
    q, k, v = make_qkv(1, 40, 37, 2, 1, 64, seed=5)  # GQA, tails: V^T's padding in the fake's shapes too
    if layout == "heads_first":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fields = (32, 32, True, "block", "e4m3", 0)
    fwd_args = (q, k, v, 0.125, True, *fields, "natural", False, "fp8_operands")
    torch.library.opcheck(torch.ops.kernels.flash_attn_fp8_fwd.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    out, lse, *prepassed = torch.ops.kernels.flash_attn_fp8_fwd(*(t.detach() for t in (q, k, v)), *fwd_args[3:])
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)).to(out)
    bwd_args = (dout, *prepassed, out, lse, 0.125, True, *fields, "natural", False)
    torch.library.opcheck(torch.ops.kernels.flash_attn_fp8_bwd.default, bwd_args, test_utils=("test_faketensor",))
    # opcheck's schema test compares the inputs before and after by allclose, which has no fp8 kernel on the CPU:
    # what it checks (no input mutated, no output aliasing one), on the bytes.
    inputs = [t for t in bwd_args if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in inputs]
    grads = torch.ops.kernels.flash_attn_fp8_bwd(*bwd_args)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(before, inputs))
    storages = {t.untyped_storage().data_ptr() for t in inputs}
    assert not any(g.untyped_storage().data_ptr() in storages for g in grads)


def test_pre_pass_and_forward_compose_to_the_op():
    q, k, v = make_qkv(1, 40, 40, 2, 2, 64, seed=6)
    cfg = FP8Config(block_m=32, block_n=32, seed=9)
    x = quantize_qkv(q, k, v, cfg)
    out = fp8_attention_forward(x, causal=True, out_dtype=torch.bfloat16)[0]
    assert torch.equal(out, flash_attn_fp8_func(q, k, v, causal=True, config=cfg))
    out32 = fp8_attention_forward(x, causal=True, out_dtype=torch.float32)[0]
    torch.testing.assert_close(out.float(), out32, rtol=2**-7, atol=1e-6)  # one bf16 rounding


def test_huge_outliers_do_not_overflow():
    """1e4 entries in Q, K and V: amax scales keep every cast in range, so out stays finite and, being a
    convex combination of V's rows, within max|V| (plus one fp8 rounding). Against FP64 such scores
    (~1e4 * 1e4 / 8) make the softmax one-hot and any rounding may pick another key (bf16 attention is
    off by ~35% here too), so the FP64 error bound is checked with the outliers in V alone."""
    q, k, v = make_qkv(1, 64, 64, 2, 2, 64, seed=7)
    gen = torch.Generator().manual_seed(1)
    spikes = [(torch.rand(t.shape, generator=gen) < 0.01).to(t.device) for t in (q, k, v)]
    cfg = FP8Config(block_m=32, block_n=32)
    q_out, k_out, v_out = (t.masked_fill(hit, 1e4) for t, hit in zip((q, k, v), spikes))
    out = flash_attn_fp8_func(q_out, k_out, v_out, config=cfg)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1e4 * (1 + 2**-3)
    out = flash_attn_fp8_func(q, k, v_out, config=cfg)
    assert rel_err(out, attention_ref(q, k, v_out)[0]) < 0.06


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN arithmetic
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_input_propagates_to_the_rows_that_read_it(where):
    """A NaN/inf input makes its block's scale NaN: exactly the output rows reading that block are NaN."""
    q, k, v = make_qkv(1, 96, 96, 2, 2, 64, seed=8)
    {"q": q, "k": k, "v": v}[where][0, 40, 1, 3] = float("nan") if where != "k" else float("inf")
    out = flash_attn_fp8_func(q, k, v, causal=True, config=FP8Config(block_m=32, block_n=32))
    bad = torch.isnan(out).any(dim=-1)[0]  # (seqlen, heads)
    expected = torch.zeros(96, 2, dtype=torch.bool, device=out.device)
    if where == "q":
        expected[32:64, 1] = True  # the query block holding row 40
    else:
        expected[32:, 1] = True  # causal rows that see a key of block 32..63
    assert torch.equal(bad, expected)
    assert torch.isfinite(out[0][~expected]).all()


def test_bad_inputs_raise_clear_errors():
    q, k, v = make_qkv(1, 16, 16, 2, 2, 64)
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        flash_attn_fp8_func(q.float(), k.float(), v.float())
    with pytest.raises(ValueError, match="power-of-two"):
        flash_attn_fp8_func(*make_qkv(1, 16, 16, 2, 2, 96))
    with pytest.raises(TypeError, match="FP8Config"):
        flash_attn_fp8_func(q, k, v, config={"fmt": "e4m3"})
    with pytest.raises(ValueError, match="softmax_scale"):
        flash_attn_fp8_func(q, k, v, softmax_scale=-1.0)
    with pytest.raises(TypeError, match="FP8QKV"):
        fp8_attention_forward((q, k, v))


def test_fp8_forward_refuses_inconsistent_pre_pass_outputs():
    """An FP8QKV made or edited by hand must match its config before any launch: else the kernels read scales
    of the wrong blocks (20% off, silently) or past the end (NaN)."""
    q, k, v = make_qkv(1, 64, 64, 2, 2, 64, seed=7)
    x = quantize_qkv(q, k, v, FP8Config(block_m=32, block_n=32))
    bad = [(dataclasses.replace(x, config=FP8Config(block_m=64, block_n=32)), ValueError, "q_scale must be"),
           (dataclasses.replace(x, k_scale=x.k_scale[..., :1].contiguous()), ValueError, "k_scale must be"),
           (dataclasses.replace(x, v_t=x.v_t[..., :32].contiguous()), ValueError, "v_t must be"),
           (dataclasses.replace(x, q=q), TypeError, "q must be torch.float8_e4m3fn"),
           (dataclasses.replace(x, config=FP8Config(block_m=32, block_n=32, fmt="e5m2")), TypeError, "e5m2"),
           (dataclasses.replace(x, v_scale=x.v_scale.double()), TypeError, "v_scale must be torch.float32"),
           (dataclasses.replace(x, k=x.k.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "contiguous"),
           (dataclasses.replace(x, k=x.k[:, :, :1].contiguous()), ValueError, "v_t must be")]
    unaligned = torch.empty(x.q.numel() + 1, dtype=x.q.dtype, device=x.q.device)[1:].view(x.q.shape)
    unaligned.copy_(x.q)
    bad.append((dataclasses.replace(x, q=unaligned), ValueError, "16-byte aligned"))  # TMA descriptors' base
    for y, error, message in bad:
        with pytest.raises(error, match=message):
            fp8_attention_forward(y)


def test_table3_rows_on_the_reference_path(monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", "reference")
    rows = table3_numerics.run(quick=True, device="cpu")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    assert methods[:5] == ["baseline BF16", "baseline FP16", "ours BF16", "ours FP16", "baseline FP8"]
    assert len(rows) == len(methods) * len(table3_numerics.QUICK_SHAPES)
    for shape in table3_numerics.QUICK_SHAPES:
        rmse = {r["method"]: r["rmse"] for r in rows if (r["batch"], r["seqlen"], r["nheads"], r["headdim"]) == shape}
        assert all(math.isfinite(e) and e > 0 for e in rmse.values())
        assert rmse["ours FP16"] < rmse["ours BF16"] < rmse["ours FP8 (block + Hadamard)"]
        assert rmse["ours FP8 (block + Hadamard)"] < rmse["ours FP8 w/o Hadamard"] < rmse["baseline FP8"]


@pytest.mark.parametrize("shape", [(1, 128, 2, 64), pytest.param((2, 2048, 16, 128), marks=pytest.mark.gpu)])
def test_table3_kernel_and_reference_agree(shape, monkeypatch):
    """Table 3's FP8 rows through the kernels (GPU, or the interpreter) and through the PyTorch reference."""
    q, k, v = table3_numerics.outlier_qkv(shape, seed=0, device=DEVICE)
    ref = attention_ref(q, k, v)[0]
    rmse = {}
    for impl in ("triton", "reference"):
        monkeypatch.setenv("KERNELS_IMPL", impl)
        out = flash_attn_fp8_func(q, k, v)
        rmse[impl] = (out.double() - ref).pow(2).mean().sqrt().item()
    assert rmse["triton"] == pytest.approx(rmse["reference"], rel=0.03)
