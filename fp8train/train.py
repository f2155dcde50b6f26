"""`fp8train-train` / `python -m fp8train.train`: the Hydra entry point on conf/train.yaml."""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from fp8train import attention, checkpoint, config, data, launch, loop

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the repo's conf/ (editable install)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def name_sweep_runs(cfg: DictConfig, hc) -> list[str]:
    """In a multirun, group the W&B runs by sweep directory and name each by its overrides, unless configured;
    returns the overrides that say so (for relaunched workers, which do not know the sweep)."""
    if hc.mode != RunMode.MULTIRUN:
        return []
    names = {}
    if cfg.logger.group is None:
        names["group"] = Path(hc.sweep.dir).name
    if cfg.logger.run_name is None:
        names["run_name"] = hc.job.override_dirname or str(hc.job.num)
    for key, value in names.items():
        cfg.logger[key] = value
    return [f"logger.{key}={_quote(value)}" for key, value in names.items()]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        cfg = config.validate(cfg)
        attention.build(cfg.attention.name, cfg.attention.options)  # unknown backend or option: fail now
    except config.ConfigError as e:
        sys.exit(f"config error: {e}")
    names = name_sweep_runs(cfg, hc)
    nproc = cfg.trainer.parallel.nproc_per_node
    if nproc > 1 and "RANK" not in os.environ:
        # As typed: interpolations (${oc.env:LOCAL_RANK}, ...) must resolve in each worker, not here.
        overrides = OmegaConf.to_container(hc.overrides.task, resolve=False)
        launch.relaunch(nproc, overrides + names, hc.runtime.output_dir)
        return
    try:
        loop.run(cfg, hc.runtime.output_dir)
    except config.ConfigError as e:
        sys.exit(f"config error: {e}")
    except (data.CorpusNotFound, checkpoint.CheckpointError, loop.TrainingDiverged) as e:
        sys.exit(f"error: {e}")
    except loop.Stopped as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(e, file=sys.stderr)
        sys.exit(128 + e.signum)


main = record(_main)  # under torchrun, a failing rank's error and rank reach the launcher's report

if __name__ == "__main__":
    main()
