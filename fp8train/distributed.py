"""Process group, model wrapping (DDP or FSDP2) and the few collectives the loop needs.

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain launch is
rank 0 of 1 and runs the same code, its collectives reducing to no-ops. NCCL on CUDA
(with gloo beside it for CPU tensors), gloo on CPU; every collective has a timeout so a
dead rank ends the job instead of hanging it.
"""
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from fp8train.errors import ConfigError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this process created the group, so tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", "cuda requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_strategy(name: str, world_size: int) -> str:
    if name == "auto":
        return "ddp" if world_size > 1 else "none"
    if name == "none" and world_size > 1:
        raise ConfigError("trainer.parallel.strategy",
                          f"'none' cannot train on {world_size} processes; use ddp or fsdp")
    return name


def setup(trainer_cfg) -> DistEnv:
    """Join (or, for DDP/FSDP in one plain process, create) the process group; pick this rank's device."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(trainer_cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    strategy = resolve_strategy(trainer_cfg.parallel.strategy, world)
    owns = False
    if not dist.is_initialized() and ("RANK" in os.environ or strategy != "none"):
        kwargs = dict(backend="cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo",
                      timeout=timedelta(seconds=trainer_cfg.parallel.timeout_s))
        if device.type == "cuda":
            kwargs["device_id"] = device
        if "RANK" not in os.environ:  # DDP/FSDP asked for in a plain launch: a group of one
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(**kwargs)
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world, local_rank, device, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, strategy: str, env: DistEnv, parallel_cfg, bf16: bool, compile: bool):
    """The module the loop trains: plain, DDP or FSDP2 (one shard group per block, then the root)."""
    if strategy == "fsdp":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        offload = CPUOffloadPolicy() if parallel_cfg.cpu_offload else OffloadPolicy()
        for block in model.blocks:
            if compile:  # per block, as FSDP's hooks sit between blocks
                block.compile()
            fully_shard(block, mp_policy=mp, offload_policy=offload,
                        reshard_after_forward=parallel_cfg.reshard_after_forward)
        # The root's parameters (embeddings, final norm) are used again right at backward's start.
        fully_shard(model, mp_policy=mp, offload_policy=offload, reshard_after_forward=False)
        return model
    if compile:
        model.compile()  # in place: parameter names, hence checkpoints, stay unprefixed
    if strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


@contextmanager
def grad_sync(model, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on accumulation steps that are not the last."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        with model.no_sync() if isinstance(model, DistributedDataParallel) and not enabled else nullcontext():
            yield


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
