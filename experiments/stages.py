"""Child-process stages for the one-shot GPU scripts: a kernel that hangs costs its stage, not the device call."""
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, timeout, log, name):
    """Run `cmd` from the repo root; log and return (stdout, stderr, status), what it printed before a timeout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, err, status = proc.stdout, proc.stderr, f"rc={proc.returncode}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = f"TIMEOUT after {timeout}s"
    log.write(f"### {name}: {status} in {time.time() - t0:.0f}s\n{out}\n{err}\n")
    log.flush()
    print(f"stage {name}: {status} ({time.time() - t0:.0f}s)", flush=True)
    if status != "rc=0":
        print(err[-3000:], flush=True)
    return out, err, status


def json_rows(out):
    """The JSON objects a stage printed, one per line."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
