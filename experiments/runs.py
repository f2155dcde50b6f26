"""Training run directories as the experiments see them: metrics, config, overrides, arm labels.

A run directory is what `fp8train-train` leaves behind: `metrics.jsonl` (one
JSON object per log step with `step`, `tokens`, `loss`, `tokens_per_s`, ...;
rows with `val_loss` when evaluated), `.hydra/config.yaml` (the resolved
config) and `.hydra/overrides.yaml` (the overrides of this job, which in a
multirun hold the swept values). Only these files are read, never trainer
internals. (W&B offline runs are not read: wandb 0.31 has no Python reader for
its `.wandb` files, and every run writes metrics.jsonl anyway.)
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

METRICS = "metrics.jsonl"
# Override keys that tell seeds (and the preset itself) apart rather than arms.
NON_ARM_KEYS = ("trainer.seed", "seed", "experiment")
OPTIONS_PREFIX = "attention.options."
# Config keys (and the keys below them) in which the seeds of one arm may differ: the seed, and bookkeeping
# that leaves the training alone (W&B naming, progress output, checkpoints, where the data is read from, the
# attention error probe: eval mode, no global RNG).
SEED_ONLY_IGNORES = ("trainer.seed", "logger", "trainer.progress", "trainer.resume", "trainer.save_checkpoints",
                     "trainer.keep_checkpoints", "trainer.checkpoint_interval", "data.data_dir", "data.cache_dir",
                     "trainer.attn_error_sequences")


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    train: list = field(default_factory=list)   # rows with "loss", by step
    val: list = field(default_factory=list)     # rows with "val_loss", by step


def load_run(path):
    path = Path(path)
    metrics = path / METRICS
    if not metrics.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS} (is this an fp8train run directory?)")
    rows = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics}:{n}: not JSON ({err.msg})") from None
    hydra = path / ".hydra"
    config = OmegaConf.to_container(OmegaConf.load(hydra / "config.yaml")) if (hydra / "config.yaml").is_file() else {}
    overrides = list(OmegaConf.load(hydra / "overrides.yaml")) if (hydra / "overrides.yaml").is_file() else []
    return Run(path, config, overrides, _by_step(rows, "loss"), _by_step(rows, "val_loss"))


def _by_step(rows, key):
    """Rows carrying `key`, one per step (the last written wins: a resumed run appends), in step order."""
    latest = {r["step"]: r for r in rows if r.get(key) is not None}
    return [latest[s] for s in sorted(latest)]


def find_runs(roots):
    """Run directories under each root (a root that is itself a run counts as one), in path order."""
    found = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        if (root / METRICS).is_file():
            found.append(root)
        else:
            hits = sorted(p.parent for p in root.rglob(METRICS))
            if not hits:
                raise FileNotFoundError(f"{root}: no {METRICS} in it or below it")
            found += hits
    return found


def dotted(config, key):
    """config['a']['b'] for key 'a.b'; None when any part is missing."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(config, prefix=""):
    """{dotted key: value} of a nested config's leaves."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(arm_runs, ignore=SEED_ONLY_IGNORES):
    """Dotted config keys whose values are not the same in all these runs, those under `ignore` left out."""
    flats = [_flatten(r.config) for r in arm_runs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if not any(k == i or k.startswith(i + ".") for i in ignore)
            and len({repr(f.get(k)) for f in flats}) > 1]


def attention_label(run):
    """Default arm name: the attention backend and its options, e.g. `fp8(block_m=64,hadamard=False)`."""
    attention = run.config.get("attention") or {}
    name = attention.get("name", run.path.name)
    options = attention.get("options") or {}
    return name + (f"({','.join(f'{k}={v}' for k, v in sorted(options.items()))})" if options else "")


def override_label(run, ignore=NON_ARM_KEYS):
    """Arm name from a job's swept overrides, seed and preset removed, `attention.options.` shortened away
    (`block_m=64,fmt=e4m3,...`)."""
    kept = [o.removeprefix(OPTIONS_PREFIX) for o in run.overrides if o.split("=", 1)[0].lstrip("+~") not in ignore]
    return ",".join(sorted(kept)) or attention_label(run)


def group_label(run, keys):
    return ",".join(f"{k}={dotted(run.config, k)}" for k in keys)


def group(runs, label_of):
    """{arm label: [runs]} in order of first appearance."""
    arms = {}
    for run in runs:
        arms.setdefault(label_of(run), []).append(run)
    return arms
