"""The lecture's experiments on the built-in world, run from experiment files.

An experiment file (YAML; ``configs/*.yaml``, the demo's is :file:`demo.yaml` next to this module)
names the experiments to run with their settings, and may set the shared stages' configs::

    out: runs/frontier
    seed: 0
    pipeline: {rl: {iterations: 24}}     # optional: laid over demo.yaml's pipeline settings
    experiments:
      frontier: {dpo: [0.1, 0.5, 2.0], ppo: [0.03, 0.1, 0.3], rloo: [0.03, 0.1, 0.3]}

``--quick`` lays :file:`quick.yaml` over the file. Results go to ``OUT/results.json``;
:mod:`preftune.report` renders ``OUT/report.html`` from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..report import render, summary_table
from .pipeline import Pipeline, check_settings
from .runners import RUNNERS

HERE = Path(__file__).parent
DEMO_FILE, QUICK_FILE = HERE / "demo.yaml", HERE / "quick.yaml"


def _merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, recursively for nested mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path, quick: bool = False) -> dict:
    """An experiment file, checked, with demo.yaml's pipeline settings under its own (and quick.yaml over both)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such experiment file")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("experiments"), dict):
        raise ValueError(f"{path}: expected a mapping with 'experiments: {{name: settings}}' (see configs/)")
    unknown = sorted(set(spec["experiments"]) - set(RUNNERS))
    if unknown:
        raise ValueError(f"{path}: unknown experiment(s) {unknown}; choose from {sorted(RUNNERS)}")
    if not isinstance(spec.get("pipeline", {}), dict):
        raise ValueError(f"{path}: 'pipeline' must map stage names to settings")
    spec = {**spec, "pipeline": _merge(yaml.safe_load(DEMO_FILE.read_text())["pipeline"], spec.get("pipeline") or {})}
    if quick:
        lay = yaml.safe_load(QUICK_FILE.read_text())
        spec["pipeline"] = _merge(spec["pipeline"], lay["pipeline"])
        spec["experiments"] = {k: _merge(v or {}, lay["experiments"].get(k, {})) for k, v in spec["experiments"].items()}
    check_settings(spec["pipeline"], str(path))
    return spec


def run(out: str | Path, spec: dict, source: dict | None = None, workers: int = 1) -> dict:
    """Run the experiments of a loaded spec into ``out``; writes results.json and report.html.

    Every experiment first asks for the policies it trains (with ``workers`` > 1, queued on that
    many worker processes), then each in turn evaluates its own (see :class:`Pipeline`)."""
    t0 = time.perf_counter()
    p = Pipeline(out, int(spec.get("seed", 0)), spec["pipeline"], workers=workers)
    res: dict[str, Any] = {"preftune": __version__, "config": source or {}, "policies": {}, "claims": {}}
    p.sft()
    try:
        experiments = {name: RUNNERS[name](p, res, params or {}) for name, params in spec["experiments"].items()}
        for name, steps in experiments.items():
            print(f"\n=== {name}: training ===")
            next(steps, None)
        for name, steps in experiments.items():
            print(f"\n=== {name} ===")
            for _ in steps:
                pass
    finally:
        p.close()
    if "sft" not in res["policies"]:
        res["policies"]["sft"] = p.evaluate("sft")
    res["heldout_prompts"] = len(p.heldout())
    res["seconds"] = {**p.timings, "total": round(time.perf_counter() - t0, 1)}
    res["samples"] = [
        {"prompt": q, "completions": {k: v["examples"][i] for k, v in res["policies"].items() if len(v.get("examples", [])) > i}}
        for i, q in enumerate(p.heldout()[:6])
    ]
    (p.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + summary_table(res))
    html = render(p.out)
    print(f"\nwrote {p.out / 'results.json'} and {html}  ({res['seconds']['total']} s)")
    return res
