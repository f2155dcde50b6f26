"""experiments.ab_tiles: tile specs parse into TileConfig changes or fail early; on a GPU, one tiny A/B runs."""
import json

import pytest

from experiments.ab_tiles import main, parse_tile
from experiments.rounds import round_order


def test_tile_spec_parses_switches_numbers_and_names():
    name, changes = parse_tile("old=overlap=0,split_kv=false,named_turn=1,block_n=64,o_buffer=q")
    assert name == "old"
    assert changes == dict(overlap=False, split_kv=False, named_turn=True, block_n=64, o_buffer="q")


@pytest.mark.parametrize("spec, match", [("old", "name=field=value"), ("old=", "name=field=value"),
                                         ("old=overlapp=0", "TileConfig field"), ("old=overlap", "TileConfig field"),
                                         ("old=overlap=maybe", "switch"), ("old=block_n=1.5", "whole number")])
def test_bad_tile_spec_is_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_tile(spec)


def test_command_line_refuses_bad_specs_before_any_work(tmp_path, capsys):
    for argv in (["--tile", "old=overlapp=0"], ["--masks", "full,diagonal"]):
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(tmp_path)])
        assert "error:" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_rounds_time_the_calls_in_the_balanced_orders(monkeypatch):
    """run() times each shape's calls in round_order's order, round after round, every shape in every round."""
    import types

    import torch
    import triton

    import experiments.ab_tiles as ab
    calls = []

    def fake_callables(dtype, head_dim, nheads, seqlen, causal, tiles):
        return [(label, lambda label=label: calls.append((seqlen, label))) for label in ("public", "default",
                                                                                        *(n for n, _ in tiles))]

    def fake_bench(fn, **kwargs):
        fn()
        return 1.0

    monkeypatch.setattr(ab, "_callables", fake_callables)
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    args = types.SimpleNamespace(seqlens=[1024, 4096], masks="full", dtype="bf16", head_dim=128, rounds=3,
                                 warmup_ms=1, rep_ms=1)
    rows = ab.run(args, 16, [("a", {}), ("b", {})])
    labels = ["public", "default", "a", "b"]
    orders = (["public", "default", "b", "a"], ["default", "a", "public", "b"], ["a", "b", "default", "public"])
    expected = [(s, t) for order in orders for s in (1024, 4096) for t in order]
    assert [[labels[i] for i in round_order(4, r)] for r in range(3)] == list(orders)
    assert calls == expected
    assert [(r["seqlen"], r["tile"]) for r in rows] == expected and {r["round"] for r in rows} == {0, 1, 2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,labels", [("fp8", ("public", "default", "nopipe")),
                                          ("bf16", ("public", "sdpa-cudnn", "default", "nopipe"))])
def test_one_round_times_every_tile_and_writes_the_table(tmp_path, dtype, labels):
    main(["--dtype", dtype, "--head-dim", "128", "--heads", "4", "--seqlens", "1024", "--masks", "full,causal",
          "--rounds", "2", "--rep-ms", "5", "--warmup-ms", "2", "--tile", "nopipe=overlap=0", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "ab_tiles.json").read_text())["rows"]
    assert {(r["tile"], r["causal"], r["round"]) for r in rows} == {
        (t, c, n) for t in labels for c in (False, True) for n in (0, 1)}
    assert all(r["tflops"] > 0 for r in rows)
    md = (tmp_path / "ab_tiles.md").read_text()
    assert f"| {dtype} hd128, 4 heads |" in md
    assert md.count("| 1024 full |") == len(labels) and md.count("| 1024 causal |") == len(labels)
    assert "- **gpu**: `NVIDIA H" in md and f"- **command**: `python -m experiments.ab_tiles --dtype {dtype}" in md
