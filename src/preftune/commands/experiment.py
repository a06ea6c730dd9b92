"""``preftune demo``, ``preftune experiment`` and ``preftune report``: the lecture's experiments and their report."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import DemoConfig, ExperimentConfig, ReportConfig, to_dict
from ..experiments import DEMO_FILE, load_spec, run
from ..report import render, summary_table
from .common import set_threads


def demo(cfg: DemoConfig) -> dict:
    """The demo's experiment file (``preftune/experiments/demo.yaml`` = ``configs/demo.yaml``)."""
    set_threads()
    return run(cfg.out, {**load_spec(DEMO_FILE, cfg.quick), "seed": cfg.seed}, to_dict(cfg))


def experiment(cfg: ExperimentConfig) -> dict:
    set_threads()
    spec = load_spec(cfg.file, cfg.quick)
    return run(cfg.out or spec.get("out") or f"runs/{Path(cfg.file).stem}", spec, {"file": str(cfg.file), **spec})


def report(cfg: ReportConfig) -> Path:
    out = render(cfg.run)
    print(summary_table(json.loads((Path(cfg.run) / "results.json").read_text())))
    print(f"wrote {out}")
    return out
