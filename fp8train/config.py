"""Structured configs for every Hydra group, and the checks that run before any training.

The YAML files under conf/ fill these schemas; `validate` merges a composed config into
them, so a wrong type or value fails with one line naming the key (`ConfigError`).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fp8train import attention
from fp8train.errors import ConfigError

# Choices, named once; the loop and builders dispatch on the same strings.
POSITIONS = ("learned", "rotary")
SOURCES = ("text", "hub", "synthetic")
TOKENIZERS = ("char", "byte", "gpt2")
LOGGERS = ("wandb", "jsonl", "none")
WANDB_MODES = ("offline", "online", "disabled")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("auto", "none", "ddp", "fsdp")


@dataclass
class ModelConfig:
    n_layer: int = 2
    n_head: int = 2
    n_kv_head: Optional[int] = None  # key/value heads, dividing n_head (GQA; 1: MQA); None: n_head
    d_model: int = 64
    block_size: int = 64  # longest sequence the model accepts (learned positions and rotary tables)
    vocab_size: Optional[int] = None  # None: taken from the tokenizer or synthetic data
    vocab_multiple: int = 1  # round the vocabulary up to this (64 keeps GPT-2's 50257 -> 50304 tensor-core friendly)
    dropout: float = 0.0
    bias: bool = False
    positions: str = "learned"
    rope_theta: float = 10000.0
    mlp_ratio: int = 4
    tie_weights: bool = True
    init_std: float = 0.02


@dataclass
class AttentionConfig:
    name: str = "sdpa"
    options: Dict[str, Any] = field(default_factory=dict)  # passed to the backend's factory as keywords


@dataclass
class DataConfig:
    source: str = "text"
    data_dir: str = "./data"
    path: Optional[str] = None  # a text file, absolute or relative to data_dir
    url: Optional[str] = None  # where to fetch `path` from when it is absent (None: data.PUBLIC_CORPORA by name)
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    max_tokens: Optional[int] = None  # stop reading a (streamed) corpus after this many tokens
    tokenizer: str = "char"
    seq_len: int = 64
    val_fraction: float = 0.1
    cache_dir: str = "./data/cache"
    vocab_size: Optional[int] = None  # synthetic data only


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    decay_steps: Optional[int] = None  # None: trainer.max_steps
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "fp8train"
    group: Optional[str] = None  # None: the sweep directory under multirun, else ungrouped
    tags: List[str] = field(default_factory=list)
    job_type: str = "train"
    run_name: Optional[str] = None
    mode: str = "offline"
    system_stats: bool = False  # W&B's sampler of CPU/GPU usage (one more process)


@dataclass
class ParallelConfig:
    strategy: str = "auto"  # auto: DDP when world size > 1, else a plain module
    cpu_offload: bool = False  # FSDP only: parameters, gradients and optimizer state live on the CPU
    reshard_after_forward: bool = True  # FSDP only: free gathered parameters after forward
    nproc_per_node: int = 1  # > 1: relaunch through torchrun's launcher with this many processes
    timeout_s: int = 600  # collective timeout: a dead rank ends the job instead of hanging it


@dataclass
class TrainerConfig:
    max_steps: int = 200
    batch_size: int = 16  # sequences per optimizer step, summed over ranks and accumulation
    micro_batch_size: Optional[int] = None  # per rank and forward; None: batch_size / world size
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    # The backward on the thread that calls it, not on autograd's per-GPU worker thread (docs/architecture.md).
    backward_on_caller_thread: bool = True
    device: str = "auto"
    allow_tf32: bool = True
    seed: int = 1337
    log_interval: int = 10
    eval_interval: int = 100  # 0: never
    eval_batches: int = 20  # global batches of validation data, at most
    # Validation sequences on which each evaluation measures every layer's attention against float64
    # (fp8train/numerics.py); 0: off.
    attn_error_sequences: int = 0
    checkpoint_interval: int = 0  # 0: only at the end
    save_checkpoints: bool = True
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto: newest checkpoint in the run dir; never or a checkpoint dir: a run dir without any
    progress: bool = True  # a bar on a terminal; log lines otherwise
    peak_flops: Optional[float] = None  # per device; None: looked up from the GPU's name
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def kv_heads(model) -> int:
    """Key/value heads of a model config (a ModelConfig or its node): n_kv_head, or n_head when unset."""
    return model.n_kv_head or model.n_head


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _choice(value: str, key: str, choices) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> DictConfig:
    """Typed, resolved copy of a composed config, or ConfigError."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        OmegaConf.resolve(typed)
    except OmegaConfBaseException as e:  # its message repeats the key on further lines: keep the first
        raise ConfigError(getattr(e, "full_key", None) or "config", str(e).splitlines()[0]) from None
    m, d, o, t = typed.model, typed.data, typed.optim, typed.trainer

    for key in ("n_layer", "n_head", "d_model", "block_size", "mlp_ratio", "vocab_multiple"):
        _check(m[key] > 0, f"model.{key}", f"must be positive, got {m[key]}")
    _check(m.d_model % m.n_head == 0, "model.d_model", f"{m.d_model} is not divisible by model.n_head={m.n_head}")
    if m.n_kv_head is not None:
        _check(m.n_kv_head > 0, "model.n_kv_head", f"must be positive, got {m.n_kv_head}")
        _check(m.n_head % m.n_kv_head == 0, "model.n_kv_head",
               f"{m.n_kv_head} does not divide model.n_head={m.n_head} (each key/value head serves a group of "
               f"query heads)")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _choice(m.positions, "model.positions", POSITIONS)
    if m.positions == "rotary":
        _check((m.d_model // m.n_head) % 2 == 0, "model.positions", "rotary needs an even head dimension")
    _check(m.vocab_size is None or m.vocab_size > 0, "model.vocab_size", f"must be positive, got {m.vocab_size}")

    _choice(d.source, "data.source", SOURCES)
    _choice(d.tokenizer, "data.tokenizer", TOKENIZERS)
    _check(d.seq_len > 0, "data.seq_len", f"must be positive, got {d.seq_len}")
    _check(d.seq_len <= m.block_size, "data.seq_len", f"{d.seq_len} exceeds model.block_size={m.block_size}")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    if d.source == "text":
        _check(d.path is not None, "data.path", "a text file is needed when data.source=text")
    if d.source == "hub":
        _check(d.hub_name is not None, "data.hub_name", "a dataset name is needed when data.source=hub")
        _check(not d.streaming or d.max_tokens is not None, "data.max_tokens",
               "a streamed dataset needs a token budget")
    if d.source == "synthetic":
        _check((d.vocab_size or 0) > 0, "data.vocab_size", "synthetic data needs a positive vocabulary size")

    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must be in [0, optim.lr={o.lr}], got {o.min_lr}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(o.decay_steps is None or o.decay_steps > 0, "optim.decay_steps", f"must be positive, got {o.decay_steps}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {o.grad_clip}")

    _choice(typed.attention.name, "attention.name", attention.names())
    _choice(typed.logger.name, "logger.name", LOGGERS)
    _choice(typed.logger.mode, "logger.mode", WANDB_MODES)

    for key in ("max_steps", "batch_size", "log_interval", "eval_batches", "keep_checkpoints"):
        _check(t[key] > 0, f"trainer.{key}", f"must be positive, got {t[key]}")
    for key in ("eval_interval", "checkpoint_interval", "attn_error_sequences"):
        _check(t[key] >= 0, f"trainer.{key}", f"must be >= 0, got {t[key]}")
    _check(not t.attn_error_sequences or t.eval_interval, "trainer.attn_error_sequences",
           "the probe runs at evaluations: set trainer.eval_interval > 0")
    _check(t.micro_batch_size is None or t.micro_batch_size > 0, "trainer.micro_batch_size",
           f"must be positive, got {t.micro_batch_size}")
    _check(0 <= t.seed < 2**32, "trainer.seed", f"must be in [0, 2**32) (numpy's seeds), got {t.seed}")
    _choice(t.precision, "trainer.precision", PRECISIONS)
    _check(t.precision != "fp32" or typed.attention.name not in attention.LOW_PRECISION_ONLY, "trainer.precision",
           f"attention={typed.attention.name} runs bf16/fp16 kernels; use precision bf16 or auto")
    _choice(t.device, "trainer.device", DEVICES)
    _check(t.peak_flops is None or t.peak_flops > 0, "trainer.peak_flops", f"must be positive, got {t.peak_flops}")
    _choice(t.parallel.strategy, "trainer.parallel.strategy", STRATEGIES)
    _check(t.parallel.nproc_per_node > 0, "trainer.parallel.nproc_per_node",
           f"must be positive, got {t.parallel.nproc_per_node}")
    if t.parallel.nproc_per_node > 1:  # the world size we will launch: check the split here, not in every worker
        grad_accumulation(t, t.parallel.nproc_per_node)
    _check(t.parallel.timeout_s > 0, "trainer.parallel.timeout_s", f"must be positive, got {t.parallel.timeout_s}")
    _check(not t.parallel.cpu_offload or t.parallel.strategy == "fsdp", "trainer.parallel.cpu_offload",
           "needs trainer.parallel.strategy=fsdp")
    return typed


def grad_accumulation(trainer: DictConfig, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) that make trainer.batch_size sequences per step on `world_size` ranks."""
    per_rank, rest = divmod(trainer.batch_size, world_size)
    if rest:
        raise ConfigError("trainer.batch_size", f"{trainer.batch_size} is not divisible by the world size {world_size}")
    micro = trainer.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError("trainer.micro_batch_size",
                          f"{micro} does not divide the per-rank batch {per_rank} (batch_size / world size)")
    return micro, per_rank // micro
