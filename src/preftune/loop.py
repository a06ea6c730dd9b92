"""The one optimisation loop. Every training method plugs into it through :class:`Method`.

What lives here and nowhere else: AdamW with decoupled weight decay, linear warm-up then
cosine/linear decay, gradient accumulation normalised over the whole accumulated batch,
gradient clipping, periodic evaluation and early stopping, the progress bar, bf16 autocast,
dropout and activation-checkpointing switches, DDP / FSDP2 wrapping. It saves a checkpoint every
``save_every`` steps (:mod:`preftune.checkpoint`: complete or absent), so a run killed at any
moment — ``kill -9`` included — resumes from its last checkpoint and ends with the same parameters
as a run that was never interrupted; its rows go to ``metrics.jsonl`` and any tracker
(:mod:`preftune.tracking`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from . import distributed, faults
from .checkpoint import latest_checkpoint, load_checkpoint, load_params, save_checkpoint, trainable_state
from .config import TrainConfig
from .tracking import MetricsLog, Tracker


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
# ``monitor = ("accuracy", "max")``; without it, ``patience`` watches ``("loss", "min")``. It may
# carry ``alarms`` (:class:`preftune.alarms.Alarms`), checked every step against the step's metrics
# and whatever its ``monitors()`` returns (RL: the current rollout's statistics).


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
    # The fused kernel (one pass over each tensor: 4-5x faster than the default on this CPU at 135M
    # parameters, and no foreach temporaries) where it applies: plain CPU or CUDA float tensors, not
    # FSDP's sharded DTensors.
    fused = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused or None)


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
    alarms = getattr(method, "alarms", None)
    if cfg.stop_on_alarm and alarms is None:
        raise ValueError(f"--train.stop-on-alarm: {type(method).__name__} raises no alarms (the DPO family and rl do)")
    best: dict[str, torch.Tensor] | None = None  # weights at the best held-out metric
    ckpt = latest_checkpoint(out)
    if cfg.resume and ckpt is not None:
        state, best = load_checkpoint(ckpt, module, optimizer)
        print(f"resuming from {ckpt} (step {state['step']} of {total})")
        if alarms is not None:
            alarms.load_state(state.get("alarms", {}))
    elif ckpt is not None:
        raise FileExistsError(f"{out} holds checkpoints of an earlier run; pass --resume to continue it or choose another --out")
    log = MetricsLog(out / "metrics.jsonl", state["step"] if cfg.resume else None) if main else None
    tracker = Tracker(out, cfg.report_to, state["step"] + 1 if cfg.resume else None)
    at_start = getattr(method, "at_start", None)  # monitors measured before training (DPO's at pi_SFT): step 0
    if at_start and state["step"] == 0:
        if log is not None:
            log.write({"step": 0, "epoch": 0.0, **at_start})
        tracker.log(at_start, 0)
    # Each process runs its shard of every micro-batch; DDP and FSDP average the gradients over
    # processes, and the normalisation below turns that into the global sum / count.
    trained = torch.nn.parallel.DistributedDataParallel(module) if world > 1 and not fsdp else module
    if fsdp and hasattr(method, "bind"):  # a method that samples from the model it trains (RL) samples from the sharded copy
        method.bind(module)

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
                        best = {k: v.clone() for k, v in trainable_state(module).items()}
                    else:
                        state["bad_evals"] += 1
                        if state["bad_evals"] >= cfg.patience:
                            print(f"early stopping at step {state['step']}: eval/{monitor} has not improved for {cfg.patience} evaluations")
                            done, state["stopped_early"] = True, True
            if alarms is not None and _raise_alarms(alarms, state["step"], row, method, out.name) and cfg.stop_on_alarm:
                print(f"{out.name}: stopping at step {state['step']} (--train.stop-on-alarm)", flush=True)
                done, state["stopped_early"] = True, True
            if state["step"] % cfg.log_every == 0 or done or any(k.startswith(("eval/", "alarm/")) for k in row):
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
                if alarms is not None:
                    state["alarms"] = alarms.state()  # what has fired and the starts, for a resumed run
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
        load_params(module, best, out)
        last = {**last, f"best/eval/{monitor}": state["best"]}
        print(f"kept the weights with the best eval/{monitor} = {state['best']:.4f}")
    if fsdp:  # the whole trained weights back into the caller's model, in every process
        whole = {n: distributed.full_tensor(p.detach()) for n, p in module.named_parameters()}
        for name, p in model.named_parameters():
            p.data = whole[name]
    model.eval()
    return last


def _raise_alarms(alarms, step: int, row: dict, method, name: str) -> bool:
    """Check ``alarms`` on this step's metrics (and the method's ``monitors()``); print each that fires
    for the first time and mark it in ``row`` as ``alarm/NAME`` = 1. Under torchrun rank 0 decides
    and every process learns of it, so all stop together. True when one fired."""
    values = {**row, **(method.monitors() if hasattr(method, "monitors") else {})}
    fired = alarms.check(step, values) if distributed.is_main() else {}
    for rule, message in fired.items():
        print(f"ALARM {name} step {step} [{rule}]: {message}", flush=True)
        row[f"alarm/{rule}"] = 1.0
    return distributed.sum_all(float(len(fired))) > 0


def _evaluate(model, method: Method) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        res = method.evaluate(model)
    distributed.reshard(model)  # FSDP's root keeps its weights gathered after a forward without backward
    model.train(was_training)
    return res
