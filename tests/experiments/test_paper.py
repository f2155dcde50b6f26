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
    """Every candidate once a round, in round_order's orders; a row's time is its median round, and
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
             candidates.Candidate("c", "ours", build("c", fail_in_round=2))]
    times["c"] = [7.0, 6.0]
    opts = runner.Options(out=tmp_path, quick=True)
    rows = {r["impl"]: r for r in runner.measure(runner.Problem(1, 16, 2, 16, False), cands, "fwd", torch.float32,
                                                 opts, "fwd")}
    assert order == ["a", "b", "c", "b", "c", "a", "a", "b"]  # rounds abc, bca, cab; c fails in the third
    assert rows["a"]["ms"] == 2.0 and rows["b"]["ms"] == 5.0
    assert rows["a"]["vs_best_peer"] == pytest.approx(5.0 / 2.0)
    assert rows["c"]["status"] == "error" and "ms" not in rows["c"]
    assert rows["a"]["max_abs_err"] < 1e-6


def test_backward_rows_check_gradients(tmp_path, monkeypatch):
    """A backward row's error is its dq/dk/dv's against float32 autograd on batch 0 / head 0: a candidate with the
    right output but a wrong gradient fails it, one whose error is only in another head passes."""
    from kernels.reference import attention_ref

    class HalveGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 0.5

    def build(wrong_heads):
        def call_factory(problem, q, k, v):
            def call():
                out = attention_ref(q, k, v, causal=problem.causal, dtype=torch.float32)[0]
                return torch.cat([out[:, :, :wrong_heads], HalveGradient.apply(out[:, :, wrong_heads:])], dim=2)
            return call
        return call_factory

    monkeypatch.setattr(runner, "time_ms", lambda fn, opts, grad_to_none=None: fn() or 1.0)
    cands = [candidates.Candidate("wrong", "ours", build(0)), candidates.Candidate("other-head", "ours", build(1))]
    rows = {r["impl"]: r for r in runner.measure(runner.Problem(2, 24, 2, 16, True), cands, "bwd", torch.float32,
                                                 runner.Options(out=tmp_path, quick=True), "bwd")}
    assert rows["other-head"]["max_abs_err"] < 1e-5
    assert rows["wrong"]["max_abs_err"] > 0.05


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


def _bars_run(root, gpu, values):
    """A paper-table run directory with one timed row per {(table, headdim, causal, seqlen, impl): (tflops, err)}."""
    from experiments.paper import bars
    columns = ["figure", "headdim", "causal", "seqlen", "impl", "backend", "status", "tflops", "max_abs_err",
               "prov_gpu"]
    for table in ("fwd", "bwd", "fp8", "ablation"):
        (root / table).mkdir(parents=True)
        with (root / table / f"{table}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            for (t, d, causal, s, impl), (tflops, err) in values.items():
                if t == table:
                    w.writerow(dict(figure=t, headdim=d, causal=causal, seqlen=s, impl=impl, backend="gluon",
                                    status="ok", tflops=tflops, max_abs_err=err, prov_gpu=gpu))
            w.writerow(dict(figure=table, headdim=128, causal=False, seqlen=bars.LONG, impl="fa3", status="skipped",
                            tflops="", max_abs_err="", prov_gpu=gpu))
    return root


def _passing_values(rng):
    """Every cell every bar reads, each clear of its bar by a random margin (peers under 600 TFLOP/s, so that an
    absolute bar's figure, written over a ratio bar's on the same cell, still clears the ratio)."""
    from experiments.paper import bars
    values = {}
    for bar in bars.BARS:
        for c in bar.cells:
            key = (c.table, c.headdim, c.causal, c.seqlen)
            peer = values.setdefault((*key, bar.peer or "sdpa-cudnn"), (rng.uniform(200, 600), rng.uniform(1e-3, 1e-2)))
            margin = rng.uniform(1.01, 1.2)
            if bar.kind == "absolute":
                ours = (bar.threshold * margin, 1e-3)
            elif bar.compare == ">=":
                ours = (peer[0] * bar.threshold * margin, 1e-3)
            else:  # below the peer: slower (Table 2's rows) or a smaller error (accuracy)
                ours = (peer[0] / margin, peer[1] * bar.threshold / margin)
            values[(*key, bar.impl)] = ours
    return values


def test_bars_report_each_bar_and_the_runs_verdict(tmp_path):
    import random
    from experiments.paper import bars
    rng = random.Random()
    values = _passing_values(rng)
    text, met = bars.report(_bars_run(tmp_path / "pass", "NVIDIA H200", values))
    assert met and "**Every bar met on an H200: yes.**" in text
    assert text.split("## Cells short of their bar")[1].strip().startswith("none")
    for bar in bars.BARS:
        assert f"| {bar.name} | {len(bar.cells)} / {len(bar.cells)} |" in text

    # One cell under each kind of bar: a ratio, an absolute figure, the accuracy, Table 2; one cell not timed.
    short = dict(values)
    cudnn = short[("fwd", 64, True, 1024, "sdpa-cudnn")][0]
    short[("fwd", 64, True, 1024, "ours-gluon")] = (cudnn * 0.97, 1e-3)
    short[("fp8", 128, False, bars.LONG, "ours-fp8")] = (999.0, 1e-3)
    triton_err = short[("fp8", 256, True, 2048, "ours-fp8-triton")][1]
    short[("fp8", 256, True, 2048, "ours-fp8-gluon")] = (500.0, triton_err * 1.3)
    short[("ablation", 128, False, 8448, "ours-gluon-no-pipelining")] = short[("ablation", 128, False, 8448,
                                                                                "ours-gluon")]
    del short[("bwd", 128, True, 4096, "ours-gluon")]
    text, met = bars.report(_bars_run(tmp_path / "short", "NVIDIA H200", short))
    assert not met and "yes." not in text
    listed = text.split("## Cells short of their bar")[1]
    assert "| hd64 causal 1024 | 0.970x | >= 1x | missed |" in listed
    assert "| hd128 non-causal 16384 | 999 | >= 1000 | missed |" in listed
    assert "| hd256 causal 2048 | 1.300x | <= 1.25x | missed |" in listed
    assert "| Table 2: no pipelining below full | hd128 non-causal 8448 | 1.000x | < 1x | missed |" in listed
    assert "| hd128 causal 4096 | - | >= 1x | missing |" in listed
    assert listed.count("| missed |") == 4 and listed.count("| missing |") == 1

    # The same passing figures from another GPU are listed but do not count; the exit code says so.
    other = _bars_run(tmp_path / "h100", "NVIDIA H100 80GB HBM3", values)
    text, met = bars.report(other)
    assert not met and "not an H200 run" in text
    assert bars.main([str(other), "--out", str(tmp_path / "bars.md")]) == 1
    assert (tmp_path / "bars.md").read_text() == text


def test_bars_history_of_several_runs(tmp_path):
    """One table, a bar per row and a run per column; met when some H200 run meets every bar (the issue asks for
    one run)."""
    import random
    from experiments.paper import bars
    values = _passing_values(random.Random())
    short = dict(values)
    short[("fwd", 128, False, bars.LONG, "ours-gluon")] = (649.0, 1e-3)
    passing = _bars_run(tmp_path / "passing", "NVIDIA H200", values)
    missing = _bars_run(tmp_path / "missing", "NVIDIA H200", short)
    elsewhere = _bars_run(tmp_path / "elsewhere", "NVIDIA H100 80GB HBM3", values)
    text, met = bars.history([missing, elsewhere, passing])
    assert met and text.splitlines()[-1] == "| every bar met on an H200 | no | no | **yes** |"
    row = next(line for line in text.splitlines() if line.startswith("| BF16 forward hd128 >= 650 TFLOP/s |"))
    assert row.split(" | ")[1] == "649 (0 / 1)"
    for bar in bars.BARS:
        assert f"| {bar.name} | " in text
    assert bars.main([str(missing), str(elsewhere)]) == 1
    assert bars.main([str(missing), str(passing), "--out", str(tmp_path / "history.md")]) == 0
    assert (tmp_path / "history.md").read_text().startswith("# Issue 5's bars, run by run")


def test_bars_give_fa3_ratios_and_skip_the_triton_fp8_cells(tmp_path):
    import random
    from experiments.paper import bars
    values = _passing_values(random.Random())
    values[("fwd", 256, False, bars.LONG, "fa3")] = (values[("fwd", 256, False, bars.LONG, "ours-gluon")][0] / 0.95,
                                                     1e-3)
    run = _bars_run(tmp_path / "run", "NVIDIA H200", values)
    text, _ = bars.report(run)
    assert "| BF16 forward hd256 >= 740 TFLOP/s | 1 / 1 | hd256 non-causal 16384 |" in text
    assert text.split("| BF16 forward hd256 >= 740 TFLOP/s |")[1].splitlines()[0].endswith("| - | 0.950x |")
    # FP8: FA3 times its kernel on inputs cast beforehand, so our kernel alone is what is held to it.
    values[("fp8", 128, False, bars.LONG, "ours-fp8-kernel")] = (1234.0, 1e-3)
    values[("fp8", 128, False, bars.LONG, "fa3-fp8")] = (1234.0 / 1.1, 1e-3)
    text, _ = bars.report(_bars_run(tmp_path / "fp8", "NVIDIA H200", values))
    op = values[("fp8", 128, False, bars.LONG, "ours-fp8")][0]
    assert f"| hd128 non-causal 16384 | {op:.0f} | 1234 | 1.100x |" in text
    # Where the public FP8 op runs the Triton kernel, the Gluon-against-Triton accuracy cell is not asked for.
    rows, _ = bars.load(run)
    accuracy = next(b for b in bars.BARS if b.kind == "accuracy")
    rows[("fp8", 128, False, 1024, "ours-fp8")] = dict(rows[("fp8", 128, False, 1024, "ours-fp8-gluon")],
                                                       backend="triton")
    assert len(bars.judge(accuracy, rows)) == len(accuracy.cells) - 1


def test_bars_on_a_committed_h200_run():
    """Session 31's H200 tables (results/h200/paper-s31): the misses its note lists, and nothing else."""
    from experiments.paper import bars
    text, met = bars.report(Path(__file__).resolve().parents[2] / "results" / "h200" / "paper-s31")
    assert not met
    listed = text.split("## Cells short of their bar")[1]
    assert listed.count("| missed |") == 7
    for cell in ("| hd64 causal 1024 | 0.973x |", "| hd128 non-causal 16384 | 647 |",
                 "| hd256 non-causal 16384 | 722 |", "| hd128 non-causal 16384 | 819 |",
                 "| hd256 non-causal 16384 | 1072 |", "| hd128 non-causal 16384 | 0.990x |",
                 "| hd128 causal 16384 | 0.983x |"):
        assert cell in listed, cell
