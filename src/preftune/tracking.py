"""Where a training run's numbers go: ``metrics.jsonl`` (:class:`MetricsLog`) and, with
``--train.report-to``, TensorBoard or W&B beside it (:class:`Tracker`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import distributed
from .atomic import write_atomic


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
