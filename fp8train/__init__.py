"""fp8train: GPT training from Hydra configs, with attention through swappable (BF16/FP8) backends."""
