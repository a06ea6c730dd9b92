"""Helpers every command shares: threads, device and process group, the held-out split, prompts with a limit, printing rows."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__, distributed
from ..atomic import write_jsonl
from ..checkpoint import CKPT_DIR
from ..config import TrainConfig, save_config, to_dict
from ..data import Comparison, Encoded, Ranking, load_comparisons, load_prompts
from ..tracking import check_report_to


def prepare(cfg: Any = None) -> None:
    """Before a command runs: torch threads (``PREFTUNE_THREADS``, else every core), ``cfg``'s
    ``--device`` if it has one, and under torchrun the process group; a ``--train.report-to``
    whose package is missing fails here, before anything is loaded."""
    if isinstance(getattr(cfg, "train", None), TrainConfig):
        check_report_to(cfg.train.report_to)
    torch.set_num_threads(int(os.environ.get("PREFTUNE_THREADS", os.cpu_count() or 1)))
    if getattr(cfg, "device", None):
        distributed.use_device(cfg.device)
    distributed.setup()


# What a resumed run may change: how it reports and where it runs, not what it computes.
RESUMABLE_CHANGES = ("train.resume", "train.progress", "train.save_every", "train.report_to", "device")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def record_config(cfg: Any, command: str) -> None:
    """The run's resolved config as ``OUT/run_config.json`` (one process writes it). With
    ``--train.resume``, a config that differs from the saved one (outside ``RESUMABLE_CHANGES``) is
    refused, naming the fields: the resumed run would not be the run that was started."""
    if not distributed.is_main():
        return
    path = Path(cfg.train.out) / "run_config.json"
    if cfg.train.resume and path.exists() and any((Path(cfg.train.out) / CKPT_DIR).glob("step-*")):  # something to resume
        saved = _flat(json.loads(path.read_text()))
        now = _flat(json.loads(json.dumps({**to_dict(cfg), "command": command})))
        changed = [
            k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE_CHANGES and k != "preftune" and saved.get(k) != now.get(k)
        ]
        if changed:
            shown = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed[:6])
            more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
            raise ValueError(
                f"{cfg.train.out}: --train.resume with a config that differs from the run's in {len(changed)} field(s): {shown}{more}; "
                "resume with the same flags (e.g. --config its run_config.json --train.resume) or choose another --train.out"
            )
    save_config(cfg, path, command=command, preftune=__version__)


@contextlib.contextmanager
def hold_directory(out: str | Path, what: str, flag: str = "--train.out") -> Iterator[Path]:
    """Hold a lock on the run directory ``out`` while the block runs: a second run into a directory
    in use is refused (``FileExistsError``) before it writes anything. The lock is the kernel's
    (``flock`` on ``out/.lock``), so a killed run leaves none behind. Under torchrun, rank 0 holds it."""
    out = Path(out)
    if not distributed.is_main():
        yield out
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise FileExistsError(f"{out} is in use by another run ({holder}); wait for it or choose another {flag}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}: preftune {what}")
        lock.flush()
        try:
            yield out
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def one_run_per_directory(command: Callable) -> Callable:
    """A training command runs holding its ``--train.out`` (:func:`hold_directory`)."""

    @functools.wraps(command)
    def run(cfg: Any):
        with hold_directory(cfg.train.out, command.__name__):
            return command(cfg)

    return run


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
        print(f"note: {n} of {len(encoded)} {what} were truncated (policy: preftune.data.tokens module doc)")


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
