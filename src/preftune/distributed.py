"""Several processes under ``torchrun``: the process group, this process's rank, and the few sums
the loop needs. One process (no ``torchrun``) is world size 1 and every function is a no-op."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes files and prints (rank 0)."""
    return rank() == 0


def setup() -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), once."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def sum_all(value: float) -> float:
    """``value`` summed over every process."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def gather(items: list) -> list:
    """Every process's ``items`` concatenated in rank order, on every process (picklable objects)."""
    if world_size() == 1:
        return list(items)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(batch: list, index: int | None = None, size: int | None = None) -> list:
    """This process's contiguous share of a global micro-batch (the one-process order, cut in ``size`` pieces)."""
    index, size = rank() if index is None else index, world_size() if size is None else size
    per = -(-len(batch) // size)
    return batch[index * per : (index + 1) * per]
