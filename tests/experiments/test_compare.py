"""experiments.compare on synthetic runs: two arms x 2 seeds with known numbers."""
import csv
import math

import pytest

from experiments import compare, runs, summary, sweep_summary

# Baseline arm "sdpa": final val 2.0 / 2.2 (mean 2.1); "fp8": 2.1 / 2.3 (mean 2.2).
# At step 50 the curves are 3.1 vs 3.6 on average: the largest gap (16.13 %) is mid-run, not at the end.
# tokens_per_s: the first log is a slow warm-up; medians are 1000 and 1500.
ARMS = {
    "sdpa": [dict(val=[(50, 3.0), (100, 2.0)], tps=1000.0), dict(val=[(50, 3.2), (100, 2.2)], tps=1000.0)],
    "fp8": [dict(val=[(50, 3.5), (100, 2.1)], tps=1500.0), dict(val=[(50, 3.7), (100, 2.3)], tps=1500.0)],
}


@pytest.fixture
def run_dirs(tmp_path, make_run):
    dirs = []
    for arm, seeds in ARMS.items():
        for seed, spec in enumerate(seeds):
            train = [(10, 5.0, 100.0)] + [(s, 4.0 - s / 100, spec["tps"]) for s in (20, 50, 100)]
            dirs.append(make_run(tmp_path / f"{arm}-{seed}", arm, seed, train, spec["val"]))
    return dirs


def test_summary_numbers(run_dirs):
    arms = runs.group([runs.load_run(d) for d in run_dirs], runs.attention_label)
    stats = {s.label: s for s in summary.summarize(arms, "sdpa")}
    base, fp8 = stats["sdpa"], stats["fp8"]
    assert (base.runs, fp8.runs) == (2, 2)
    assert base.final_mean == pytest.approx(2.1, abs=1e-12)
    assert base.final_std == pytest.approx(math.sqrt(0.02), abs=1e-12)  # sample std of 2.0, 2.2
    assert fp8.final_mean == pytest.approx(2.2, abs=1e-12)
    assert fp8.best_mean == pytest.approx(2.2, abs=1e-12)
    assert fp8.gap_pct == pytest.approx(100 * 0.1 / 2.1, abs=1e-9)
    assert fp8.max_gap_step == 50
    assert fp8.max_gap_pct == pytest.approx(100 * 0.5 / 3.1, abs=1e-9)
    assert (base.tokens_per_s_mean, fp8.tokens_per_s_mean, fp8.tokens_per_s_std) == (1000.0, 1500.0, 0.0)
    assert fp8.speedup == pytest.approx(1.5)
    assert base.gap_pct == 0.0 and base.speedup == 1.0
    assert fp8.steps == 100


def test_cli_writes_plot_and_tables(run_dirs, tmp_path):
    out = tmp_path / "out"
    # The parent directory holds all four runs: they are found and grouped by attention backend.
    assert compare.main([str(run_dirs[0].parent), "--baseline", "sdpa", "--out", str(out),
                         "--logx", "--smooth", "2", "--x", "tokens"]) == 0
    with (out / "summary.csv").open() as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["fp8"]["gap_pct"]) == pytest.approx(4.7619, abs=1e-3)
    assert rows["fp8"]["max_gap_step"] == "50" and rows["sdpa"]["runs"] == "2"
    assert "prov_gpu" in next(iter(rows.values()))
    md = (out / "summary.md").read_text()
    assert "| fp8 | 2 | 2.2000 ± 0.1414 |" in md and "+4.76%" in md and "1.500x" in md
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_labels_pick_arms_and_first_arm_is_the_default_baseline(run_dirs, tmp_path):
    out = tmp_path / "out"
    labels = ["A", "A", "B", "B"]  # run_dirs are sdpa-0, sdpa-1, fp8-0, fp8-1
    assert compare.main([*map(str, run_dirs), "--labels", *labels, "--out", str(out)]) == 0
    with (out / "summary.csv").open() as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["A"]["gap_pct"]) == 0.0 and float(rows["B"]["speedup"]) == pytest.approx(1.5)
    with pytest.raises(SystemExit):
        compare.main([*map(str, run_dirs), "--labels", "A", "--out", str(out)])


def test_smoothing_and_resumed_runs(tmp_path, make_run):
    assert compare.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    run = make_run(tmp_path / "r", "sdpa", 0, [(10, 2.0, 1.0), (20, 1.0, 1.0)], [(20, 1.5)])
    with (run / "metrics.jsonl").open("a") as f:  # a resumed run re-logs step 20
        f.write('{"step": 20, "tokens": 1, "loss": 0.5, "tokens_per_s": 1.0}\n')
    loaded = runs.load_run(run)
    assert [r["loss"] for r in loaded.train] == [2.0, 0.5]


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        runs.find_runs([tmp_path])


def test_an_arm_mixing_more_than_seeds_is_refused(tmp_path, make_run):
    """An lr sweep under one attention backend: its runs are not seeds of one arm unless grouped by lr."""
    train, val = [(10, 3.0, 1.0)], [(10, 2.5)]
    for i, (lr, seed) in enumerate([(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]):
        # The W&B group differs too, as between two sweeps: bookkeeping, not a difference in the training.
        make_run(tmp_path / "sweep" / str(i), "sdpa", seed, train, val,
                 config=f"optim:\n  lr: {lr}\nlogger:\n  group: g{i}\n")
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as err:
        compare.main([str(tmp_path / "sweep"), "--out", out])
    message = str(err.value.code)
    assert "arm `sdpa` differ in optim.lr, not only in trainer.seed" in message and "sweep_summary" in message
    assert "--group-by attention.name optim.lr" in message
    assert compare.main([str(tmp_path / "sweep"), "--group-by", "attention.name", "optim.lr", "--out", out]) == 0
    with (tmp_path / "out" / "summary.csv").open() as f:
        assert [r["runs"] for r in csv.DictReader(f)] == ["2", "2"]


@pytest.mark.parametrize("tool", [compare, sweep_summary])
def test_missing_or_empty_dir_is_a_one_line_error(tmp_path, tool):
    prog = tool.__name__.replace("experiments.", "python -m experiments.")
    for path, reason in ((tmp_path / "absent", "no such directory"), (tmp_path, "no metrics.jsonl")):
        with pytest.raises(SystemExit, match=f"^{prog}: error: .*{reason}"):
            tool.main([str(path), "--out", str(tmp_path / "out")])


def test_attention_error_column_from_the_last_evaluation(run_dirs, tmp_path):
    """Runs that measured their attention against float64 (trainer.attn_error_sequences) get an attention error
    column: the mean ± std over an arm's runs of the last evaluation's worst layer; without it there is none."""
    out = tmp_path / "out"
    assert compare.main([str(run_dirs[0].parent), "--baseline", "sdpa", "--out", str(out / "none")]) == 0
    assert "| attention error |" not in (out / "none" / "summary.md").read_text()
    for run, error in zip(run_dirs, (1e-3, 3e-3, 2e-2, 4e-2)):  # sdpa-0, sdpa-1, fp8-0, fp8-1
        with (run / "metrics.jsonl").open("a") as f:
            f.write(f'{{"step": 100, "tokens": 1, "val_loss": 9.0, "attn_rel_rmse_max": {error}}}\n')
    arms = runs.group([runs.load_run(d) for d in run_dirs], runs.attention_label)
    stats = {s.label: s for s in summary.summarize(arms, "sdpa")}
    assert stats["fp8"].attn_error_mean == pytest.approx(3e-2) and stats["sdpa"].attn_error_mean == pytest.approx(2e-3)
    assert compare.main([str(run_dirs[0].parent), "--baseline", "sdpa", "--out", str(out / "with")]) == 0
    assert "| attention error |" in (out / "with" / "summary.md").read_text()
    assert "3.00e-02 ± 1.41e-02" in (out / "with" / "summary.md").read_text()
    # A third panel, the error over training: the figure is wider by half.
    from PIL import Image
    widths = [Image.open(out / d / "compare.png").size[0] for d in ("none", "with")]
    assert widths[1] == pytest.approx(1.5 * widths[0], rel=0.02)


def test_seeds_may_differ_in_the_attention_probe(tmp_path):
    """trainer.attn_error_sequences only measures (eval mode, no global RNG): runs with and without it, or from
    before it existed, are still seeds of one arm; a training setting is not."""
    configs = [{"trainer": {"seed": 0, "attn_error_sequences": 8}}, {"trainer": {"seed": 1}},
               {"trainer": {"seed": 2, "attn_error_sequences": 0}}]
    arm = [runs.Run(tmp_path / str(i), config=c) for i, c in enumerate(configs)]
    assert runs.config_differences(arm) == []
    arm[1].config["trainer"]["max_steps"] = 5
    assert runs.config_differences(arm) == ["trainer.max_steps"]
