"""``preftune demo``, ``preftune experiment`` and ``preftune report``: the lecture's experiments and their report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import distributed
from ..config import DemoConfig, ExperimentConfig, ReportConfig, to_dict
from ..experiments import DEMO_FILE, load_spec, run
from ..report.markdown import markdown, summary_table
from ..report.page import render
from ..report.results import MissingResult, results_path
from .common import hold_directory, prepare


def _one_process(command: str) -> None:
    if distributed.world_size() > 1:
        raise ValueError(f"preftune {command} runs in one process; torchrun the stage commands (sft, reward, dpo, rl, ...) instead")
    prepare()


def workers(cfg: DemoConfig | ExperimentConfig) -> int:
    """``--workers``, 0 meaning one per core."""
    if cfg.workers < 0:
        raise ValueError(f"--workers {cfg.workers}: expected 0 (one per core) or a positive count")
    return cfg.workers or os.cpu_count() or 1


def demo(cfg: DemoConfig) -> dict:
    """The demo's experiment file (``preftune/experiments/demo.yaml`` = ``configs/demo.yaml``)."""
    _one_process("demo")
    command = "preftune demo" + " --quick" * cfg.quick
    spec = {**load_spec(DEMO_FILE, cfg.quick), "seed": cfg.seed}
    with hold_directory(cfg.out, "demo", "--out"):
        return run(cfg.out, spec, to_dict(cfg), workers(cfg), command)


def experiment(cfg: ExperimentConfig) -> dict:
    _one_process("experiment")
    spec = load_spec(cfg.file, cfg.quick)
    command = f"preftune experiment {cfg.file}" + " --quick" * cfg.quick
    out = cfg.out or spec.get("out") or f"runs/{Path(cfg.file).stem}"
    with hold_directory(out, "experiment", "--out"):
        return run(out, spec, {"file": str(cfg.file), **spec}, workers(cfg), command)


def report(cfg: ReportConfig) -> Path | None:
    path = results_path(cfg.run)
    try:
        if cfg.markdown:
            print(markdown(json.loads(path.read_text()), cfg.run, cfg.samples), end="")
            return None
        out = render(cfg.run)
        table = summary_table(json.loads(path.read_text()))
    except MissingResult as e:
        raise ValueError(f"{path}: {e}") from None
    print(table)
    print(f"wrote {out}")
    return out
