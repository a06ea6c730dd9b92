"""The one optimisation loop. Every training method plugs into it through :class:`Method`.

What lives here and nowhere else: AdamW with decoupled weight decay, linear warm-up then
cosine/linear decay, gradient accumulation normalised over the whole accumulated batch,
gradient clipping, periodic evaluation, ``metrics.jsonl`` (and TensorBoard's copy: :class:`Tracker`),
the progress bar, and checkpoints that are either complete or absent (written to a temporary
directory, then renamed), so a run killed at any moment — ``kill -9`` included — resumes from its
last checkpoint and ends with the same parameters as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from . import distributed, faults
from .config import TrainConfig
from .data import write_atomic


@dataclass
class StepLoss:
    """What a method's ``loss`` returns for one micro-batch."""

    loss: torch.Tensor  # scalar, *summed* over the micro-batch's units (tokens, pairs, ...)
    count: torch.Tensor | float  # how many units that sum is over
    metrics: dict[str, float] = field(default_factory=dict)  # per-micro-batch means, logged as-is


class Method(Protocol):
    """A training method: the data it iterates and the loss of one micro-batch."""

    def n_batches(self) -> int:
        """How many micro-batches every epoch has, known without building them."""
        ...

    def batches(self, epoch: int) -> Sequence[Any]:
        """The ``n_batches()`` micro-batches of one epoch, in an order fixed by (seed, epoch)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> StepLoss: ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out metrics (names without the ``eval/`` prefix); ``{}`` if none."""
        ...


# A method may also name the held-out metric that early stopping watches, e.g.
# ``monitor = ("accuracy", "max")``; without it, ``patience`` watches ``("loss", "min")``.


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}")


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout of ``model``: ``nn.Dropout`` modules and the float ``attention_dropout``
    that some attention implementations read instead (Llama, Qwen2, Mistral)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing in every Hugging Face model inside ``model``."""
    from transformers import PreTrainedModel

    found = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Hugging Face model that supports gradient checkpointing")
    for m in found:
        if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def autocast(cfg: TrainConfig, device: torch.device | None = None):
    """The forward's precision: bf16 autocast over fp32 weights (on ``device``'s type), or nothing."""
    kind = (device or distributed.device()).type
    return torch.autocast(kind, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()


def steps_per_epoch(method: Method, cfg: TrainConfig) -> int:
    """Optimiser steps in one epoch: the method's micro-batches, ``grad_accum`` to a step."""
    n_micro = method.n_batches()
    if n_micro == 0:
        raise ValueError("the training data yields no batches")
    return math.ceil(n_micro / cfg.grad_accum)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


# ----------------------------------------------------------------------------------- checkpoints

CKPT_DIR = "checkpoints"


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
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
    weights = _trainable_state(model)
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


def _load_params(model, values: dict[str, torch.Tensor], where: Path) -> None:
    params = dict(model.named_parameters())
    for name, value in values.items():
        if name not in params:
            raise ValueError(f"{where}: checkpoint holds {name!r}, which this model does not have")
        distributed.assign(params[name], value)


def load_checkpoint(path: Path, model, optimizer) -> tuple[dict, dict | None]:
    """Restore model, optimiser and RNG (every process); returns the loop state and the best weights (if kept)."""
    _load_params(model, load_file(str(path / "model.safetensors")), path)
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


# ---------------------------------------------------------------------------------- the loop


def _step_of(line: str) -> float:
    """A metrics row's step; a line a kill cut in half is past every checkpoint (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step; on resume, rows past the checkpoint go."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= resume_step]
            write_atomic(path, "".join(r + "\n" for r in rows))
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def check_report_to(report_to: str) -> None:
    """Fail before any training when ``--train.report-to`` names a tracker whose package is missing."""
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if package is not None:
        try:
            __import__(package)
        except ImportError:
            raise ValueError(f"--train.report-to {report_to} needs the {package} package: pip install {package}") from None


class Tracker:
    """``--train.report-to``: each row's numbers, beside metrics.jsonl; with ``none``, and off the
    main process, nothing. ``prefix`` names a second series (RL's ``iteration/``, x = the iteration).

    * ``tensorboard``: scalars (tag = prefix + name, at ``step``) in ``out/tensorboard/SUB``. A fresh
      run (``resume_from`` None) removes the directory's old event files; a resumed one hides every
      earlier event at step ``resume_from`` or later (SummaryWriter's ``purge_step``, which
      TensorBoard applies to every tag of a directory — hence a directory per series), so no step
      is shown twice.
    * ``wandb``: one W&B run per ``out`` (offline unless ``WANDB_MODE`` says otherwise: no account, no
      network; ``wandb sync out/wandb/offline-run-*`` uploads it), its config the run's
      run_config.json; the loop's metrics against ``step``, a prefixed series against its own
      ``PREFIX/x`` (``define_metric``). A resumed run continues the same W&B run id
      (``out/wandb/run_id``); W&B keeps what it was sent, so the rows a resume repeats (those
      past the checkpoint) appear twice there.
    """

    def __init__(self, out: Path, report_to: str, resume_from: int | None = None, sub: str = ""):
        check_report_to(report_to)
        self.writer = self.run = None
        self.owns_run, self.series = False, set()
        if not distributed.is_main():
            return
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            logdir = out / "tensorboard" / sub
            if resume_from is None:
                for old in logdir.glob("events.out.tfevents.*"):
                    old.unlink()
            self.writer = SummaryWriter(str(logdir), purge_step=resume_from)
        elif report_to == "wandb":
            import wandb

            self.run = wandb.run
            if self.run is None:  # RL's iteration series and the loop share one run
                id_file = out / "wandb" / "run_id"
                run_id = id_file.read_text().strip() if resume_from is not None and id_file.exists() else None  # None: a new one
                config = json.loads((out / "run_config.json").read_text()) if (out / "run_config.json").exists() else {}
                mode = os.environ.get("WANDB_MODE", "offline")
                self.run = wandb.init(project="preftune", name=out.name, id=run_id, resume="allow", dir=str(out), mode=mode, config=config)
                write_atomic(id_file, self.run.id)
                self.owns_run = True

    def log(self, row: dict, step: int, prefix: str = "") -> None:
        numbers = {
            prefix + name: value
            for name, value in row.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and name not in ("step", "iteration")
        }
        if self.writer is not None:
            for name, value in numbers.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()  # as current as metrics.jsonl: a killed run loses no logged step
        if self.run is not None:  # each series against its own x (W&B's own step only counts calls)
            x = f"{prefix}x" if prefix else "step"
            for name in numbers.keys() - self.series:
                self.run.define_metric(name, step_metric=x)
                self.series.add(name)
            self.run.log({**numbers, x: step})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.run is not None and self.owns_run:
            self.run.finish()
        self.run = None


def train(model: torch.nn.Module, method: Method, cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Optimise ``model`` with ``method`` under ``cfg``; returns the last logged metrics.

    ``on_step(step)`` is called after each completed optimiser step (used by tests to interrupt).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    distributed.setup()
    torch.manual_seed(cfg.seed)
    if not cfg.dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    main, world = distributed.is_main(), distributed.world_size()
    # Under torchrun: DDP (each process holds everything, gradients are averaged) or FSDP2, which
    # trains a sharded copy while the caller's model gives up its storage and gets the result back.
    fsdp = cfg.fsdp and world > 1
    device = next(model.parameters()).device
    module = distributed.fully_shard(copy.deepcopy(model)) if fsdp else model
    if fsdp:
        for p in model.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    optimizer = make_optimizer(module, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_epoch = steps_per_epoch(method, cfg)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    warmup = int(cfg.warmup * total)

    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best": None, "bad_evals": 0}
    monitor, mode = getattr(method, "monitor", ("loss", "min"))
    best: dict[str, torch.Tensor] | None = None  # weights at the best held-out metric
    ckpt = latest_checkpoint(out)
    if cfg.resume and ckpt is not None:
        state, best = load_checkpoint(ckpt, module, optimizer)
        print(f"resuming from {ckpt} (step {state['step']} of {total})")
    elif ckpt is not None:
        raise FileExistsError(f"{out} holds checkpoints of an earlier run; pass --resume to continue it or choose another --out")
    log = MetricsLog(out / "metrics.jsonl", state["step"] if cfg.resume else None) if main else None
    tracker = Tracker(out, cfg.report_to, state["step"] + 1 if cfg.resume else None)
    # Each process runs its shard of every micro-batch; DDP and FSDP average the gradients over
    # processes, and the normalisation below turns that into the global sum / count.
    trained = torch.nn.parallel.DistributedDataParallel(module) if world > 1 and not fsdp else module

    bar = None
    if cfg.progress and main:
        from tqdm.auto import tqdm

        quiet_log = not sys.stderr.isatty()  # in a log file, a line every few seconds is enough
        bar = tqdm(
            total=total, initial=state["step"], desc=out.name, unit="step", dynamic_ncols=True, mininterval=5.0 if quiet_log else 0.1
        )
    start = time.perf_counter()
    last: dict[str, float] = {}
    module.train()
    while state["step"] < total and not state.get("stopped_early"):
        micro = method.batches(state["epoch"])
        if len(micro) != method.n_batches():
            raise AssertionError(f"{type(method).__name__}.batches gave {len(micro)} micro-batches, n_batches() says {method.n_batches()}")
        groups = [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
        for group in groups[state["step_in_epoch"] :]:
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * lr_factor(state["step"], total, warmup, cfg.schedule)
            loss_sum, count, sums = 0.0, 0.0, defaultdict(float)
            for batch in group:
                part = distributed.shard(batch) if world > 1 else batch
                if not part:
                    raise ValueError(
                        f"a micro-batch of {len(batch)} cannot be split over {world} processes: use more data or a larger batch"
                    )
                with autocast(cfg, device):
                    res = method.loss(trained, part)
                res.loss.backward()  # summed; normalised below over the whole accumulated batch
                loss_sum += res.loss.item()
                count += float(res.count)
                for k, v in res.metrics.items():
                    sums[k] += v / len(group)
            loss_sum, count = distributed.sum_all(loss_sum), distributed.sum_all(count)
            if count > 0:
                torch._foreach_div_([p.grad for p in params if p.grad is not None], count / world)
            grad_norm = distributed.full_tensor(
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["step_in_epoch"] += 1
            done = state["step"] >= total
            if state["step_in_epoch"] == len(groups):
                state["epoch"] += 1
                state["step_in_epoch"] = 0

            row = {"loss/train": loss_sum / max(count, 1e-12), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"], **sums}
            if cfg.eval_every and state["step"] % cfg.eval_every == 0 or done:
                with autocast(cfg, device):
                    row.update({f"eval/{k}": v for k, v in _evaluate(module, method).items()})
                if cfg.patience and f"eval/{monitor}" in row:
                    value = row[f"eval/{monitor}"]
                    if state["best"] is None or (value > state["best"] if mode == "max" else value < state["best"]):
                        state["best"], state["bad_evals"] = value, 0
                        best = {k: v.clone() for k, v in _trainable_state(module).items()}
                    else:
                        state["bad_evals"] += 1
                        if state["bad_evals"] >= cfg.patience:
                            print(f"early stopping at step {state['step']}: eval/{monitor} has not improved for {cfg.patience} evaluations")
                            done, state["stopped_early"] = True, True
            if state["step"] % cfg.log_every == 0 or done or any(k.startswith("eval/") for k in row):
                last = {
                    "step": state["step"],
                    "epoch": round(state["step"] / per_epoch, 4),
                    **row,
                    "time/elapsed_s": round(time.perf_counter() - start, 3),
                }
                if log is not None:
                    log.write(last)
                tracker.log(last, state["step"])
            if cfg.save_every and state["step"] % cfg.save_every == 0 or done:
                save_checkpoint(out, module, optimizer, state, best)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss/train']:.4f}", refresh=False)  # refreshing here would defeat mininterval
            faults.point("step", state["step"])
            if on_step is not None:
                on_step(state["step"])
            if done or state.get("stopped_early"):
                break
    if bar is not None:
        bar.close()
    tracker.close()
    if cfg.patience and best is not None:
        _load_params(module, best, out)
        last = {**last, f"best/eval/{monitor}": state["best"]}
        print(f"kept the weights with the best eval/{monitor} = {state['best']:.4f}")
    if fsdp:  # the whole trained weights back into the caller's model, in every process
        whole = {n: distributed.full_tensor(p.detach()) for n, p in module.named_parameters()}
        for name, p in model.named_parameters():
            p.data = whole[name]
    model.eval()
    return last


def _evaluate(model, method: Method) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        res = method.evaluate(model)
    distributed.reshard(model)  # FSDP's root keeps its weights gathered after a forward without backward
    model.train(was_training)
    return res
