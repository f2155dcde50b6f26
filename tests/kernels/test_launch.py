"""kernels.launch.Launcher keys and calls compiled kernels as Triton's own launch would.

`Launcher` reuses a compiled kernel for every launch whose constexprs, options
and `spec_class` per argument match; that is only right if Triton would have
picked the same specialization. Checked against Triton's own binder for sm_90
over arguments that differ where Triton looks (ints equal to 1 or divisible by
16, pointers off 16-byte alignment, input dtypes), for the Gluon forward and
backward (ints not specialized) and the Triton kernels (FP8 pre-pass,
forward, backward: ints and stride tuples specialized). The arguments it passes a compiled kernel are those Triton's
launch passes. Runs in a child process: Gluon needs TRITON_INTERPRET unset
when triton is imported.
"""
import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTS = (1, 16, 17, 4133)


def _launches():
    """[(kernel, args, constexprs, options)]: launches that differ where Triton's specialization looks."""
    import torch

    import kernels.triton.bwd as triton_bwd
    import kernels.triton.fp8_fwd as fp8_fwd
    import kernels.triton.fp8_quant as fp8_quant
    import kernels.triton.fwd as triton_fwd
    from kernels.gluon.bwd import BwdVariant, _kernel_args as bwd_args, attention_bwd_kernel
    from kernels.gluon.forward import Variant, _kernel_args as fwd_args, attention_fwd_kernel
    from kernels.quant import FP8Config

    def f32(aligned):  # a float32 buffer 16-byte aligned or 4 bytes off
        return torch.empty(257)[0 if aligned else 1:]

    launches = []
    fwd_variants = [Variant(torch.bfloat16, 128, False), Variant(torch.float16, 128, False),
                    Variant(torch.float16, 64, True),
                    Variant(torch.float8_e4m3fn, 128, False, out_dtype=torch.bfloat16, q_scale_block=128,
                            kv_scale_block=128, v_wgmma_keys=True)]
    for variant in fwd_variants:
        d = variant.head_dim
        t = torch.empty(2, 32, 2, d, dtype=variant.dtype)
        v = torch.empty(2, 2, d, 32, dtype=variant.dtype) if variant.fp8 else t
        o = torch.empty(2, 32, 2, d, dtype=variant.out_dtype or variant.dtype)
        for aligned, ints in itertools.product((True, False), itertools.product(INTS, repeat=2)):
            scales = (f32(aligned), f32(True), f32(not aligned)) if variant.fp8 else (None, None, None)
            schedule = (torch.zeros(2, 4, dtype=torch.int32), 4) if variant.causal else (None, 0)
            args = fwd_args(variant.descriptors(t, t, v, o), f32(aligned), scales, 0.5,
                            (2, 2, *ints, 32, 32, *schedule))
            launches.append((attention_fwd_kernel, args, variant.constexprs, variant.options))
    # hd128 adds dQ by TMA (its accumulator also goes in as a descriptor, which must be aligned), hd64 by atomics.
    for variant in (BwdVariant(torch.bfloat16, 128, True), BwdVariant(torch.bfloat16, 64, True)):
        t = torch.empty(2, 64, 2, variant.head_dim, dtype=torch.bfloat16)
        dq_acc = torch.empty(2, 64, 2, variant.head_dim)
        descriptors = variant.descriptors(t, t, t, t, t, t, f32(True), f32(True), dq_acc)
        for aligned, seqlen_pad in itertools.product((True, False), (64, 4160)):
            pointer = dq_acc if variant.tile.dq_tma_reduce else f32(aligned)
            args = bwd_args(descriptors, pointer, 0.5, (2, 1, 64, 64, seqlen_pad, 16))
            launches.append((attention_bwd_kernel, args, variant.constexprs, variant.options))

    # The Triton kernels' hosts build their arguments inline: record them instead of launching (no GPU here).
    def recorder(launcher):
        return lambda grid, args, constexprs, options, plan=None: launches.append((launcher.fn, args, constexprs,
                                                                                   options))

    for module, name in ((fp8_quant, "launch_prepass"), (triton_fwd, "launch_forward"), (fp8_fwd, "launch_forward"),
                         (triton_bwd, "launch_preprocess"), (triton_bwd, "launch_dkdv"), (triton_bwd, "launch_dq")):
        setattr(module, name, recorder(getattr(module, name)))
    for dtype, seqlen, nheads in itertools.product((torch.bfloat16, torch.float16), (1, 128, 4133), (1, 16, 17)):
        q = torch.randn(1, seqlen, nheads, 128, dtype=dtype)
        x = fp8_quant.quantize_qkv_triton(q, q, q, FP8Config())
        fp8_fwd.fp8_attention_forward_triton(x, 0.125, seqlen > 1, dtype)
        out, lse = triton_fwd.attention_forward_triton(q, q, q, 0.125, seqlen > 1)
        triton_bwd.attention_backward_triton(q, q, q, q, out, lse, 0.125, seqlen > 1)
    return launches


def _rows():
    from kernels.gluon.forward import HOPPER
    from kernels.launch import Launcher, constexpr_tail, specialization

    rows = []
    for fn, args, constexprs, options in _launches():
        bound, spec = specialization(fn, args, constexprs, options, HOPPER)
        # What Launcher passes a compiled kernel: the same arguments in the same order as Triton's own launch.
        assert list(bound.values()) == [*args, *constexpr_tail(fn, args, constexprs)], fn.__name__
        key = Launcher.key(0, args, constexprs, options)
        rows.append((fn.__name__, repr(key), str(spec)))
    return rows


def _plan_rows():
    """[(kernel, plan key, Launcher.key)] of the launches that pass a plan (pre-pass, every forward and backward),
    over fresh and offset (aligned) tensors of a few shapes, strides and alignments of the tensors passed by pointer
    (recorded, not launched)."""
    import torch

    import kernels.gluon.bwd as gluon_bwd
    import kernels.gluon.forward as gluon_fwd
    import kernels.triton.bwd as triton_bwd
    import kernels.triton.fp8_fwd as fp8_fwd
    import kernels.triton.fp8_quant as fp8_quant
    import kernels.triton.fwd as triton_fwd
    from kernels.launch import Launcher
    from kernels.quant import FP8Config

    rows = []

    def recorder(launcher):
        def record(grid, args, constexprs, options, plan=None):
            key = (id(plan[0]), *plan[1:]) if isinstance(plan, tuple) else id(plan)  # plans are cached objects
            rows.append((launcher.fn.__name__, repr(key), repr(Launcher.key(0, args, constexprs, options))))
        return record

    fp8_quant.launch_prepass = recorder(fp8_quant.launch_prepass)
    gluon_fwd.launch_forward = recorder(gluon_fwd.launch_forward)
    fp8_fwd.launch_forward = recorder(fp8_fwd.launch_forward)
    triton_fwd.launch_forward = recorder(triton_fwd.launch_forward)
    gluon_fwd.sm_count = lambda device: 132  # no GPU in this process
    for shape, config in itertools.product(((1, 128, 2, 128), (2, 300, 16, 128), (1, 64, 1, 64)),
                                           (FP8Config(), FP8Config(block_n=64, granularity="head"))):
        for trial in range(3):
            # fresh tensors; then views 16 bytes into a larger buffer (same strides); then q out of a packed qkv
            n = torch.Size(shape).numel()
            if trial == 0:
                q, k, v = (torch.randn(shape, dtype=torch.bfloat16) for _ in range(3))
            elif trial == 1:
                q, k, v = (torch.randn(n + 8, dtype=torch.bfloat16)[8:].view(shape) for _ in range(3))
            else:
                q, k, v = torch.randn(*shape[:2], 3, *shape[2:], dtype=torch.bfloat16).unbind(2)
            x = fp8_quant.quantize_qkv_triton(q, k, v, config, v_key_order="wgmma")
            variant = gluon_fwd.cached_variant(torch.float8_e4m3fn, shape[-1], trial == 1, out_dtype=torch.bfloat16,
                                               q_scale_block=config.block_m, kv_scale_block=config.block_n,
                                               v_wgmma_keys=True)
            offset = torch.empty(x.q_scale.numel() + 1)[trial % 2:][:x.q_scale.numel()].view(x.q_scale.shape)
            gluon_fwd._launch(variant, x.q, x.k, x.v_t, (offset, x.k_scale, x.v_scale), 0.1, torch.bfloat16)
            natural = fp8_quant.quantize_qkv_triton(q, k, v, config)
            fp8_fwd.fp8_attention_forward_triton(dataclasses.replace(natural, q_scale=offset), 0.1, trial == 1,
                                                 torch.bfloat16)
            gluon_fwd._launch(gluon_fwd.cached_variant(torch.bfloat16, shape[-1], False), q, k, v, (None,) * 3, 0.1,
                              torch.bfloat16)

    gluon_bwd.launch_backward = recorder(gluon_bwd.launch_backward)
    gluon_bwd.launch_preprocess = recorder(gluon_bwd.launch_preprocess)
    gluon_bwd._check_inputs = lambda *args: None  # it asks for CUDA tensors
    for name in ("launch_preprocess", "launch_dkdv", "launch_dq"):
        setattr(triton_bwd, name, recorder(getattr(triton_bwd, name)))
    for shape, causal in itertools.product(((1, 128, 2, 128), (2, 300, 4, 64), (1, 64, 1, 256)), (False, True)):
        b, s, h, d = shape
        for trial in range(4):
            # fresh tensors; views 16 bytes into larger buffers; q, k, v out of a packed qkv; lse 4 bytes off
            if trial == 1:
                n = torch.Size(shape).numel()
                dout, q, k, v, out = (torch.randn(n + 8, dtype=torch.bfloat16)[8:].view(shape) for _ in range(5))
            else:
                dout, q, k, v, out = (torch.randn(shape, dtype=torch.bfloat16) for _ in range(5))
            if trial == 2:
                q, k, v = torch.randn(b, s, 3, h, d, dtype=torch.bfloat16).unbind(2)
            lse = torch.randn(b * h * s + 1)[1 if trial == 3 else 0:][:b * h * s].view(b, h, s)
            gluon_bwd.attention_backward(dout, q, k, v, out, lse, 0.1, causal)
            triton_fwd.attention_forward_triton(q, k, v, 0.1, causal)
            triton_bwd.attention_backward_triton(dout, q, k, v, out, lse, 0.1, causal)
    return rows


def _child_rows(*argv):
    """The (kernel, key, value) rows this file prints when run as a script with argv, in a child process without
    TRITON_INTERPRET (Gluon cannot compile under it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _values_by_key(rows):
    """{(kernel, key): set of values} of (kernel, key, value) rows."""
    grouped = {}
    for kernel, key, value in rows:
        grouped.setdefault((kernel, key), set()).add(value)
    return grouped


def test_launcher_key_determines_triton_specialization():
    rows = _child_rows()
    for (kernel, key), specs in _values_by_key(rows).items():
        assert len(specs) == 1, f"{kernel} key {key}: Triton specializes differently: {specs}"
    # The launches did reach what Triton looks at: every kernel got more than one specialization.
    for kernel in {kernel for kernel, _, _ in rows}:
        assert len({spec for name, _, spec in rows if name == kernel}) >= 2, kernel


def test_launch_plan_determines_launcher_key():
    """A launch plan passed as the Launcher key (pre-pass, the forwards and backwards) stands for
    exactly one per-argument key: launches that share a plan would have shared a compiled kernel without it."""
    rows = _child_rows("plans")
    for (kernel, plan), keys in _values_by_key(rows).items():
        assert len(keys) == 1, f"{kernel} plan {plan} stands for several keys: {keys}"
    # Plans were reused (fresh and offset tensors), and told apart (shapes, strides, configs, scale alignment).
    for kernel in ("_prepass_kernel", "attention_fwd_kernel", "_attn_fwd_kernel", "_fp8_fwd_kernel",
                   "attention_bwd_kernel", "_bwd_preprocess_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        plans = [plan for name, plan, _ in rows if name == kernel]
        assert len(set(plans)) >= 6 and len(plans) > len(set(plans)), kernel


def _jit_dispatch_counter(monkeypatch, launcher):
    """A list that grows by one each time `launcher` goes through Triton's own JIT dispatch."""
    calls, run = [], launcher.fn.run
    monkeypatch.setattr(launcher.fn, "run", lambda *a, **kw: calls.append(1) or run(*a, **kw))
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["prepass", "triton_fwd", "gluon_fwd"])
def test_launcher_reuses_compiled_kernel(monkeypatch, path):
    """After a key's first launch, Launcher calls the compiled kernel directly (with the outputs Triton's own
    launch gives, bit for bit), and goes back through Triton's dispatch while a launch hook is installed."""
    import torch
    from triton import knobs

    import kernels.triton.fp8_quant as fp8_quant
    import kernels.triton.fwd as triton_fwd
    from kernels.quant import FP8Config
    if path == "gluon_fwd":
        if torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("Gluon kernels need sm_90")
        import kernels.gluon.forward as gluon_fwd
        launcher, call = gluon_fwd.launch_forward, lambda q, k, v: gluon_fwd.attention_forward(q, k, v, None, True)
    elif path == "triton_fwd":
        launcher, call = triton_fwd.launch_forward, lambda q, k, v: triton_fwd.attention_forward_triton(
            q, k, v, 128 ** -0.5, True)
    else:
        def call(q, k, v):
            x = fp8_quant.quantize_qkv_triton(q, k, v, FP8Config())
            return x.q, x.k, x.v_t, x.q_scale, x.k_scale, x.v_scale
        launcher = fp8_quant.launch_prepass
    q, k, v = (torch.randn(2, 1000, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    launcher.compiled.clear()
    launcher.planned.clear()
    jit_calls = _jit_dispatch_counter(monkeypatch, launcher)
    first = call(q, k, v)
    second = call(q, k, v)
    assert len(jit_calls) == 1
    for a, b in zip(first, second):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        call(q, k, v)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(jit_calls) == 2


@pytest.mark.gpu
def test_launcher_forgets_plans_beyond_its_limit(monkeypatch):
    """A full plan table is cleared, not grown with every plan ever launched; a plan no longer in it finds its
    kernel by the per-argument key, without Triton's dispatch, and launches it as before, bit for bit."""
    import torch

    import kernels.launch as launch
    import kernels.triton.fp8_quant as fp8_quant
    from kernels.quant import FP8Config
    monkeypatch.setattr(launch, "PLANNED_LIMIT", 2)
    launcher = fp8_quant.launch_prepass
    launcher.compiled.clear()
    launcher.planned.clear()
    jit_calls = _jit_dispatch_counter(monkeypatch, launcher)
    inputs = [[torch.randn(1, n, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
              for n in (256, 512, 768, 1024)]  # four plans

    def quantized(q, k, v):
        x = fp8_quant.quantize_qkv_triton(q, k, v, FP8Config())
        return [t.view(torch.uint8) for t in (x.q, x.k, x.v_t, x.q_scale, x.k_scale, x.v_scale)]

    first = [quantized(*qkv) for qkv in inputs]
    dispatched = len(jit_calls)
    second = [quantized(*qkv) for qkv in inputs]  # the first two plans were cleared out of the table meanwhile
    assert len(jit_calls) == dispatched
    assert len(launcher.planned) <= 2
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


if __name__ == "__main__":
    print(json.dumps(_plan_rows() if sys.argv[1:] == ["plans"] else _rows()))
