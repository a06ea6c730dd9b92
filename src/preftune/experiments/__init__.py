"""The lecture's experiments on the built-in world, run from experiment files.

An experiment file (YAML; ``configs/*.yaml``, the demo's is :file:`demo.yaml` next to this module)
names the experiments to run with their settings, and may set the shared stages' configs::

    out: runs/frontier
    seed: 0
    pipeline: {rl: {iterations: 24}}     # optional: laid over demo.yaml's pipeline settings
    start: models/smollm2                # optional: a pretrained model directory instead of pretraining
    experiments:
      frontier: {dpo: [0.1, 0.5, 2.0], ppo: [0.03, 0.1, 0.3], rloo: [0.03, 0.1, 0.3]}

``--quick`` lays :file:`quick.yaml` over the file. Results go to ``OUT/results.json``;
:mod:`preftune.report` renders ``OUT/report.html`` from it. With ``seeds: [0, 1, 2]`` instead of
``seed``, the whole file — pretraining included — runs once per seed into ``OUT/seed-N``, and
``OUT/results.json`` holds the means over seeds with seed-level intervals (:func:`aggregate`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from ..atomic import write_atomic
from ..report.markdown import summary_table
from ..report.page import render
from ..stages import merge
from .judge import alarm_summary, alarm_table, seed_interval
from .pipeline import Pipeline, check_settings
from .rounds import aggregate_rounds
from .runners import RUNNERS, check_levers

HERE = Path(__file__).parent
DEMO_FILE, QUICK_FILE = HERE / "demo.yaml", HERE / "quick.yaml"


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
    seeds = spec.get("seeds")
    if seeds is not None and (
        not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds) or len(set(seeds)) < len(seeds)
    ):
        raise ValueError(f"{path}: 'seeds' must be a list of distinct integers, got {seeds!r}")
    if not isinstance(spec.get("start", ""), str):
        raise ValueError(f"{path}: 'start' must be a model directory (a pretrained model to start from instead of pretraining)")
    if not isinstance(spec.get("pipeline", {}), dict):
        raise ValueError(f"{path}: 'pipeline' must map stage names to settings")
    spec = {**spec, "pipeline": merge(yaml.safe_load(DEMO_FILE.read_text())["pipeline"], spec.get("pipeline") or {})}
    if quick:
        lay = yaml.safe_load(QUICK_FILE.read_text())
        spec["pipeline"] = merge(spec["pipeline"], lay["pipeline"])
        spec["experiments"] = {k: merge(v or {}, lay["experiments"].get(k, {})) for k, v in spec["experiments"].items()}
    check_settings(spec["pipeline"], str(path))
    if "reward" in spec["experiments"]:
        check_levers(spec["experiments"]["reward"] or {}, f"{path}: experiments.reward")
    return spec


def provenance(seed: int, command: str) -> dict:
    """What a published number must name: the command, seed, machine, threads, date and commit."""
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).parent
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=10
            ).stdout
            commit = head.stdout.strip() + ("+changes" if dirty.strip() else "")
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        )
    return {
        "command": command,
        "seed": seed,
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
    }


def run(out: str | Path, spec: dict, source: dict | None = None, workers: int = 1, command: str = "") -> dict:
    """Run the experiments of a loaded spec into ``out``; writes results.json and report.html.

    Every experiment first asks for the policies it trains (with ``workers`` > 1, queued on that
    many worker processes), then each in turn evaluates its own (see :class:`Pipeline`). A spec
    with ``seeds`` runs once per seed (:func:`run_seeds`)."""
    if spec.get("seeds"):
        return run_seeds(out, spec, source, workers, command)
    t0 = time.perf_counter()
    seed = int(spec.get("seed", 0))
    p = Pipeline(out, seed, spec["pipeline"], workers=workers, start=spec.get("start", ""))
    res: dict[str, Any] = {"preftune": __version__, "config": source or {}, "run": provenance(seed, command), "policies": {}, "claims": {}}
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
    return _finish(p.out, res)


def _finish(out: Path, res: dict) -> dict:
    write_atomic(out / "results.json", json.dumps(res, indent=2) + "\n")
    print("\n" + summary_table(res))
    html = render(out)
    print(f"\nwrote {out / 'results.json'} and {html}  ({res['seconds']['total']} s)")
    return res


def run_seeds(out: str | Path, spec: dict, source: dict | None, workers: int, command: str) -> dict:
    """The whole spec once per seed (world, pretraining and all) into ``OUT/seed-N``, then the means."""
    out, t0 = Path(out), time.perf_counter()
    one = {k: v for k, v in spec.items() if k != "seeds"}
    per_seed = []
    for seed in spec["seeds"]:
        print(f"\n##### seed {seed} #####")
        per_seed.append(run(out / f"seed-{seed}", {**one, "seed": seed}, source, workers, command))
    res = aggregate(per_seed, spec["seeds"])
    res["seconds"] = {"total": round(time.perf_counter() - t0, 1)}
    return _finish(out, res)


def _mean_of(values: list) -> Any:
    """Numbers averaged; anything else (lists, text) taken from the first seed."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.fmean(values)
    if all(isinstance(v, dict) for v in values):
        return {k: _mean_of([v.get(k) for v in values]) for k in values[0]}
    return values[0]


def _pooled_ci(halves: list[float | None]) -> float | None:
    """Half-width of the interval over prompts of a mean of independent seeds' means."""
    if any(h is None or math.isnan(h) for h in halves):
        return None
    return math.sqrt(sum(h * h for h in halves)) / len(halves)


def aggregate(per_seed: list[dict], seeds: list[int]) -> dict:
    """One results dict from several seeds' (same experiments): per policy the mean over seeds, the
    interval over prompts of that mean (``gold_ci95``), and the t interval over seeds
    (``gold_seeds_ci95``); per claim the mean difference with both intervals (the seed-level one
    under ``seeds``, which the report's verdicts then use); the reward model's metrics averaged."""
    first = per_seed[0]
    res: dict[str, Any] = {
        "preftune": first["preftune"],
        "config": first["config"],
        "run": first["run"],
        "seeds": seeds,
        "runs": [f"seed-{s}" for s in seeds],
        "policies": {},
        "claims": {},
        "heldout_prompts": first["heldout_prompts"],
        "samples": first["samples"],
    }
    for name in first["policies"]:
        rows = [r["policies"][name] for r in per_seed if name in r["policies"]]
        if len(rows) < len(per_seed):
            continue
        scalar = {k: _mean_of([r.get(k) for r in rows]) for k, v in rows[0].items() if k not in ("gold_per_prompt", "key", "examples")}
        if "alarms" in rows[0]:  # which seeds' runs raised one
            scalar["alarms"] = f"{sum(r['alarms'] != 'none' for r in rows)} of {len(rows)} seeds"
        gold = seed_interval([r["gold"] for r in rows])
        res["policies"][name] = {
            **scalar,
            "gold_ci95": _pooled_ci([r["gold_ci95"] for r in rows]),
            "gold_seeds_ci95": None if gold["lo"] is None else gold["diff"] - gold["lo"],
            "gold_per_seed": gold["per_seed"],
            "examples": rows[0].get("examples", []),
        }
    for name, claim in first["claims"].items():
        claims = [r["claims"].get(name) for r in per_seed]
        if isinstance(claim, dict) and "lo" in claim and all(c is not None for c in claims):
            half = _pooled_ci([(c["hi"] - c["lo"]) / 2 for c in claims])
            d = statistics.fmean(c["diff"] for c in claims)
            seeds_ci = seed_interval([c["diff"] for c in claims])
            seeds_ci["above"] = sum(x > 0 for x in seeds_ci["per_seed"])  # seeds on which the difference is positive
            res["claims"][name] = {"diff": d, "lo": d - half, "hi": d + half, "seeds": seeds_ci}
    tuned = first["claims"].get("beat_demonstrator")
    if tuned is not None:
        candidates = [
            m for m in first["policies"] if f"{m}_vs_demonstrator" in res["claims"] and m not in ("sft", "best-of-n", "unlikelihood")
        ]
        beat = [m for m in candidates if res["claims"][f"{m}_vs_demonstrator"]["seeds"]["lo"] > 0]
        res["claims"]["beat_demonstrator"] = {"methods": beat, "count": len(beat), "of": len(candidates)}
    if "alarms" in first:  # every seed's runs, judged together
        runs = [{**r, "seed": s} for s, one in zip(seeds, per_seed) for r in one["alarms"]["runs"]]
        res["alarms"] = {**first["alarms"], "runs": runs, "summary": alarm_summary(runs), "by_name": alarm_table(runs)}
        tuned = first["alarms"].get("tuned_on") or []
        if tuned:  # judged again on the seeds the thresholds were not chosen on
            res["alarms"]["held_out_seeds"] = [s for s in seeds if s not in tuned]
            res["alarms"]["held_out"] = alarm_summary([r for r in runs if r["seed"] not in tuned])
    if "iterate" in first:
        res["iterate"] = aggregate_rounds(per_seed)
    if "reward_model" in first:
        res["reward_model"] = _mean_of([r["reward_model"] for r in per_seed])
        res["reward_model"]["gold_pair_accuracy_per_seed"] = [r["reward_model"]["gold_pair_accuracy"] for r in per_seed]
    return res
