"""Stages that are rebuilt only when what they are made from changes: the experiments' pipeline
and ``preftune iterate``'s rounds.

A training stage (a command with ``--train.out``) is fresh when its directory holds a finished
model made from the same config and inputs (``run_config.json`` and ``inputs.sha256``); one
interrupted with the same config and inputs resumes from its checkpoint; anything else is rebuilt.
A file stage (samples, labels) is fresh when the digest beside it (``FILE.sha256``) is that of its
inputs now.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from . import faults
from .atomic import write_atomic
from .config import (
    DPOConfig,
    LabelsConfig,
    PretrainConfig,
    RewardConfig,
    RLConfig,
    SampleConfig,
    SFTConfig,
    WorldConfig,
    to_dict,
)

# Every stage a settings mapping may configure (an experiment file's ``pipeline:`` section, the
# stages of ``preftune iterate --settings``), and the config each one's settings override.
STAGE_CONFIGS = {
    "world": WorldConfig,
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "sample": SampleConfig,
    "labels": LabelsConfig,
    "reward": RewardConfig,
    "rl": RLConfig,
    "dpo": DPOConfig,
}


def digest(paths: list[str], extra: object = None) -> str:
    """sha256 of files (a model directory: its weights) and of ``extra`` (any JSON value)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).is_file() else (Path(p) / "model.safetensors").read_bytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def _same(old: dict, now: dict, default: dict) -> bool:
    """``now`` as saved equals ``old``; a field ``old`` lacks (added since) matches at its default."""
    for k, v in now.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            if not _same(old[k], v, default.get(k) or {}):
                return False
        elif old.get(k, default.get(k)) != v:
            return False
    return True


def made_from(out: Path, cfg, inputs_digest: str) -> bool:
    """True if the run in ``out`` was started from exactly ``cfg`` and inputs with this digest."""
    saved, stamp = out / "run_config.json", out / "inputs.sha256"
    if not saved.exists() or not stamp.exists() or stamp.read_text() != inputs_digest:
        return False
    now, default = (json.loads(json.dumps(to_dict(c))) for c in (cfg, type(cfg)()))  # as saved: a tuple reads back as a list
    return _same(json.loads(saved.read_text()), now, default)


def reset_stage(name: str, cfg, inputs: list[str]):
    """``cfg`` ready to run the stage (resuming an interrupted run with the same config and inputs;
    anything else in its directory removed), or None if its output is fresh."""
    out = Path(cfg.train.out)
    stamp = digest(inputs)
    resumable = made_from(out, cfg, stamp)
    if resumable and (out / "config.json").exists():  # finished: save_model moves config.json in last
        print(f"{name}: reusing {out} (same config and inputs)")
        return None
    if not resumable:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)  # not fresh until the stage finishes again
    write_atomic(out / "inputs.sha256", stamp)
    return replace(cfg, train=replace(cfg.train, resume=resumable))


def timed(stage, cfg, log: str | None = None) -> float:
    """Run a stage; its output goes to ``log`` when given (a worker's). Returns its wall seconds."""
    s = time.perf_counter()
    if log is None:
        stage(cfg)
    else:
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            stage(cfg)
    return round(time.perf_counter() - s, 1)


def worker_start() -> None:
    """Each worker process: one thread, so that workers sharing the cores do not oversubscribe them."""
    os.environ["PREFTUNE_THREADS"] = "1"
    torch.set_num_threads(1)


def run_stage(name: str, stage, cfg, inputs: list[str], timings: dict) -> bool:
    """Run a training stage in this process unless its output is fresh; returns True if it ran."""
    ready = reset_stage(name, cfg, inputs)
    if ready is None:
        return False
    timings[name] = timed(stage, ready)
    write_atomic(Path(cfg.train.out) / "wall_seconds", str(timings[name]))
    faults.point("stage")
    return True


def file_stage(out: Path, inputs: list[str], extra: object, make: Callable[[Path], object]) -> Path:
    """``out`` made by ``make(out)`` unless it is fresh: made before from the same ``inputs`` and
    ``extra``. ``make`` must write ``out`` atomically; the digest is stamped after it."""
    stamp, now = out.with_name(out.name + ".sha256"), digest(inputs, extra)
    if out.exists() and stamp.exists() and stamp.read_text() == now:
        return out
    stamp.unlink(missing_ok=True)
    make(out)
    write_atomic(stamp, now)
    return out


def merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, recursively for nested mappings (an experiment's settings over the demo's)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
