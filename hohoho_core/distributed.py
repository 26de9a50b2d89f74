"""One helper for torchrun: read its environment, or fall back to a single process.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
Without them everything here is a no-op around one process, so scripts need no branches.
Only rank 0 should log and save (`is_main_process`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "group_joined",
    "init_distributed",
    "is_main_process",
    "shard",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among ``world_size``, its GPU index, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU), or run alone.

    Single process when ``WORLD_SIZE`` is unset: rank 0, device ``cuda:0`` when a GPU is
    present, else CPU. Calling it again returns the same information without re-joining.
    """
    if "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(0, 1, 0, device, False)
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        # One GPU per process; wrap around when there are more processes than GPUs.
        gpu = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
    else:
        device = torch.device("cpu")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device, True)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def group_joined() -> bool:
    """True when this process is already in a process group (a caller joined it): a script
    called from another one must then leave the group to its caller (no `cleanup`)."""
    return _active()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a single process."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if not _active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if _active():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from ``rank`` (balanced).

    Shards of all ranks are disjoint and together hold every item once.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(items[rank::world])
