"""DDP helpers: one process per device under ``torchrun``, a single process otherwise.

``torchrun --nproc_per_node N`` sets WORLD_SIZE / RANK / LOCAL_RANK; with WORLD_SIZE > 1 we join the
process group from those (backend nccl on CUDA, gloo on CPU). Only rank 0 writes files; every rank
computes, and logged loss terms are averaged over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from occfeat.errors import OccfeatError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits. ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # True when init_distributed created the process group (so it tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """``"auto"`` → this rank's CUDA device when there is one, else the CPU; otherwise ``name``."""
    if name == "auto":
        return torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OccfeatError(f"train.device={name} but this machine has no CUDA device; use train.device=auto or cpu")
    if device.type == "cuda" and env.enabled:
        device = torch.device("cuda", env.local_rank)
    return device


def init_distributed() -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); a single-process env otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)  # MASTER_ADDR/PORT come from torchrun's env
        owns = True
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, owns_group=owns)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``t`` over ranks (in place on a copy); ``t`` itself when not distributed."""
    if not env.enabled:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_error(message: str | None, env: DistEnv) -> str | None:
    """Share rank 0's error message (e.g. "run dir exists") with every rank, so all stop together."""
    if not env.enabled:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]
