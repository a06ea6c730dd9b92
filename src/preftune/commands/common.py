"""Helpers every command shares: threads, device and process group, the held-out split, prompts with a limit, printing rows."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from typing import Any

import torch

from .. import __version__, distributed
from ..config import TrainConfig, save_config
from ..data import Comparison, Encoded, Ranking, load_comparisons, load_prompts, write_jsonl


def prepare(cfg: Any = None) -> None:
    """Before a command runs: torch threads (``PREFTUNE_THREADS``, else every core), ``cfg``'s
    ``--device`` if it has one, and under torchrun the process group."""
    torch.set_num_threads(int(os.environ.get("PREFTUNE_THREADS", os.cpu_count() or 1)))
    if getattr(cfg, "device", None):
        distributed.use_device(cfg.device)
    distributed.setup()


def record_config(cfg: Any, command: str) -> None:
    """The run's resolved config as ``OUT/run_config.json`` (one process writes it)."""
    if distributed.is_main():
        save_config(cfg, f"{cfg.train.out}/run_config.json", command=command, preftune=__version__)


def comparisons(
    data: str, eval_data: str, fraction: float, seed: int, chat=None
) -> tuple[list[Comparison | Ranking], list[Comparison | Ranking]]:
    """Training and held-out comparisons: ``eval_data``'s, or a seeded ``fraction`` of ``data``
    (conversations rendered with ``chat``'s chat template)."""
    records = load_comparisons(data, chat)
    held = load_comparisons(eval_data, chat) if eval_data else []
    return (records, held) if held else held_out_split(records, fraction=fraction, seed=seed)


def global_batch_size(train: TrainConfig) -> int:
    """Examples per micro-batch over all processes: ``--train.batch-size`` is per process (TRL's convention)."""
    return train.batch_size * distributed.world_size()


def held_out_split(items: list, fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """A seeded (train, held-out) split; nothing is held out of fewer than 20 items."""
    order = list(range(len(items)))
    random.Random(f"holdout-{seed}").shuffle(order)
    k = max(1, int(len(items) * fraction)) if len(items) >= 20 else 0
    held = set(order[:k])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def report_truncation(encoded: Sequence[Encoded], what: str) -> None:
    n = sum(e.truncated for e in encoded)
    if n:
        print(f"note: {n} of {len(encoded)} {what} were truncated (policy: preftune.data module doc)")


def prompts_from(path: str, limit: int = 0, chat=None) -> list[str]:
    """The prompts of a ``{'prompt'}`` file, only the first ``limit`` when it is not 0."""
    prompts = load_prompts(path, chat)
    return prompts[:limit] if limit else prompts


def emit_rows(rows: list[dict], out: str, what: str) -> None:
    """Write rows to ``out`` as JSONL, or print them one JSON object per line when ``out`` is empty."""
    if out:
        write_jsonl(out, rows)
        print(f"wrote {len(rows)} {what} to {out}")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
