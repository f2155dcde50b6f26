"""experiments.report: collecting the steps' outputs into one report, and what it says is missing."""
from experiments import report

PNG = b"\x89PNG\r\n\x1a\n"


def _part(folder, stem, text, png_stem=None):
    folder.mkdir(parents=True)
    (folder / f"{stem}.md").write_text(text)
    (folder / f"{png_stem or stem}.png").write_bytes(PNG)


def test_collects_parts_and_lists_the_missing(tmp_path):
    results = tmp_path / "results" / "h200"
    _part(results / "paper" / "fwd", "fwd", "# Figure 5\n\n- **gpu**: `NVIDIA H200`\n\n## head dim 64, causal\n")
    _part(results / "bf16_vs_fp8", "summary", "# Run comparison\n\n![loss curves](compare.png)\n", "compare")
    out = tmp_path / "results" / "REPORT.md"
    missing = report.collect(results, out, "multirun/h200")
    text = out.read_text()
    # Included parts keep their provenance; headings nest under the report's sections; links are relative.
    assert "### Figure 5" in text and "#### head dim 64, causal" in text and "`NVIDIA H200`" in text
    assert "![Figure 5: forward, BF16](h200/paper/fwd/fwd.png)" in text
    assert "![loss curves](h200/bf16_vs_fp8/compare.png)" in text
    assert {title for title, _, _ in missing} == {
        "Figure 6: backward, BF16", "Figure 7: forward, FP8", "Table 2: ablation", "Table 3: numerical error",
        "quantization sweep"}
    assert "## Missing" in text and "python -m experiments.sweep_summary multirun/h200/quant_sweep" in text
    assert f"python -m experiments.paper bwd --out {results}/paper" in text
    assert "python -m fp8train.train -m experiment=quant_sweep hydra.sweep.dir=multirun/h200/quant_sweep" in text


def test_regenerate_refuses_to_train_into_an_existing_sweep(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "bf16_vs_fp8" / "0").mkdir(parents=True)
    codes = report.regenerate(["train_bf16_vs_fp8"], tmp_path / "results", runs)
    assert codes == {"train_bf16_vs_fp8": 1}
    assert "exists" in capsys.readouterr().out
