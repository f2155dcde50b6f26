"""Compile reports of the Gluon kernels, made in a child process.

The test process may run Triton in interpreter mode (TRITON_INTERPRET=1 on CPU),
which Gluon compiles cannot; the report modules compile for sm_90a without a GPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compile_reports(module: str, timeout: int) -> dict:
    """{variant name: row} from `python -m module` (kernels.gluon.report or kernels.gluon.bwd_report)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}
