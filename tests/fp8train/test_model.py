"""GPT shapes, weight tying, positions (learned vs rotary), GQA, and the attention backends against float64."""
import math

import pytest
import torch

from fp8train import attention
from fp8train.config import ModelConfig
from fp8train.model import GPT, apply_rotary, rotary_tables
from kernels.reference import attention_ref


def model_cfg(**kw):
    return ModelConfig(**{"vocab_size": 50, "n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 12, **kw})


def make(backend="sdpa", **kw):
    torch.manual_seed(0)
    return GPT(model_cfg(**kw), attention.build(backend, {}))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_shapes_and_loss(positions):
    model = make(positions=positions)
    idx = torch.randint(50, (3, 12))
    assert model(idx).shape == (3, 12, 50)
    loss = model(idx, torch.randint(50, (3, 12)))
    # Near-uniform predictions at init: loss close to log(vocab).
    assert abs(loss.item() - math.log(50)) < 0.2
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(50, (1, 13)))


def test_weight_tying():
    tied, untied = make(), make(tie_weights=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params(False) - tied.num_params(False) == 50 * 16
    # Non-embedding count (MFU's N): drops positions, and the token table only when untied.
    assert tied.num_params() == tied.num_params(False) - 12 * 16
    assert untied.num_params() == untied.num_params(False) - 12 * 16 - 50 * 16


def test_rotary_has_no_position_table_and_sees_order():
    model = make(positions="rotary")
    assert model.pos_emb is None and not any("rope" in k for k in model.state_dict())
    idx = torch.randint(50, (1, 12))
    # Causal: position 0's output cannot depend on later tokens, and shifting inputs changes outputs.
    out = model(idx)
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 50
    assert torch.allclose(model(changed)[0, :5], out[0, :5], atol=1e-6)
    assert not torch.allclose(model(changed)[0, 5:], out[0, 5:])


def test_rotary_matches_complex_rotation_and_is_relative():
    torch.manual_seed(1)
    head_dim, seq = 8, 10
    cos, sin = rotary_tables(seq, head_dim, 10000.0)
    x = torch.randn(2, seq, 3, head_dim, dtype=torch.float64)
    got = apply_rotary(x.float(), cos, sin).double()
    # Reference: pairs (i, i + d/2) as complex numbers times exp(i * pos * theta^(-2i/d)).
    freqs = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * freqs
    rotation = torch.polar(torch.ones_like(angle), angle)[:, None]
    z = torch.complex(x[..., : head_dim // 2], x[..., head_dim // 2:]) * rotation
    want = torch.cat((z.real, z.imag), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # q.k after rotation depends on the position difference only.
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    rot = lambda v, p: apply_rotary(v.expand(1, seq, 1, head_dim).contiguous(), cos, sin)[0, p, 0]
    assert torch.allclose(rot(q, 3) @ rot(k, 1), rot(q, 7) @ rot(k, 5), atol=1e-5)


def _as_mha(gqa: GPT) -> GPT:
    """The same network with every key/value head copied to each query head of its group: full multi-head
    attention, whose q, k, v rows are 3 x d_model."""
    cfg = gqa.cfg
    mha = GPT(ModelConfig(**{**vars(cfg), "n_kv_head": None}), attention.build("sdpa", {}))
    state = gqa.state_dict()
    head_dim, group = cfg.d_model // cfg.n_head, cfg.n_head // cfg.n_kv_head
    for i in range(cfg.n_layer):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[key].split(gqa.blocks[i].attn.qkv_sizes)
        k, v = (w.view(cfg.n_kv_head, head_dim, -1).repeat_interleave(group, dim=0).flatten(0, 1) for w in (k, v))
        state[key] = torch.cat((q, k, v))
    mha.load_state_dict(state)
    return mha


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa_is_attention_with_key_value_heads_shared_by_groups(n_kv_head, positions):
    """GQA (model.n_kv_head): query head i reads key/value head i // (n_head / n_kv_head), the kernels'
    convention, so the model equals full multi-head attention with each key/value head's weights copied to its
    group's query heads (1: MQA); its q, k, v projection has d_model + 2 n_kv_head head_dim rows."""
    gqa = make(n_head=4, d_model=32, n_kv_head=n_kv_head, positions=positions)
    assert gqa.blocks[0].attn.qkv.weight.shape == (32 + 2 * n_kv_head * 8, 32)
    idx = torch.randint(50, (3, 12))
    torch.testing.assert_close(gqa(idx), _as_mha(gqa)(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("causal", [True, False])
def test_backend_matches_float64(backend, causal):
    torch.manual_seed(2)
    q = torch.randn(2, 9, 4, 16)
    k, v = torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)  # GQA: 2 kv heads for 4 query heads
    out = attention.build(backend, {})(q, k, v, causal)
    want, _ = attention_ref(q, k, v, causal=causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=2e-6)


def test_backends_give_the_same_model_gradients():
    idx = torch.randint(50, (2, 12))
    grads = []
    for backend in ("reference", "sdpa"):
        model = make(backend)
        model(idx, idx).backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def _grads_in_bf16(backend, options, idx, **model):
    """Per-parameter gradients of the loss under bf16 autocast (what the kernel backends need), the attention
    input projection split into its q, k and v rows so that each of dq, dk, dv has gradients of its own."""
    torch.manual_seed(0)
    model = GPT(model_cfg(d_model=128, block_size=64, **model), attention.build(backend, options))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx, idx).backward()
    grads = {}
    sizes = model.blocks[0].attn.qkv_sizes
    for name, p in model.named_parameters():
        parts = p.grad.double().split(sizes) if name.endswith("attn.qkv.weight") else (p.grad.double(),)
        grads.update({f"{name}[{i}]": g for i, g in enumerate(parts)})
    return grads


@pytest.mark.parametrize("n_kv_head", [None, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize("backend, options, tol", [
    # Largest error over the parameters, measured (session 25; MHA / MQA): 0.0073 / 0.0075, bf16 roundings only;
    # 0.037 / 0.037, e4m3 Q, K, V and P. (Session 24's note gave 0.004 / 0.023; not reproduced.)
    ("flash", {"impl": "reference"}, 1e-2),
    ("fp8", {"impl": "reference", "block_m": 32, "block_n": 32}, 6e-2),
])
def test_kernel_backends_give_the_model_gradients_of_sdpa(backend, options, tol, n_kv_head):
    """Every parameter's gradient (dq, dk, dv each reach their own rows of qkv.weight) against SDPA's at the same
    weights and batch, head dim 64, with two query heads on their own key/value heads or on one shared (MQA: dk
    and dv summed over the group); the kernels' arithmetic through their PyTorch reference backend."""
    idx = torch.randint(50, (2, 64), generator=torch.Generator().manual_seed(5))
    want = _grads_in_bf16("sdpa", {}, idx, n_kv_head=n_kv_head)
    got = _grads_in_bf16(backend, options, idx, n_kv_head=n_kv_head)
    for name, g in want.items():
        assert (got[name] - g).norm() / g.norm() < tol, name


def test_registry_names_and_options():
    @attention.register("test_scaled")
    def _scaled(factor: float = 1.0):
        sdpa = attention.build("sdpa", {})
        return lambda q, k, v, causal: sdpa(q, k, v, causal) * factor

    try:
        q = torch.randn(1, 4, 2, 8)
        out = attention.build("test_scaled", {"factor": 2.0})(q, q, q, True)
        torch.testing.assert_close(out, 2 * attention.build("sdpa", {})(q, q, q, True))
        with pytest.raises(attention.ConfigError, match="attention.options"):
            attention.build("test_scaled", {"bogus": 1})
        with pytest.raises(ValueError, match="already registered"):
            attention.register("sdpa")(lambda: None)
    finally:
        attention._FACTORIES.pop("test_scaled")


def test_gpt2_presets_have_their_published_sizes():
    """conf/model's presets, composed by Hydra as a run composes them, built on the meta device (shapes without
    memory); GPT-2's vocabulary padded to 50304 as the GPT-2 data presets have it."""
    from fp8train_testing import compose_raw

    sizes = {}
    for name in ("gpt2", "gpt2_medium", "gpt_1p3b"):
        fields = dict(compose_raw([f"model={name}", "model.vocab_size=50304"]).model)
        with torch.device("meta"):
            sizes[name] = GPT(ModelConfig(**fields), attention.build("sdpa", {})).num_params(False) / 1e6
    assert 123 < sizes["gpt2"] < 125 and 353 < sizes["gpt2_medium"] < 356 and 1300 < sizes["gpt_1p3b"] < 1320
