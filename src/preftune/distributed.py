"""Several processes under ``torchrun``: the process group, this process's rank, and the few sums
the loop needs. One process (no ``torchrun``) is world size 1 and every function is a no-op."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes files and prints (rank 0)."""
    return rank() == 0


_DEVICE = torch.device("cpu")


def use_device(name: str) -> torch.device:
    """Make ``name`` (``auto|cpu|cuda|mps``; auto: cuda, else mps, else cpu) this process's device:
    models are loaded onto it and every tensor follows them. Under torchrun, cuda is ``cuda:LOCAL_RANK``."""
    global _DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch on this machine")
        _DEVICE = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(_DEVICE)
    elif name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("--device mps: Apple's MPS backend is not available on this machine")
        _DEVICE = torch.device("mps")
    elif name == "cpu":
        _DEVICE = torch.device("cpu")
    else:
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return _DEVICE


def device() -> torch.device:
    """This process's device (``use_device``; cpu until a command sets it)."""
    return _DEVICE


def setup() -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), once."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if _DEVICE.type == "cuda" else "gloo")


def finish() -> None:
    """Leave the process group together (a process that exits while another still talks aborts it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave() -> None:
    """Under torchrun: leave the group together, then exit 0 without the interpreter's teardown.

    gloo's threads can abort that teardown ("terminate called without an active exception",
    about one run in ten here) after every file is written, which torchrun reports as a failed run.
    Call it last, when the run has succeeded; with one process it does nothing.
    """
    if world_size() > 1:
        finish()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def sum_all(value: float) -> float:
    """``value`` summed over every process."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_DEVICE)
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


# ---------------------------------------------------------------------------------------- FSDP2


def fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over ``model`` in place: each transformer block (the classes Hugging Face names in
    ``_no_split_modules``) is one unit, the root holds the rest (embeddings, head, tied weights)."""
    from torch.distributed.fsdp import fully_shard as shard_module
    from transformers import PreTrainedModel

    names = {n for m in model.modules() if isinstance(m, PreTrainedModel) for n in (m._no_split_modules or [])}
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in names:
            shard_module(module)
    shard_module(model)
    return model


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """FSDP: ``model``'s whole weights in every process for the block, in one all-gather. Forwards in
    it need no collective, so processes may run different numbers of them (RL's rollouts: each
    process decodes its own prompts until its own rows end). Sharded again on leaving; the root keeps
    FSDP's default of not resharding after a forward. Without FSDP: ``model`` as it is."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield model
        return
    for unit in model.modules():  # the root and every block: each all-gathers its own parameters
        if isinstance(unit, FSDPModule):
            unit.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)
        reshard(model)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights of every FSDP unit in ``model`` (no-op without FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process if it is a sharded DTensor (collective), else itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into ``param``, or into this process's shard of it (a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            param.copy_(distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements))
        else:
            param.copy_(value)
