"""Alarms judged on gold: each training run's gold along the run, whether it went wrong, and when
the alarm rules (:mod:`preftune.alarms`, replayed over the run's logged monitors) fired.
The ``alarms`` experiment (:func:`preftune.experiments.runners.alarms`) and the seeds' aggregate use them.
Also the statistics every experiment's verdicts share: a paired difference in gold over prompts
(:func:`gold_diff`) and the t interval over seeds (:func:`seed_interval`)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..evaluate import paired_bootstrap
from ..methods.rl import MONITORED


def load_run(run: Path) -> tuple[list[dict], list[dict] | None]:
    """A trained policy's metrics.jsonl rows, and an RL run's iterations.jsonl rows (None otherwise)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    its = run / "iterations.jsonl"
    return rows, [json.loads(line) for line in its.read_text().splitlines()] if its.exists() else None


def _steps_per_iteration(rows: list[dict]) -> float:
    return next(r["step"] / r["epoch"] for r in rows if r.get("epoch"))


def monitor_rows(rows: list[dict], its: list[dict] | None) -> list[dict]:
    """What a run's alarms read, step by step (:func:`preftune.alarms.replay`): a DPO-family run's
    metrics.jsonl; an RL run's rollouts as ``rollout/*``, each at the first step trained on it (the
    final rollout, measured after training, is read by no alarm)."""
    if its is None:
        return rows
    per = _steps_per_iteration(rows)
    return [
        {"step": round(r["iteration"] * per) + 1, **{f"rollout/{k}": r[k] for k in MONITORED if r.get(k) is not None}} for r in its[:-1]
    ]


def gold_curve(rows: list[dict], its: list[dict] | None) -> tuple[list[tuple[int, float]], int]:
    """(step, gold) along a trained policy's run, and its last step: a DPO-family run's sample monitor
    at each evaluation (step 0 is pi_SFT), an RL run's rollouts (the rollout of iteration i measures
    the policy after i iterations' steps)."""
    last = max(r["step"] for r in rows)
    if its is not None:
        per = _steps_per_iteration(rows)
        return [(round(r["iteration"] * per), r["gold"]) for r in its if r.get("gold") is not None], last
    return [(r["step"], r["eval/sample/gold"]) for r in rows if "eval/sample/gold" in r], last


def alarm_outcome(curve: list[tuple[int, float]], last: int, alarms: list[tuple[int, str]], fall: float) -> dict:
    """One run judged on gold. It went wrong when gold stood ``fall`` or more below its best so far at
    some point (a collapse it later recovers from counts: stopped there, the run gives that policy);
    ``drop_step`` is the first such point. The first alarm (step, rules) and its lead: how many steps
    before ``drop_step`` it fired (negative: after)."""
    best, worst, drop_step = -math.inf, 0.0, None
    for t, g in curve:
        best = max(best, g)
        worst = max(worst, best - g)
        if drop_step is None and best - g >= fall:
            drop_step = t
    first = min((t for t, _ in alarms), default=None)
    return {
        "start": curve[0][1],
        "peak": max(g for _, g in curve),
        "end": curve[-1][1],
        "fell": worst,
        "went_wrong": drop_step is not None,
        "drop_step": drop_step,
        "steps": last,
        "alarm_step": first,
        "rules": sorted({r for t, r in alarms if t == first}),
        "flagged": first is not None,
        "lead": None if first is None or drop_step is None else drop_step - first,
    }


def alarm_summary(runs: list[dict]) -> dict:
    """Detection (runs that went wrong and were flagged), false alarms (healthy runs flagged), lead."""
    wrong = [r for r in runs if r["went_wrong"]]
    healthy = [r for r in runs if not r["went_wrong"]]
    leads = [r["lead"] for r in wrong if r["lead"] is not None]
    return {
        "runs": len(runs),
        "went_wrong": len(wrong),
        "detected": sum(r["flagged"] for r in wrong),
        "healthy": len(healthy),
        "false_alarms": sum(r["flagged"] for r in healthy),
        "lead_median": statistics.median(leads) if leads else None,
    }


def alarm_table(runs: list[dict]) -> list[dict]:
    """:func:`alarm_summary` per run name (over seeds), in the order the names first appear."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    return [{"name": n, **alarm_summary([r for r in runs if r["name"] == n])} for n in names]


DPO_MONITORS = ("logratio/chosen", "logratio/rejected", "margin", "sample/kl", "sample/length", "sample/eos_rate", "sample/gold")


def dpo_monitors(rows: list[dict]) -> list[dict]:
    """A DPO-family run's monitors at each evaluation, with the chosen completions' EOS log-prob
    (a training metric) averaged over the steps logged since the previous one."""
    out, since = [], []
    for r in rows:
        if "logps/eos_chosen" in r:
            since.append(r["logps/eos_chosen"])
        if "eval/sample/gold" in r:
            out.append(
                {
                    "step": r["step"],
                    **{k: r.get(f"eval/{k}") for k in DPO_MONITORS},
                    "eos_chosen": statistics.fmean(since) if since else None,
                }
            )
            since = []
    return out


# Two-sided 95% quantiles of Student's t by degrees of freedom (normal beyond the table).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_interval(values: list[float]) -> dict:
    """Mean over seeds and its 95% t interval (seeds are the independent replicates)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return {"diff": m, "lo": None, "hi": None, "n": len(values), "per_seed": values}
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"diff": m, "lo": m - half, "hi": m + half, "n": len(values), "per_seed": values}


def gold_diff(a: dict, b: dict, seed: int) -> dict:
    """a - b in mean gold reward over the same prompts, with a paired-bootstrap 95% interval."""
    d, lo, hi = paired_bootstrap(a["gold_per_prompt"], b["gold_per_prompt"], seed=seed)
    return {"diff": d, "lo": lo, "hi": hi, "significant": lo > 0 or hi < 0}
