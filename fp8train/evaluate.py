"""`fp8train-eval CHECKPOINT`: a trained model's validation loss and attention error under other attention backends.

    fp8train-eval outputs/<run> --attention sdpa --attention fp8 --attention fp8:hadamard=false,granularity=tensor

Trained with BF16 attention, how does the model fare with FP8 attention, and with which quantization settings?
Each --attention arm (a conf/attention preset, then `:key=value,...` overrides of its options; default: the run's
own attention) runs the same validation sequences through the checkpoint's weights: mean loss, and each layer's
attention against float64 on its own q, k, v (fp8train/numerics.py). Every arm runs at the run's precision, or
bf16 autocast for all where one arm's backend needs it. One table, the first arm as the baseline; --out also
writes it as JSON.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fp8train import attention, checkpoint, config, data, numerics
from fp8train.config import ModelConfig
from fp8train.distributed import resolve_device
from fp8train.model import GPT
from fp8train.train import CONFIG_DIR


def checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory as given, or a run directory's newest checkpoint."""
    if (path / "trainer_state.pt").is_file():
        return path
    found = checkpoint.latest(path / "checkpoints") if path.is_dir() else None
    if found is None:
        raise ValueError(f"{path} is neither a checkpoint directory nor a run directory with checkpoints")
    return found


def parse_arm(text: str) -> list[str]:
    """`preset[:key=value,...]` -> Hydra overrides of the attention group and its options."""
    preset, _, options = text.partition(":")
    overrides = [f"attention={preset}"]
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--attention {text!r}: options are key=value pairs separated by commas")
        overrides.append(f"attention.options.{key}={value}")
    return overrides


def compose_attention(overrides: list[str]):
    """The attention config that `fp8train-train <overrides>` would run."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides).attention


def evaluate(model, splits, indices, batch_size: int, device, autocast) -> float:
    """Mean loss over the validation sequences `indices`, in batches."""
    total = torch.zeros((), device=device)  # summed on the device: one sync at the end, not one per batch
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            x, y = data.to_batch(splits.val, indices[start:start + batch_size], device)
            with autocast:
                total += model(x, y).float() * len(x)
    return total.item() / len(indices)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fp8train-eval", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory, or a run directory (its newest one)")
    p.add_argument("--attention", action="append", metavar="PRESET[:KEY=VALUE,...]",
                   help="an attention arm (repeatable); default: the run's own attention")
    p.add_argument("--sequences", type=int, default=256, help="validation sequences (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--error-sequences", type=int, default=4,
                   help="of those, how many the attention error is measured on (default: %(default)s; 0: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the saved config, e.g. data.data_dir=/data (repeatable)")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        path = checkpoint_dir(args.checkpoint)
        state = checkpoint.read_trainer_state(path)
        # On the schema: settings newer than the checkpoint take their defaults (model.n_kv_head: the model as it was).
        cfg = config.validate(OmegaConf.merge(OmegaConf.create(state["config"]), OmegaConf.from_dotlist(args.set)))
        arms = [compose_attention(parse_arm(a)) for a in args.attention] if args.attention else [cfg.attention]
        # Built before any work, so that an unknown backend or option fails first.
        backends = [attention.build(arm.name, arm.options) for arm in arms]
        device = resolve_device(args.device, 0)
        splits = data.load(cfg.data, cfg.trainer.seed)
    except (ValueError, config.ConfigError, checkpoint.CheckpointError, data.CorpusNotFound) as e:
        sys.exit(f"fp8train-eval: error: {e}")
    except Exception as e:  # Hydra's override and composition errors: one line, not a traceback
        sys.exit(f"fp8train-eval: error: {type(e).__name__}: {str(e).splitlines()[0]}")
    # One precision for every arm, so that their losses compare: the run's, or bf16 wherever one arm needs it.
    bf16 = attention.uses_bf16(cfg.trainer.precision, device.type, [arm.name for arm in arms])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    indices = list(range(min(args.sequences, len(splits.val))))
    m = cfg.model
    with torch.device(device):
        model = GPT(ModelConfig(**OmegaConf.to_container(m, resolve=True)), attention.build("sdpa", {}))
    checkpoint.load_model_weights(path, model)
    model.eval()
    print(f"{path} (step {state['step']}): {len(indices)} validation sequences of {cfg.data.seq_len} tokens, "
          f"{'bf16 autocast' if bf16 else 'fp32'} on {device}", flush=True)

    rows = []
    for arm, backend in zip(arms, backends):
        try:
            attention.run_once(arm.name, backend, m.n_head, config.kv_heads(m), m.d_model // m.n_head,
                               cfg.data.seq_len, device, torch.bfloat16 if bf16 else torch.float32)
        except config.ConfigError as e:
            sys.exit(f"fp8train-eval: error: {e}")
        for block in model.blocks:
            block.attn.backend = backend
        row = {"attention": attention.describe(arm), "step": state["step"], "sequences": len(indices),
               "val_loss": evaluate(model, splits, indices, args.batch_size, device, autocast)}
        if args.error_sequences:
            x, _ = data.to_batch(splits.val, indices[:args.error_sequences], device)
            row.update(numerics.attention_errors(model, x, autocast))
        rows.append(row)

    base = rows[0]["val_loss"]
    print("| attention | val loss | vs first | attention error (worst layer) |\n|---|---|---|---|")
    for r in rows:
        error = f"{r['attn_rel_rmse_max']:.2e}" if "attn_rel_rmse_max" in r else "n/a"
        print(f"| {r['attention']} | {r['val_loss']:.4f} | {100 * (r['val_loss'] - base) / base:+.2f}% | {error} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
