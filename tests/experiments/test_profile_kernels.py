"""experiments.profile_kernels' readers of Nsight Compute's source-page CSV (no GPU: a made-up page)."""
from experiments.profile_kernels import compare_opcodes, source_tables, top_stalls

HEADER = '"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed"\n'


def page(*kernels):
    """A source page with one table per kernel; a kernel is [(source, stall samples, executed)]."""
    text = ""
    for i, rows in enumerate(kernels):
        text += f'"Kernel Name","k{i}",\n' + HEADER
        text += "".join(f'"{a:x}","{src}","{stall}","{ex:,}"\n' for a, (src, stall, ex) in enumerate(rows))
    return text


def test_tables_stalls_and_opcode_mix():
    small = [("FMUL R1, R2, R3", 5, 1000)]
    big_a = [("FMUL R1, R2, R3", 10, 3_000_000), ("@!P0 SYNCS.ARRIVE.TRANS64.A1T0 RZ, [UR5], RZ", 30, 1_000_000),
             ("MUFU.EX2 R4, R4", 60, 2_000_000)]
    big_b = [("FMUL R1, R2, R3", 20, 5_000_000), ("MUFU.EX2 R4, R4", 20, 2_000_000)]
    a, b = page(small, big_a), page(big_b)
    assert [len(rows) for _, rows in source_tables(a)] == [1, 3]
    stalls = top_stalls(a)
    assert stalls[0] == "-- kernel" and stalls[3] == " 60.0%  MUFU.EX2 R4, R4"
    lines = compare_opcodes("a", a, "b", b)
    # the busiest kernel of `a` (not its first), opcodes without predicates or modifiers, b's excess first
    assert lines[1].split() == ["FMUL", "3.0", "5.0", "2.0", "10.0%", "/", "50.0%"]
    assert lines[-2].split()[:4] == ["SYNCS", "1.0", "0.0", "-1.0"]
    assert lines[-1].split() == ["total", "6.0", "7.0", "1.0"]
