"""The experiments' command lines: their names in --help, and GPU-only tools refusing a CPU in one line."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import ab_tiles, power, profile_kernels, trace_gluon_fwd

ROOT = Path(__file__).parents[2]


def test_parsers_are_named_as_they_are_run():
    """--help shows `python -m experiments.NAME`, not argparse's default `NAME.py` or `__main__.py`."""
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        source = path.read_text()
        calls = [n for n in ast.walk(ast.parse(source))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "ArgumentParser"]
        if calls:
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__")
            assert all(any(k.arg == "prog" for k in c.keywords) for c in calls), path
            assert f'"python -m {module}"' in source, path


@pytest.mark.parametrize("tool, message", [(power, "needs a CUDA GPU"),
                                           (trace_gluon_fwd, "need an sm_90 (Hopper) GPU"),
                                           (ab_tiles, "need an sm_90 (Hopper) GPU")])
def test_gpu_tools_refuse_a_cpu(tool, message, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as err:
        tool.main(["--out", str(tmp_path / "out")])
    assert str(err.value.code).startswith(f"python -m {tool.__name__}: error: ") and message in str(err.value.code)
    assert not (tmp_path / "out").exists()


def test_power_without_nvml(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(SystemExit, match="pip install nvidia-ml-py"):
        power.main(["--out", str(tmp_path / "out")])


def test_profile_kernels_without_ncu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ncu here
    with pytest.raises(SystemExit, match="`ncu` is not on PATH"):
        profile_kernels.main(["--out", str(tmp_path / "out"), "--targets", "triton_fwd_hd128_8k"])


def test_fa3_wheel_usage():
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "fa3_wheel.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bash experiments/fa3_wheel.sh"), proc.stderr
