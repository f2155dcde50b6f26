"""FP8 quantization scheme (kernels.quant) and the Triton pre-pass kernel that must reproduce it."""
from dataclasses import replace

import pytest
import torch

from kernels.quant import (BLOCK_SIZES, V_SEQ_ALIGN, WGMMA_KEY_GROUP, FP8Config, block_amax, check_qkv, dequantize,
                           from_wgmma_key_order, quantize_qkv_ref, rotate, rows_of, to_wgmma_key_order)
from kernels.hadamard import incoherence_matrix
from kernels.triton.fp8_dequant import dequantize_checked
from kernels.triton.fp8_quant import prepass_plan, prepass_tiles, quantize_qkv_triton
from kernels.triton.rotate import rotate_back

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Mantissa bits and smallest normal exponent: a value's rounding error is at most
# half an ulp, 2**-(mant+1) relative for normals and scale * 2**(min_exp-mant-1) below.
FP8_GRID = {"e4m3": (3, -6), "e5m2": (2, -14)}


def make_qkv(b, sq, sk, h, hk, d, seed=0, dtype=torch.bfloat16, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, s, heads, d, generator=gen).to(dtype=dtype, device=device)
                 for s, heads in ((sq, h), (sk, hk), (sk, hk)))


def fp8_ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in representable steps between two fp8 tensors of one format."""
    def ordinal(x):
        bits = x.view(torch.uint8).int()
        mag = bits & 0x7F
        return torch.where(bits >= 0x80, -mag, mag)
    return (ordinal(a) - ordinal(b)).abs()


def test_config_defaults_and_properties():
    cfg = FP8Config()
    assert (cfg.block_m, cfg.block_n, cfg.hadamard, cfg.granularity, cfg.fmt, cfg.seed) == (128, 128, True, "block",
                                                                                            "e4m3", 0)
    assert cfg.dtype == torch.float8_e4m3fn and cfg.fp8_max == 448.0
    assert FP8Config(fmt="e5m2").fp8_max == 57344.0


@pytest.mark.parametrize("kwargs, field", [
    ({"block_m": 100}, "block_m"), ({"block_n": 16}, "block_n"), ({"block_m": 128.0}, "block_m"),
    ({"granularity": "row"}, "granularity"), ({"fmt": "e4m3fnuz"}, "fmt"), ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"hadamard": 1}, "hadamard"),
])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FP8Config(**kwargs)


def test_input_checks():
    q, k, v = make_qkv(1, 8, 8, 2, 2, 64, device="cpu")
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        check_qkv(q.float(), k, v, FP8Config())
    q96, k96, v96 = make_qkv(1, 8, 8, 2, 2, 96, device="cpu")
    with pytest.raises(ValueError, match="power-of-two"):
        check_qkv(q96, k96, v96, FP8Config())
    with pytest.raises(ValueError, match="head dims"):
        check_qkv(q96, k96, v96, FP8Config(hadamard=False))
    with pytest.raises(ValueError, match="multiple of nheads_kv"):
        check_qkv(*make_qkv(1, 8, 8, 3, 2, 64, device="cpu"), FP8Config())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("granularity", ["block", "head", "tensor"])
@pytest.mark.parametrize("hadamard", [True, False])
def test_quantize_dequantize_error_bound(fmt, granularity, hadamard):
    cfg = FP8Config(block_m=32, block_n=64, hadamard=hadamard, granularity=granularity, fmt=fmt, seed=7)
    q, k, v = make_qkv(2, 70, 100, 4, 2, 64, seed=1, device="cpu")
    q[0, 5, 1, 3] = 60.0  # an outlier, so that blocks differ
    x = quantize_qkv_ref(q, k, v, cfg)
    mant, min_exp = FP8_GRID[fmt]
    exacts = (rotate(q, 7), rotate(k, 7)) if hadamard else (q.float(), k.float())
    codes = (x.q, x.k, x.v_t[..., :100].permute(0, 3, 1, 2))
    for exact, deq, code, scale, block in zip(exacts + (v.float(),), dequantize(x), codes,
                                              (x.q_scale, x.k_scale, x.v_scale), (32, 64, 64)):
        s = rows_of(scale, block, exact.shape[1])
        bound = exact.abs() * 2.0 ** -(mant + 1) + s * 2.0 ** (min_exp - mant - 1)
        assert ((deq - exact).abs() <= bound * (1 + 1e-6)).all()
        # amax-based scales put each scale group's largest entry on fp8's largest value
        amax = block_amax(code.float(), block)
        if granularity == "block":
            assert (amax == cfg.fp8_max).all()
        else:
            assert amax.max() == cfg.fp8_max


def test_layouts_and_scale_granularity():
    q, k, v = make_qkv(2, 70, 100, 4, 2, 64, device="cpu")
    x = quantize_qkv_ref(q, k, v, FP8Config(block_m=32, block_n=64))
    assert x.q.shape == (2, 70, 4, 64) and x.k.shape == (2, 100, 2, 64) and x.v_t.shape == (2, 2, 64, 112)
    assert x.q_scale.shape == (2, 4, 3) and x.k_scale.shape == x.v_scale.shape == (2, 2, 2)
    assert torch.equal(x.v_t[..., 100:].float(), torch.zeros(2, 2, 64, 12))
    torch.testing.assert_close(x.v_t[..., :100].float() * x.v_scale.repeat_interleave(64, 2)[:, :, None, :100],
                               v.float().permute(0, 2, 3, 1), rtol=2**-4, atol=1e-3)
    head = quantize_qkv_ref(q, k, v, FP8Config(block_m=32, granularity="head"))
    assert torch.equal(head.q_scale, head.q_scale[..., :1].expand_as(head.q_scale))
    tensor = quantize_qkv_ref(q, k, v, FP8Config(block_m=32, granularity="tensor"))
    assert torch.equal(tensor.q_scale, tensor.q_scale.flatten()[0].expand_as(tensor.q_scale))
    assert (tensor.q_scale >= head.q_scale).all() and (head.q_scale >= x.q_scale).all()


@pytest.mark.parametrize("quantize", [quantize_qkv_ref, quantize_qkv_triton])
def test_zero_block_gets_scale_one(quantize):
    q, k, v = make_qkv(1, 64, 64, 1, 1, 64)
    q[:, :32] = 0
    x = quantize(q, k, v, FP8Config(block_m=32, block_n=32))
    assert x.q_scale[0, 0, 0].item() == 1.0 and torch.isfinite(x.q_scale).all()
    assert torch.equal(x.q[:, :32].float(), torch.zeros(1, 32, 1, 64, device=q.device))


CASES = [  # (batch, seqlen_q, seqlen_k, nheads, nheads_kv, headdim), config
    ((1, 70, 45, 4, 2, 64), FP8Config(block_m=64, block_n=32)),
    ((2, 33, 33, 2, 1, 128), FP8Config(block_m=32, block_n=32, granularity="head", fmt="e5m2")),
    ((1, 40, 72, 2, 2, 64), FP8Config(block_m=32, block_n=64, granularity="tensor", hadamard=False, seed=3)),
    ((1, 70, 40, 2, 1, 256), FP8Config(block_m=32, block_n=32, seed=5)),  # head dim 256: two halves, butterfly
    ((1, 200, 96, 2, 2, 128), FP8Config(block_m=128, block_n=64)),  # Q blocks larger than a program's registers
    pytest.param((2, 3000, 1000, 16, 4, 128), FP8Config(block_m=256), marks=pytest.mark.gpu),
    pytest.param((1, 1000, 600, 4, 4, 256), FP8Config(block_n=256, seed=1), marks=pytest.mark.gpu),
    pytest.param((2, 1000, 1500, 16, 4, 128), FP8Config(), marks=pytest.mark.gpu),
    pytest.param((1, 777, 2049, 8, 8, 256), FP8Config(block_m=64, granularity="head"), marks=pytest.mark.gpu),
    pytest.param((3, 512, 512, 4, 2, 64), FP8Config(block_n=256, granularity="tensor", fmt="e5m2"),
                 marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("shape, cfg", CASES)
def test_prepass_kernel_matches_reference(shape, cfg):
    q, k, v = make_qkv(*shape, seed=2)
    got, want = quantize_qkv_triton(q, k, v, cfg), quantize_qkv_ref(q, k, v, cfg)
    for name in ("q_scale", "k_scale", "v_scale"):  # fp32 rotation sums may differ in the last bits
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-6, atol=0)
    for name in ("q", "k", "v_t"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype == cfg.dtype
        dist = fp8_ulp_distance(a, b)
        assert dist.max().item() <= 1, f"{name}: {int((dist > 0).sum())} entries differ"
        assert (dist > 0).float().mean().item() < 1e-3  # fp32 rotation sums may differ by an ulp, rarely


@pytest.mark.parametrize("quantize", [quantize_qkv_ref, quantize_qkv_triton])
def test_huge_outliers_stay_in_range(quantize):
    q, k, v = make_qkv(1, 64, 64, 2, 2, 64, seed=4)
    gen = torch.Generator().manual_seed(0)
    for t in (q, k, v):
        hit = torch.rand(t.shape, generator=gen) < 0.01
        t[hit.to(t.device)] = 1e4
    x = quantize(q, k, v, FP8Config(block_m=32, block_n=32))
    for exact, deq in zip((rotate(q, 0), rotate(k, 0), v.float()), dequantize(x)):
        assert torch.isfinite(deq).all()
        assert ((deq - exact).abs() <= exact.abs() * 2**-4 + 1e4 / 448 * 2**-10 + 1e-3).all()


@pytest.mark.parametrize("head_dim", [64, 256])  # 256: the kernel's two column halves, the bad one first
@pytest.mark.parametrize("quantize", [quantize_qkv_ref, quantize_qkv_triton])
def test_non_finite_input_gives_its_block_a_nan_scale(quantize, head_dim):
    q, k, v = make_qkv(1, 64, 64, 2, 1, head_dim, seed=5)
    q[0, 40, 1, 7] = float("nan")
    k[0, 3, 0, 0] = float("inf")
    v[0, 63, 0, 5] = float("-inf")
    x = quantize(q, k, v, FP8Config(block_m=32, block_n=32))
    for scale, bad in ((x.q_scale, (0, 1, 1)), (x.k_scale, (0, 0, 0)), (x.v_scale, (0, 0, 1))):
        assert torch.isnan(scale[bad])
        assert torch.isfinite(scale).sum() == scale.numel() - 1


def test_wgmma_key_order_is_the_documented_permutation_and_round_trips():
    keys = torch.arange(48)
    stored = to_wgmma_key_order(keys)
    for a in range(3):
        for t in range(4):
            for h in range(2):
                for b in range(2):
                    assert stored[16 * a + 4 * t + 2 * h + b] == 16 * a + 8 * h + 2 * t + b
    assert not torch.equal(stored, keys)
    x = torch.randn(2, 3, 5, 64)
    assert torch.equal(from_wgmma_key_order(to_wgmma_key_order(x)), x)
    assert torch.equal(to_wgmma_key_order(from_wgmma_key_order(x)), x)
    with pytest.raises(ValueError, match="multiple of 16"):
        to_wgmma_key_order(torch.zeros(40))
    # Groups never straddle a scale block or V^T's padded end.
    assert all(block % WGMMA_KEY_GROUP == 0 for block in BLOCK_SIZES) and V_SEQ_ALIGN % WGMMA_KEY_GROUP == 0


@pytest.mark.parametrize("quantize", [quantize_qkv_ref, quantize_qkv_triton])
def test_v_key_order_is_a_pure_permutation_of_v_t(quantize):
    """Same codes and scales in either order; padding keys (45 of 48 here) stay zeros wherever they land."""
    q, k, v = make_qkv(1, 70, 45, 4, 2, 64, seed=6)
    cfg = FP8Config(block_m=64, block_n=32)
    natural, wgmma = quantize(q, k, v, cfg), quantize(q, k, v, cfg, v_key_order="wgmma")
    assert (natural.v_key_order, wgmma.v_key_order) == ("natural", "wgmma")
    assert wgmma.v_t.shape == natural.v_t.shape and wgmma.v_t.is_contiguous()
    assert torch.equal(wgmma.v_t.view(torch.uint8), to_wgmma_key_order(natural.v_t).view(torch.uint8))
    assert torch.equal(from_wgmma_key_order(wgmma.v_t)[..., 45:].float(), torch.zeros(1, 2, 64, 3, device=q.device))
    for name in ("q", "k", "q_scale", "k_scale", "v_scale"):
        assert torch.equal(getattr(wgmma, name).view(torch.uint8), getattr(natural, name).view(torch.uint8))
    for a, b in zip(dequantize(wgmma), dequantize(natural)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="v_key_order"):
        quantize(q, k, v, cfg, v_key_order="sorted")


@pytest.mark.parametrize("shape, cfg", [CASES[0], CASES[3]])
def test_prepass_kernel_matches_reference_in_wgmma_order(shape, cfg):
    q, k, v = make_qkv(*shape, seed=2)
    got, want = (quantize(q, k, v, cfg, v_key_order="wgmma") for quantize in (quantize_qkv_triton, quantize_qkv_ref))
    torch.testing.assert_close(got.v_scale, want.v_scale, rtol=1e-6, atol=0)
    dist = fp8_ulp_distance(got.v_t, want.v_t)
    assert dist.max().item() <= 1 and (dist > 0).float().mean().item() < 1e-3


@pytest.mark.parametrize("v_key_order", ["natural", "wgmma"])
@pytest.mark.parametrize("shape, cfg", [CASES[0], CASES[3], CASES[4], CASES[7], CASES[8]])
def test_v_transposed_on_the_tensor_cores_is_the_same_v_t(shape, cfg, v_key_order):
    """PrepassTiles.v_by_dot (V^T as x^T times a 0/1 key permutation) stores what the register transpose stores
    (up to the sign of a zero: x * 1 + 0 turns -0 into +0)."""
    q, k, v = make_qkv(*shape, seed=8)
    tiles = prepass_tiles(shape[-1], q.device)
    a, b = (quantize_qkv_triton(q, k, v, cfg, tiles=replace(tiles, v_by_dot=on), v_key_order=v_key_order)
            for on in (False, True))
    assert torch.equal(a.v_scale, b.v_scale)
    assert torch.equal(a.v_t.float(), b.v_t.float())


FLAT_CASES = [  # seqlens that are multiples of the blocks (else PrepassTiles.flat is declined)
    ((2, 64, 96, 4, 2, 64), FP8Config(block_m=32, block_n=32)),
    ((2, 64, 32, 2, 1, 256), FP8Config(block_m=32, block_n=32, seed=5)),
    pytest.param((2, 1024, 2048, 16, 4, 128), FP8Config(), marks=pytest.mark.gpu),
    pytest.param((1, 2048, 2048, 8, 8, 256), FP8Config(seed=1), marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("shape, cfg", FLAT_CASES)
def test_flat_descriptors_quantize_alike(shape, cfg):
    """PrepassTiles.flat (q, k, q8, k8 through 2-D (batch·seq, heads·dim) descriptors) stores what the 4-D
    descriptors store, bit for bit: contiguous q, k, v and q, k sliced out of a packed (b, s, 3, h, d) tensor."""
    q, k, v = make_qkv(*shape, seed=int(torch.randint(2**20, ())))
    packed = torch.stack([q, q, q], 2).unbind(2)[:2]  # row stride 3·h·d
    tiles = prepass_tiles(shape[-1], q.device)
    # The flat tile stays in its TMA buffer through the MMA: two stages take the shared memory three take 4-D.
    flat = replace(tiles, flat=True, num_stages=min(tiles.num_stages, 2))
    for inputs in ((q, k, v), (*packed, q)):
        plan = prepass_plan(inputs[0].shape, inputs[1].shape, tuple(t.stride() for t in inputs), q.dtype, q.device,
                            cfg, "wgmma", flat)
        assert plan.launches[0][1]["FLAT"]
        a, f = (quantize_qkv_triton(*inputs, cfg, tiles=t, v_key_order="wgmma") for t in (tiles, flat))
        for name in ("q", "k", "v_t", "q_scale", "k_scale", "v_scale"):
            assert torch.equal(getattr(a, name).view(torch.uint8), getattr(f, name).view(torch.uint8)), name


def test_flat_descriptors_are_declined_where_a_block_would_cross_a_sequence():
    q, k, v = make_qkv(2, 70, 64, 2, 2, 64, seed=0)
    cfg = FP8Config(block_m=32, block_n=32)
    tiles = replace(prepass_tiles(64, q.device), flat=True)
    plan = prepass_plan(q.shape, k.shape, (q.stride(), k.stride(), v.stride()), q.dtype, q.device, cfg, "wgmma", tiles)
    assert not plan.launches[0][1]["FLAT"]
    torch.testing.assert_close(quantize_qkv_triton(q, k, v, cfg, tiles=tiles).q_scale,
                               quantize_qkv_ref(q, k, v, cfg).q_scale, rtol=1e-6, atol=0)


def test_prepass_plans_follow_strides_and_tensors():
    """The pre-pass's cached launch plan (kernels.triton.fp8_quant.prepass_plan) is per shape and strides: q, k, v
    sliced out of a packed (b, s, 3, h, d) tensor and their contiguous copies, called in turn with fresh values,
    quantize alike (bitwise) and as the reference does."""
    cfg = FP8Config(block_m=32, block_n=32)
    gen = torch.Generator().manual_seed(9)
    for _ in range(2):
        qkv = torch.randn(1, 64, 3, 2, 64, generator=gen).to(torch.bfloat16).to(DEVICE)
        packed = qkv.unbind(2)
        got = [quantize_qkv_triton(*inputs, cfg) for inputs in (packed, [t.contiguous() for t in packed], packed)]
        want = quantize_qkv_ref(*packed, cfg)
        for name in ("q", "k", "v_t", "q_scale", "k_scale", "v_scale"):
            a, b, c = (getattr(x, name).view(torch.uint8) for x in got)
            assert torch.equal(a, b) and torch.equal(a, c), name
        dist = fp8_ulp_distance(got[0].q, want.q)
        assert dist.max().item() <= 1 and (dist > 0).float().mean().item() < 1e-3


@pytest.mark.parametrize("v_key_order", ["natural", "wgmma"])
@pytest.mark.parametrize("shape, cfg", [CASES[0], CASES[1], CASES[2], CASES[3], CASES[4], CASES[6], CASES[8]])
def test_dequantize_kernel_is_the_reference_dequantize(shape, cfg, v_key_order):
    """The FP8 backward's operands from the forward's saved pre-pass outputs (kernels.triton.fp8_dequant) are
    kernels.quant.dequantize of them cast to the inputs' dtype, bit for bit: head dims 64 to 256, GQA, both fp8
    formats and V^T key orders, scale blocks smaller and larger than a program's rows, tails, fp16 too."""
    dtype = torch.float16 if cfg.fmt == "e5m2" else torch.bfloat16
    q, k, v = make_qkv(*shape, seed=int(torch.randint(2**20, ())), dtype=dtype)
    x = quantize_qkv_triton(q, k, v, cfg, v_key_order=v_key_order)
    got = dequantize_checked(x, dtype)
    want = [t.to(dtype) for t in dequantize(x)]
    for name, a, b, t in zip("qkv", got, want, (q, k, v)):
        assert a.shape == t.shape and a.dtype == dtype and a.is_contiguous(), name
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), f"{name}: {int((a != b).sum())} differ"


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rotate_back_is_x_times_m_transposed(head_dim, dtype):
    """The backward's map of its dQ'- and dK'-space gradients back to q and k, one launch for both: x·Mᵀ against
    float64, within one rounding to `dtype`. An fp32 input (dQ' as the Gluon backward accumulates it) is rounded
    only after the rotation: correctly rounded but where its (hi, lo) split's < 2^-16 of x decides; a 16-bit one
    is kernels.quant.rotate's arithmetic up to fp32 summation order."""
    seed = int(torch.randint(2**20, ()))
    gen = torch.Generator().manual_seed(seed)
    # dQ' over six decades of row scale; dK' with other rows (GQA, another seqlen)
    a = torch.randn(2, 67, 3, head_dim, generator=gen) * 10.0 ** torch.empty(2, 67, 3, 1).uniform_(-3, 3, generator=gen)
    b = (torch.randn(2, 45, 1, head_dim, generator=gen) * 3).to(dtype)
    got_a, got_b = rotate_back(a.to(DEVICE), b.to(DEVICE), seed, dtype)
    m = incoherence_matrix(head_dim, seed)
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11  # relative
    for got, x in ((got_a, a), (got_b, b)):
        assert got.shape == x.shape and got.dtype == dtype and got.device.type == DEVICE
    got_a, got_b = got_a.cpu().double(), got_b.cpu().double()

    want = a.double() @ m.T
    split_loss = 2.0 ** -16 * a.double().norm(dim=-1, keepdim=True)  # >= what dropping lo's rounding moves an entry
    assert ((got_a - want).abs() <= half_ulp * want.abs() + split_loss).all()
    # The split's 16 bits leave bf16's 8 a margin of 8, fp16's 11 one of 5: ~3% of fp16 entries lie that near a tie.
    correctly_rounded = got_a == want.to(dtype).double()
    assert correctly_rounded.float().mean().item() > (0.99 if dtype == torch.bfloat16 else 0.9)

    want = b.double() @ m.T
    # plus what fp32 sums of d terms may lose where they cancel
    assert ((got_b - want).abs() <= half_ulp * want.abs() + 1e-5 * b.abs().max().item()).all()
    same = got_b == rotate(b, seed, inverse=True).to(dtype).double()
    assert same.float().mean().item() > 0.99


def test_rotate_back_rejects_what_it_cannot_take():
    x = torch.randn(2, 8, 2, 64, device=DEVICE)
    for bad, match in ((x.transpose(1, 2), "contiguous"), (x.double(), "contiguous fp32/bf16/fp16"),
                       (x[..., :48].contiguous(), "last dim 64, 128 or 256")):
        with pytest.raises(ValueError, match=match):
            rotate_back(bad, x, 0, torch.bfloat16)
    with pytest.raises(ValueError, match="share their last dim"):
        rotate_back(x, torch.randn(2, 8, 2, 128, device=DEVICE), 0, torch.bfloat16)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        rotate_back(x, x, 0, torch.float32)
