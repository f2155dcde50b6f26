"""torch.compile through the custom ops: fake implementations, autograd, no graph break."""
import pytest
import torch
import torch.nn.functional as F

from kernels import flash_attn_func


def qkv(device, batch=2, seqlen=32, nheads=4, nheads_kv=2, head_dim=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = [(batch, seqlen, nheads, head_dim)] + [(batch, seqlen, nheads_kv, head_dim)] * 2
    return [torch.randn(s, generator=g, device=device, dtype=dtype).requires_grad_() for s in shapes]


def test_custom_ops_pass_opcheck(monkeypatch):
    """Schema, fake (meta) implementations and autograd registration, as torch.library checks them."""
    monkeypatch.setenv("KERNELS_IMPL", "reference")
    q, k, v = qkv("cpu")
    torch.library.opcheck(torch.ops.kernels.flash_attn_fwd.default, (q, k, v, 0.125, True, False))
    out, lse = torch.ops.kernels.flash_attn_fwd(q, k, v, 0.125, True, False)
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, 0.125, True, False)
    torch.library.opcheck(torch.ops.kernels.flash_attn_bwd.default, args)


def test_fake_tensors_give_shapes_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 100, 8, 128, dtype=torch.float16)
        k = torch.empty(2, 300, 2, 128, dtype=torch.float16)
        out, lse = flash_attn_func(q, k, k, causal=True, return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (2, 8, 100) and lse.dtype == torch.float32


def test_compile_fullgraph_matches_eager(monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", "reference")

    def loss_fn(q, k, v):
        return flash_attn_func(q, k, v, causal=True).float().square().mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")  # aot_eager: no C++ compiler needed
    q, k, v = qkv("cpu")
    eager_loss = loss_fn(q, k, v)
    eager_grads = torch.autograd.grad(eager_loss, (q, k, v))
    compiled_loss = compiled(q, k, v)
    compiled_grads = torch.autograd.grad(compiled_loss, (q, k, v))
    assert torch.equal(eager_loss, compiled_loss)
    assert all(torch.equal(a, b) for a, b in zip(eager_grads, compiled_grads))


class TinyBlock(torch.nn.Module):
    """A GPT block's shape of work: attention through flash_attn_func, then an MLP."""

    def __init__(self, dim=256, nheads=4, nheads_kv=2):
        super().__init__()
        self.nheads, self.nheads_kv, self.head_dim = nheads, nheads_kv, dim // nheads
        self.qkv = torch.nn.Linear(dim, (nheads + 2 * nheads_kv) * self.head_dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(F.rms_norm(x, x.shape[-1:])).split(
            [self.nheads * self.head_dim, self.nheads_kv * self.head_dim, self.nheads_kv * self.head_dim], dim=-1)
        y = flash_attn_func(q.view(b, t, self.nheads, self.head_dim), k.view(b, t, self.nheads_kv, self.head_dim),
                            v.view(b, t, self.nheads_kv, self.head_dim), causal=True)
        x = x + self.proj(y.reshape(b, t, -1))
        return x + self.mlp(F.rms_norm(x, x.shape[-1:]))


@pytest.mark.gpu
def test_gpu_compiled_block_fullgraph(monkeypatch):
    monkeypatch.setenv("KERNELS_IMPL", "triton")
    torch.manual_seed(0)
    block = TinyBlock().cuda().to(torch.bfloat16)
    x = torch.randn(4, 300, 256, device="cuda", dtype=torch.bfloat16)

    def step(model):
        loss = model(x).float().square().mean()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return loss.detach(), grads

    torch._dynamo.reset()
    eager_loss, eager_grads = step(block)
    compiled_loss, compiled_grads = step(torch.compile(block, fullgraph=True))
    assert torch.allclose(compiled_loss, eager_loss, rtol=2e-2)
    for a, b in zip(eager_grads, compiled_grads):
        assert ((a.float() - b.float()).norm() / a.float().norm()) < 5e-2


def test_eager_calls_skip_the_custom_op(monkeypatch):
    """Eager autograd runs the same implementation without the op's dispatch (kernels.ops.eager_autograd)."""
    monkeypatch.setenv("KERNELS_IMPL", "reference")
    q, k, v = qkv("cpu")
    out = flash_attn_func(q, k, v, causal=True)
    assert type(out.grad_fn).__name__.startswith("_fwd_impl_eager")
    dq, dk, dv = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    out_op, _ = torch.ops.kernels.flash_attn_fwd(q, k, v, q.shape[-1] ** -0.5, True, False)
    grads_op = torch.autograd.grad(out_op.float().square().sum(), (q, k, v))
    assert torch.equal(out, out_op)
    assert all(torch.equal(a, b) for a, b in zip((dq, dk, dv), grads_op))
