"""experiments.sweep_summary on fake Hydra multirun directories."""
import csv

import pytest

from experiments import sweep_summary

# (attention name, swept overrides, final val loss per seed)
BASELINE = ("sdpa", ["attention=sdpa"], (2.0, 2.2))               # mean 2.1
SWEEP = [
    ("fp8", ["attention.options.block_m=64"], (2.11, 2.11)),       # +0.48 %: within 1 %
    ("fp8", ["attention.options.block_m=128", "attention.options.hadamard=false"], (2.2, 2.2)),  # +4.76 %
]


def _multirun(root, arms, make_run):
    job = 0
    for name, overrides, finals in arms:
        for seed, final in enumerate(finals):
            make_run(root / "2026-01-01" / "00-00-00" / str(job), name, seed,
                     train=[(10, 3.0, 100.0), (100, final, 200.0)], val=[(50, final + 1.0), (100, final)],
                     overrides=["experiment=quant_sweep", *overrides, f"trainer.seed={seed}"])
            job += 1
    return root


def test_within_one_percent_of_bf16(tmp_path, make_run):
    base = _multirun(tmp_path / "bf16", [BASELINE], make_run)
    sweep = _multirun(tmp_path / "sweep", SWEEP, make_run)
    out = tmp_path / "out"
    assert sweep_summary.main([str(sweep), str(base), "--out", str(out)]) == 0
    with (out / "sweep_summary.csv").open() as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"attention=sdpa", "block_m=64", "block_m=128,hadamard=false"}
    assert all(r["runs"] == "2" for r in rows.values())  # seeds grouped, not separate arms
    assert rows["block_m=64"]["within"] == "True"
    assert float(rows["block_m=64"]["gap_pct"]) == pytest.approx(100 * 0.01 / 2.1, abs=1e-6)
    assert rows["block_m=128,hadamard=false"]["within"] == "False"
    md = (out / "sweep_summary.md").read_text()
    assert "Baseline arm: `attention=sdpa`" in md
    assert "**Within 1% of the baseline** (mean final val loss ≤ 1.01 × baseline): `block_m=64`." in md
    assert (out / "sweep_summary.png").read_bytes().startswith(b"\x89PNG")


def test_explicit_baseline_and_missing_baseline(tmp_path, make_run):
    sweep = _multirun(tmp_path / "sweep", SWEEP, make_run)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="no BF16 arm"):
        sweep_summary.main([str(sweep), "--out", str(out)])
    # Any arm can be the reference when named; a loose tolerance lets the other one in.
    assert sweep_summary.main([str(sweep), "--baseline", "block_m=64", "--tolerance", "5", "--out", str(out)]) == 0
    assert "`block_m=128,hadamard=false`." in (out / "sweep_summary.md").read_text()


def test_an_arm_mixing_two_presets_is_flagged(tmp_path, make_run, capsys):
    """Two presets with the same overrides land in one arm (experiment= is not part of a label): the summary keeps
    them together but says that its ± is not a spread over seeds."""
    base = _multirun(tmp_path / "bf16", [BASELINE], make_run)
    for seed, steps in ((0, 500), (1, 2000)):
        make_run(tmp_path / "sweep" / str(seed), "fp8", seed, train=[(10, 3.0, 100.0), (100, 2.1, 200.0)],
                 val=[(100, 2.1)], overrides=["attention.options.block_m=64", f"trainer.seed={seed}"],
                 config=f"  max_steps: {steps}\n")
    out = tmp_path / "out"
    assert sweep_summary.main([str(tmp_path / "sweep"), str(base), "--out", str(out)]) == 0
    warning = "arm `block_m=64` mixes runs that differ in trainer.max_steps, not only in trainer.seed"
    assert warning in capsys.readouterr().err and warning in (out / "sweep_summary.md").read_text()
    assert "mixes" not in (out / "sweep_summary.md").read_text().replace(warning, "")  # the seeds-only arm: none
