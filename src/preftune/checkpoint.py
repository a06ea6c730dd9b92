"""Checkpoints that are either complete or absent, so a run killed at any moment resumes.

A checkpoint is the directory ``OUT/checkpoints/step-N``: the trainable weights (whole, gathered
under FSDP), the AdamW states, every process's RNG states and the loop's state, written to a
temporary directory, each file hashed and fsynced, a manifest of their sizes and SHA-256 written
last, then published by one rename. :func:`latest_checkpoint` checks the manifest and moves a
damaged checkpoint aside, falling back to the one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import distributed, faults

CKPT_DIR = "checkpoints"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole trainable parameters by name; under FSDP gathered from every process (all must call)."""
    return {n: distributed.full_tensor(p.detach()).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(out: Path, model, optimizer, state: dict, best: dict | None = None, keep: int = 2) -> Path:
    """Write ``out/checkpoints/step-N`` atomically: everything goes to a temp dir, then one rename.

    Every process calls it; rank 0 writes. Weights and AdamW states are whole (gathered under FSDP),
    not one process's shard; each process's RNG states (CPU, and CUDA when used) are kept.
    """
    weights = trainable_state(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer_state = get_optimizer_state_dict(model, optimizer, options=_full_state_options())
    else:
        optimizer_state = optimizer.state_dict()
    rngs = distributed.gather([torch.get_rng_state()])
    cuda_rngs = distributed.gather([torch.cuda.get_rng_state()]) if torch.cuda.is_initialized() else None
    root = out / CKPT_DIR
    final = root / f"step-{state['step']:07d}"
    if distributed.is_main():
        _write_checkpoint(root, final, weights, best, optimizer_state, rngs, cuda_rngs, state, keep)
    distributed.barrier()  # nobody runs ahead of a checkpoint it might resume from
    return final


def _write_checkpoint(root: Path, final: Path, weights, best, optimizer_state, rngs, cuda_rngs, state: dict, keep: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "model.safetensors"))
    if best is not None:
        save_file(best, str(tmp / "best.safetensors"))
    blob = {
        "optimizer": optimizer_state,
        "torch_rng": rngs[0],
        "torch_rng_ranks": rngs,
        "cuda_rng_ranks": cuda_rngs,
        "py_rng": random.getstate(),
    }
    torch.save(blob, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    # each file hashed and made durable in one read, the manifest last, all before the rename publishes them
    manifest = {f.name: _file_digest(f, sync=True) for f in sorted(tmp.iterdir())}
    faults.point("checkpoint", state["step"])
    with (tmp / MANIFEST).open("w") as fh:
        fh.write(json.dumps(manifest))
        fh.flush()
        os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


MANIFEST = "manifest.json"  # each file's size and SHA-256, written last


def _file_digest(path: Path, sync: bool = False) -> dict:
    """A file's size and SHA-256; with ``sync``, also flushed to disk (``fsync``) while it is open."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (a file missing, cut short or changed since it was
    written), or None if it is whole."""
    manifest = ckpt / MANIFEST
    if not manifest.exists():  # written by preftune before manifests (each checkpoint is published whole with one)
        return None if (ckpt / "state.json").exists() else "no state.json"
    try:
        files = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return f"{MANIFEST} is not valid JSON"
    for name, want in files.items():
        f = ckpt / name
        if not f.exists():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, {want['bytes']} were written"
        if _file_digest(f)["sha256"] != want["sha256"]:
            return f"{name} has changed since it was written (SHA-256 differs)"
    return None


def latest_checkpoint(out: Path) -> Path | None:
    """The newest whole checkpoint in ``out``. A newer one that is damaged (a truncated or corrupted
    file) is renamed ``damaged-step-N`` with a message, and the one before it is used."""
    root = out / CKPT_DIR
    for ckpt in sorted(root.glob("step-*"), reverse=True) if root.exists() else []:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if distributed.is_main():
            damaged = ckpt.with_name(f"damaged-{ckpt.name}")
            shutil.rmtree(damaged, ignore_errors=True)
            ckpt.rename(damaged)
            print(f"warning: checkpoint {ckpt} is damaged ({problem}); moved to {damaged.name}, falling back to the one before it")
        distributed.barrier()
    return None


def checkpoint_state(out: str | Path) -> dict | None:
    """The loop state (``step``, ``epoch``, ``step_in_epoch``, ...) of the last complete checkpoint
    in ``out``, or None: where a resumed run will continue."""
    ckpt = latest_checkpoint(Path(out))
    return json.loads((ckpt / "state.json").read_text()) if ckpt is not None else None


def load_params(model, values: dict[str, torch.Tensor], where: Path) -> None:
    params = dict(model.named_parameters())
    for name, value in values.items():
        if name not in params:
            raise ValueError(f"{where}: checkpoint holds {name!r}, which this model does not have")
        distributed.assign(params[name], value)


def load_checkpoint(path: Path, model, optimizer) -> tuple[dict, dict | None]:
    """Restore model, optimiser and RNG (every process); returns the loop state and the best weights (if kept)."""
    load_params(model, load_file(str(path / "model.safetensors")), path)
    blob = torch.load(path / "optimizer.pt", weights_only=False)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=_full_state_options())
    else:
        optimizer.load_state_dict(blob["optimizer"])
    rngs = blob.get("torch_rng_ranks", [])
    same_world = len(rngs) == distributed.world_size()
    torch.set_rng_state(rngs[distributed.rank()] if same_world else blob["torch_rng"])
    if blob.get("cuda_rng_ranks") and same_world and torch.cuda.is_available():
        torch.cuda.set_rng_state(blob["cuda_rng_ranks"][distributed.rank()])
    random.setstate(blob["py_rng"])
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None
    return json.loads((path / "state.json").read_text()), best
