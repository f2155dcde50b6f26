"""kernels.gluon.trace on the CPU: phase lengths from a stamp buffer, and the fixed-cost line (the stamps
themselves come from the GPU; their compile is checked in test_gluon_compile.py)."""
import pytest
import torch


def _stamps(programs, consumers, tiles, generator):
    """A trace buffer as the kernel fills it: increasing stamps for each program's first `tiles` tiles, zeros after."""
    from kernels.gluon.kernel import TRACE_EVENTS, TRACE_TILES
    buf = torch.zeros(programs + 2, consumers, TRACE_TILES.value, TRACE_EVENTS.value, dtype=torch.int64)  # 2 idle
    steps = torch.randint(1, 5000, (programs, consumers, tiles * buf.shape[3]), generator=generator)
    buf[:programs, :, :tiles] = (1 + steps.cumsum(-1)).view(programs, consumers, tiles, buf.shape[3])
    return buf


def test_phase_cycles_are_the_medians_of_the_stamp_differences():
    from kernels.gluon.trace import PHASES, phase_cycles
    g = torch.Generator().manual_seed(torch.seed())
    buf = _stamps(7, 2, 5, g)
    rows = phase_cycles(buf)
    assert len(rows) == 2
    for c, row in enumerate(rows):
        expected = {name: [] for name in PHASES}
        for prog in range(buf.shape[0]):
            for k in range(buf.shape[2] - 1):
                s, nxt = buf[prog, c, k].tolist(), buf[prog, c, k + 1, 0].item()
                if s[0] == 0 or nxt == 0:
                    continue
                for name, value in zip(PHASES, (s[1] - s[0], s[2] - s[1], s[3] - s[2], nxt - s[3], nxt - s[0])):
                    expected[name].append(value)
        assert len(expected["tile"]) == 7 * 4
        for name in PHASES:
            assert row[name] == torch.tensor(expected[name], dtype=torch.float64).median().item(), name


def test_phase_cycles_needs_two_stamped_tiles():
    from kernels.gluon.trace import phase_cycles
    buf = _stamps(3, 2, 1, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="two stamped tiles"):
        phase_cycles(buf)


def test_fixed_cost_recovers_the_line():
    from kernels.gluon.trace import fixed_cost
    per_block, fixed = torch.empty(2).uniform_(100, 5000).tolist()
    assert fixed_cost(32, fixed + 32 * per_block, 128, fixed + 128 * per_block) == pytest.approx((per_block, fixed))
    with pytest.raises(ValueError, match="two different"):
        fixed_cost(32, 1.0, 32, 2.0)


def test_tile_override_parses_fields_and_refuses_unknown_ones():
    from experiments.trace_gluon_fwd import parse_tile
    from kernels.gluon.forward import default_tile
    base = default_tile(1, 128, False)
    tile = parse_tile("q_stages=2,split_q=true,stages=4,o_buffer=k", base)
    assert (tile.q_stages, tile.split_q, tile.stages, tile.o_buffer) == (2, True, 4, "k")
    assert parse_tile("", base) == base
    with pytest.raises(ValueError, match="not a TileConfig field"):
        parse_tile("stage=4", base)


@pytest.mark.gpu
@pytest.mark.hopper
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_gpu_traced_forward_is_the_forward_and_stamps_in_order(fp8):
    """A traced launch writes the same out and lse as the normal one, stamps every tile a program ran (up to
    TRACE_TILES) with four increasing cycle counts, and phase_cycles reads them back."""
    from kernels.fp8 import quantize_qkv
    from kernels.gluon import forward as fwd
    from kernels.gluon.trace import PHASES, phase_cycles, trace_buffer
    b, s, h, d = 4, 2048, 8, 128  # 512 tiles of 128 rows: several per program
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    tile = fwd.default_tile(1 if fp8 else 2, d, False)
    trace = trace_buffer(q.device, tile.block_m // fwd.CONSUMER_ROWS)
    if fp8:
        qkv = quantize_qkv(q, k, v)
        plain = fwd.fp8_attention_forward(qkv, d ** -0.5)
        traced = fwd.fp8_attention_forward(qkv, d ** -0.5, trace=trace)
    else:
        plain = fwd.attention_forward(q, k, v)
        traced = fwd.attention_forward(q, k, v, trace=trace)
    torch.cuda.synchronize()
    assert all(torch.equal(a, t) for a, t in zip(plain, traced))
    stamps = trace.cpu()
    programs = min(trace.shape[0], b * h * s // tile.block_m)
    n_tiles = b * h * s // tile.block_m
    per_program = torch.tensor([len(range(p, n_tiles, programs)) for p in range(programs)])
    stamped = (stamps[:programs, :, :, 0] > 0).sum(dim=2)  # (programs, consumers)
    assert torch.equal(stamped, per_program.clamp(max=trace.shape[2])[:, None].expand_as(stamped))
    assert not stamps[programs:].any()
    ran = stamps[:programs][stamps[:programs, :, :, 0] > 0]  # (stamped tiles, events)
    assert (ran[:, 1:] > ran[:, :-1]).all()
    for row in phase_cycles(trace):
        assert all(row[name] > 0 for name in PHASES) and row["tile"] > row["attend"]
