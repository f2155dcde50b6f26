"""The paper commands end to end in quick mode (CPU: reference/interpreter paths), and the runner's pieces."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.paper import __main__ as cli
from experiments.paper import ablation, candidates, paper_figures, runner, table3_numerics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROVENANCE_COLUMNS = ["prov_date", "prov_gpu", "prov_torch", "prov_triton", "prov_cudnn", "prov_command"]


def _csv(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _outputs(out, name):
    paths = [out / name / f"{name}.{ext}" for ext in ("csv", "md", "png")]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0, p
    assert paths[2].read_bytes().startswith(PNG_MAGIC)
    header, rows = _csv(paths[0])
    return header, rows, paths[1].read_text()


@pytest.mark.parametrize("name, ours", [("fwd", ["ours-triton"]), ("bwd", ["ours-triton"]),
                                        ("fp8", ["ours-fp8", "ours-fp8-kernel"])], ids=["fwd", "bwd", "fp8"])
def test_throughput_figure_quick(tmp_path, name, ours):
    assert cli.main([name, "--quick", "--out", str(tmp_path)]) == 0
    header, rows, md = _outputs(tmp_path, name)
    assert header[:len(runner.ROW_COLUMNS)] == list(runner.ROW_COLUMNS)
    assert set(PROVENANCE_COLUMNS) <= set(header)
    problems = runner.grid(runner.Options(out=tmp_path, quick=True))
    measured = [r for r in rows if r["kind"] != "paper"]
    roster = {"fp8": candidates.FP8_ROSTER}.get(name, candidates.BF16_ROSTER)
    assert len(measured) == len(problems) * len(roster)
    # Our kernel ran through the interpreter, matched the float32 reference, and got a TFLOPs/s figure.
    mine = [r for r in measured if r["impl"] in ours]
    assert len(mine) == len(ours) * len(problems) and all(r["status"] == "ok" for r in mine), mine
    tolerance = 0.25 if name == "fp8" else 0.02  # FP8 rows see up to ~0.14 on these N(0, 1) inputs
    assert all(0 < float(r["tflops"]) and float(r["max_abs_err"]) < tolerance for r in mine)
    # Peers that need CUDA are reported as skipped rows with their reason, not dropped.
    cudnn = [r for r in measured if r["impl"] == "sdpa-cudnn"]
    assert cudnn and all(r["status"] == "skipped" and r["reason"] == "needs CUDA" for r in cudnn)
    assert "## head dim 64, non-causal" in md and "## head dim 64, causal" in md
    assert "H100 paper: FlashAttention-3" in md and "/ best peer" in md and "**gpu**" in md


def test_quick_cli_without_triton_interpret(tmp_path):
    """`--quick` from a plain shell: on a CPU it turns on Triton's interpreter itself (this suite's conftest sets
    TRITON_INTERPRET, so a child process without it is what a user runs)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "experiments.paper", "fwd", "--quick", "--impls", "ours-triton", "--seqlens", "32",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, rows, _ = _outputs(tmp_path, "fwd")
    mine = [r for r in rows if r["kind"] != "paper"]
    assert len(mine) == 2 and all(r["impl"] == "ours-triton" and r["status"] == "ok" for r in mine), mine


@pytest.mark.parametrize("args, message", [(["--headdims", "0"], "must be positive"),
                                           (["--headdims", "64,12"], "multiples of 8 up to 256"),
                                           (["--headdims", "512"], "multiples of 8 up to 256"),
                                           (["--seqlens", "-5"], "must be positive"),
                                           (["--seqlens", "1k"], "not comma-separated integers")])
def test_shape_arguments_are_checked(args, message, capsys):
    with pytest.raises(SystemExit) as err:
        cli.parse(["fwd", "--quick", *args])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert cli.parse(["fwd", "--headdims", "64,256", "--seqlens", "1,512"]).headdims == (64, 256)


def test_ablation_quick(tmp_path):
    assert cli.main(["ablation", "--quick", "--out", str(tmp_path)]) == 0
    header, rows, md = _outputs(tmp_path, "ablation")
    assert {"vs_full", "paper_row", "paper_ms", "paper_tflops"} <= set(header)
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["ours-gluon"]["paper_tflops"] == "661"
    assert by_impl["ours-gluon-no-warp-specialization"]["paper_tflops"] == "570"
    assert by_impl["ours-gluon-no-pipelining"]["status"] == "skipped"  # no Hopper GPU here
    assert by_impl["ours-triton"]["status"] == "ok"
    assert "3.538" in md


def test_table3_quick(tmp_path, monkeypatch):
    # One tiny shape: the numerics module tests itself; this checks the outputs built around it.
    monkeypatch.setattr(table3_numerics, "QUICK_SHAPES", [(1, 64, 1, 64)])
    assert cli.main(["table3", "--quick", "--out", str(tmp_path)]) == 0
    header, rows, md = _outputs(tmp_path, "table3")
    assert {"method", "rmse", "paper_rmse", "backend"} <= set(header) and set(PROVENANCE_COLUMNS) <= set(header)
    rmse = {r["method"]: float(r["rmse"]) for r in rows}
    assert 0 < rmse["ours BF16"] < rmse["ours FP8 (block + Hadamard)"] < 0.05
    assert "## Paper (H100)" in md and "9.1e-03" in md and "ours FP8 (block + Hadamard)" in md


def test_wandb_table_is_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # exercises the W&B calls without writing a run
    assert cli.main(["ablation", "--quick", "--wandb", "--impls", "sdpa-math", "--out", str(tmp_path)]) == 0


def test_paper_grid_matches_the_paper():
    problems = runner.grid(runner.Options(out="unused"))
    assert len(problems) == 3 * 2 * 6
    assert all(p.batch * p.seqlen == 16384 and p.nheads * p.headdim == 2048 for p in problems)
    assert {p.seqlen for p in problems} == set(paper_figures.PAPER_SEQLENS)


def test_peer_ratio_and_failure_classification():
    rows = [dict(impl="ours-triton", kind="ours", status="ok", tflops=300.0),
            dict(impl="sdpa-flash", kind="peer", status="ok", tflops=400.0),
            dict(impl="sdpa-cudnn", kind="peer", status="ok", tflops=600.0),
            dict(impl="fa3", kind="peer", status="skipped")]
    runner._add_peer_ratios(rows)
    assert rows[0]["best_peer"] == "sdpa-cudnn" and rows[0]["vs_best_peer"] == pytest.approx(0.5)
    assert "vs_best_peer" not in rows[1]
    ours, peer = candidates.OURS_TRITON, candidates.FA3
    assert runner._failure(ours, RuntimeError("boom"))[0] == "error"
    unsupported = ValueError("head dim 96 unsupported")
    assert runner._failure(ours, unsupported) == ("skipped", "ValueError: head dim 96 unsupported")
    assert runner._failure(peer, RuntimeError("No available kernel"))[0] == "skipped"
    assert runner._failure(peer, candidates.Unavailable("needs CUDA")) == ("skipped", "needs CUDA")
    assert runner._failure(ours, torch.cuda.OutOfMemoryError("x"))[0] == "oom"


def test_rounds_interleave_candidates_and_report_the_median(tmp_path, monkeypatch):
    """Every candidate once a round, the order reversed every other round; a row's time is its median round, and
    a candidate that fails in a round is not timed again. Times come from a stub timer (CPU), the outputs from
    the float32 reference, so the error column is real."""
    from kernels.reference import attention_ref
    order = []
    times = {"a": [3.0, 1.0, 2.0], "b": [5.0, 4.0, 9.0]}

    def build(name, fail_in_round=None):
        def call_factory(problem, q, k, v):
            def call():
                if fail_in_round is not None and order.count(name) == fail_in_round:
                    raise RuntimeError("boom")
                return attention_ref(q, k, v, causal=problem.causal, dtype=torch.float32)[0]
            call.impl = name  # what the stub timer reads
            return call
        return call_factory

    def fake_time(fn, opts, grad_to_none=None):
        order.append(fn.impl)
        return times[fn.impl][order.count(fn.impl) - 1]

    monkeypatch.setattr(runner, "time_ms", fake_time)
    monkeypatch.setattr(runner.Options, "timing_rounds", lambda self: 3)
    cands = [candidates.Candidate("a", "ours", build("a")), candidates.Candidate("b", "peer", build("b")),
             candidates.Candidate("c", "ours", build("c", fail_in_round=1))]
    times["c"] = [7.0]
    opts = runner.Options(out=tmp_path, quick=True)
    rows = {r["impl"]: r for r in runner.measure(runner.Problem(1, 16, 2, 16, False), cands, "fwd", torch.float32,
                                                 opts, "fwd")}
    assert order == ["a", "b", "c", "b", "a", "a", "b"]
    assert rows["a"]["ms"] == 2.0 and rows["b"]["ms"] == 5.0
    assert rows["a"]["vs_best_peer"] == pytest.approx(5.0 / 2.0)
    assert rows["c"]["status"] == "error" and "ms" not in rows["c"]
    assert rows["a"]["max_abs_err"] < 1e-6


def test_rounds_must_be_positive():
    with pytest.raises(SystemExit):
        cli.parse(["fwd", "--rounds", "0"])
    assert runner.Options(out="unused", quick=True).timing_rounds() == (3 if torch.cuda.is_available() else 1)


def test_paper_rows_only_where_the_paper_has_a_bar():
    problems = [runner.Problem(16, 1024, 16, 128, True), runner.Problem(1, 16384, 16, 128, True),
                runner.Problem(2, 8192, 32, 64, True)]
    rows = runner.paper_rows("fp8", paper_figures.FIG7_FWD_FP8, "fwd", problems)
    # hd128 causal is absent from the FP8 figure; hd64 causal has values only up to 1k.
    assert rows == []
    rows = runner.paper_rows("fwd", paper_figures.FIG5_FWD_BF16, "fwd", problems[:1])
    assert {r["impl"]: r["tflops"] for r in rows}["H100 paper: FlashAttention-3"] == 423


@pytest.mark.gpu
def test_runner_times_and_checks_on_cuda(tmp_path):
    opts = runner.Options(out=tmp_path, warmup_ms=2, rep_ms=5)
    problem = runner.Problem(2, 512, 4, 64, True)
    roster = [candidates.OURS_TRITON, candidates.SDPA_FLASH, candidates.SDPA_MATH]
    rows = {r["impl"]: r for r in runner.measure(problem, roster, "bwd", torch.bfloat16, opts, "bwd")}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rows.values()), rows
    assert rows["ours-triton"]["max_abs_err"] < 0.02
    assert rows["ours-triton"]["best_peer"] in ("sdpa-flash", "sdpa-math")


@pytest.mark.gpu
@pytest.mark.hopper
def test_ablation_variants_run_on_hopper(tmp_path):
    names = [c.name for c, _ in ablation.VARIANTS]
    assert cli.main(["ablation", "--out", str(tmp_path), "--rep-ms", "10", "--impls", ",".join(names)]) == 0
    _, rows, _ = _outputs(tmp_path, "ablation")
    assert [r["status"] for r in rows] == ["ok"] * len(names)
    assert all(float(r["max_abs_err"]) < 0.02 for r in rows)


def test_gpu_scripts_name_real_candidates():
    """experiments.power and experiments.profile_kernels pick implementations by candidate column."""
    from experiments import power, profile_kernels
    names = set(power.PATHS.values()) | {target[3] for target in profile_kernels.TARGETS.values()}
    for name in names:
        assert candidates.by_name(name).name == name
    with pytest.raises(KeyError):
        candidates.by_name("fa2")


def _spread_run(root, cells):
    """A paper-table run directory holding fwd/fwd.csv with the given {(impl, seqlen): tflops} cells."""
    from experiments.paper import spread
    (root / "fwd").mkdir(parents=True)
    with (root / "fwd" / "fwd.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, [*spread.CELL, "status", "tflops"])
        w.writeheader()
        for (impl, seqlen), tflops in cells.items():
            w.writerow(dict(figure="fwd", mode="fwd", dtype="bfloat16", batch=1, seqlen=seqlen, nheads=16, headdim=128,
                            causal=False, impl=impl, status="ok", tflops=tflops))
        w.writerow(dict(figure="fwd", mode="fwd", dtype="bfloat16", batch=1, seqlen=64, nheads=16, headdim=128,
                        causal=False, impl="sdpa-cudnn", status="skipped", tflops=""))
    return root


def test_spread_between_two_runs(tmp_path):
    import random
    from experiments.paper import spread
    rng = random.Random()
    a = {(impl, s): rng.uniform(100, 900) for impl in ("ours-gluon", "sdpa-cudnn") for s in (1024, 4096, 16384)}
    factors = {key: 1 + rng.uniform(-0.03, 0.03) for key in a}
    factors[("ours-gluon", 1024)] = 0.6  # one cell far outside the spread
    b = {key: v * factors[key] for key, v in a.items()}
    run_a, run_b = _spread_run(tmp_path / "a", a), _spread_run(tmp_path / "b", b)
    moved = spread.changes(spread.load(run_a), spread.load(run_b))
    assert len(moved) == len(a)  # the skipped cell is not compared
    assert all(abs(d - (factors[(k[-1], int(k[4]))] - 1)) < 1e-9 for k, d in moved.items())
    out = tmp_path / "spread.md"
    assert spread.main([str(run_a), str(run_b), "--threshold", "0.1", "--out", str(out)]) == 0
    text = out.read_text()
    gluon = sorted(abs(factors[("ours-gluon", s)] - 1) for s in (1024, 4096, 16384))
    assert f"| fwd | ours-gluon | 3 | {gluon[1]:.1%} | 40.0% |" in text
    listed = text.split("more than 10%")[1]
    assert "| fwd | ours-gluon | 128 | False | 1024 |" in listed and "sdpa-cudnn" not in listed


def test_spread_needs_common_cells(tmp_path):
    from experiments.paper import spread
    run_a = _spread_run(tmp_path / "a", {("ours-gluon", 1024): 500.0})
    run_b = _spread_run(tmp_path / "b", {("ours-gluon", 2048): 500.0})
    with pytest.raises(SystemExit, match="no timed cell in common"):
        spread.main([str(run_a), str(run_b)])
