"""The ``iterate`` experiment: at a fixed budget of labels, one round against several
(:mod:`preftune.iterate`), pooled against per-round reward models, random against active
selection, each policy judged on gold after every round.

Settings: ``budget`` (labels in all, split evenly over an arm's rounds), ``loop`` (fields of
``preftune iterate``'s config every arm shares) and ``arms`` (name: the fields it changes, at
least ``rounds``), ``baseline`` (the arm every other is compared with; default the first) and
``contrasts`` (pairs of arms compared with each other, e.g. pooled against per-round). The
stages' settings (``sample``, ``reward``, ``rl``, ``dpo``) are the file's ``pipeline`` section, and an
arm's own ``settings`` laid over it (``{rl: {iterations: 96}}``: more RL per round).

Arms that agree on their first rounds share them (:func:`preftune.iterate.round_key`): every
round lives in ``OUT/iterate/KEY``, and the rounds run level by level, on the pipeline's workers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

from ..config import IterateConfig, RLConfig, override
from ..iterate import STAGES, check_settings, pairs_bayes_accuracy, round_key, run_round
from ..stages import merge, timed
from .judge import gold_diff, seed_interval
from .pipeline import Pipeline


def _job(cfg: IterateConfig, settings: dict, dirs: list[str], log: str) -> float:
    return timed(lambda _: run_round(cfg, settings, dirs), None, log)


def arms_of(p: Pipeline, params: dict) -> dict[str, IterateConfig]:
    """Each arm's loop config, checked (the budget must split evenly over its rounds)."""
    budget, shared = int(params.get("budget", 1600)), dict(params.get("loop") or {})
    arms = params.get("arms") or {}
    if not arms:
        raise ValueError("experiments.iterate: no arms (name: {rounds: N, ...})")
    for pair in params.get("contrasts") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and set(pair) <= set(arms)):
            raise ValueError(f"experiments.iterate.contrasts: {pair!r} is not a pair of the arms ({', '.join(arms)})")
    if params.get("baseline") and params["baseline"] not in arms:
        raise ValueError(f"experiments.iterate.baseline: {params['baseline']!r} is not one of the arms ({', '.join(arms)})")
    out = {}
    for name, changes in arms.items():
        changes = {**shared, **(changes or {})}
        changes.pop("settings", None)  # the arm's stage settings: settings_of
        rounds = int(changes.get("rounds", 1))
        if rounds < 1 or budget % rounds:
            raise ValueError(f"experiments.iterate.arms.{name}: a budget of {budget} labels does not split into {rounds} equal rounds")
        base = IterateConfig(
            model=p.path("sft"),
            prompts=str(p.files["prompts"]),
            eval_prompts=str(p.files["heldout"]),
            seed=p.seed,
            per_round=budget // rounds,
        )
        out[name] = override(base, changes, f"experiments.iterate.arms.{name}")
    return out


def settings_of(p: Pipeline, changes: dict | None, where: str) -> dict:
    """The stages' settings an arm's rounds run with: the pipeline's, and the arm's own over them."""
    base = {k: p.settings[k] for k in STAGES if k in p.settings}
    own = (changes or {}).get("settings")
    return check_settings(merge(base, own), where) if own else base


def iterate(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """Train every arm's rounds (shared prefixes once), then judge each round's policy on gold."""
    arms = arms_of(p, params)
    settings = {name: settings_of(p, c, f"experiments.iterate.arms.{name}.settings") for name, c in params["arms"].items()}
    p.sft()
    keys: dict[str, list[str]] = {}
    for name, cfg in arms.items():
        chain: list[str] = []
        for r in range(1, cfg.rounds + 1):
            chain.append(round_key(cfg, settings[name], r, chain[-1] if chain else ""))
        keys[name] = chain
    root = p.out / "iterate"
    for r in range(1, max(c.rounds for c in arms.values()) + 1):
        level = {}
        for name, chain in keys.items():
            if len(chain) >= r and chain[r - 1] not in level:
                level[chain[r - 1]] = (arms[name], settings[name], [str(root / k) for k in chain[:r]])
        print(f"iterate: round {r}, {len(level)} distinct rounds to make")
        for d in (dirs for *_, dirs in level.values()):
            Path(d[-1]).mkdir(parents=True, exist_ok=True)
        jobs = [(cfg, own, dirs, str(Path(dirs[-1]) / "round.log")) for cfg, own, dirs in level.values()]
        if p.workers <= 1:
            for cfg, own, dirs, _ in jobs:
                run_round(cfg, own, dirs, timings=p.timings)
            continue
        futures = [p.pool().submit(_job, *job) for job in jobs]  # the pipeline's workers (it stops them)
        for (_, _, dirs, log), f in zip(jobs, futures):
            if f.exception() is not None:
                raise RuntimeError(f"iterate round {dirs[-1]} failed (see {log}): {f.exception()}")
    yield
    pol, claims = res["policies"], res["claims"]
    pol.setdefault("sft", p.evaluate("sft"))
    out = res["iterate"] = {"budget": int(params.get("budget", 1600)), "arms": {}}
    for name, cfg in arms.items():
        by_round, m = [], {}
        for r, key in enumerate(keys[name], 1):
            m = p.evaluate(f"iterate/{key}/policy")
            rm = json.loads((root / key / "rm" / "eval.json").read_text())
            row = {"round": r, "labels": cfg.per_round * r, "gold": m["gold"], "gold_ci95": m["gold_ci95"], "kl": m["kl"]}
            row.update(rm_gold_pair_accuracy=rm.get("gold_pair_accuracy"), rm_accuracy=rm.get("accuracy"), alarms=m.get("alarms", "none"))
            pairs = [json.loads(line) for line in (root / key / "pairs.jsonl").read_text().splitlines()]
            row["pairs_bayes_accuracy"] = pairs_bayes_accuracy(pairs, cfg.tau)
            by_round.append(row)
        out["arms"][name] = {
            "rounds": cfg.rounds,
            "per_round": cfg.per_round,
            **{k: getattr(cfg, k) for k in ("selection", "pooling", "reference", "method")},
            "rl_iterations": override(RLConfig(model="", reward="", prompts=""), settings[name].get("rl", {})).iterations,
            "by_round": by_round,
            "key": keys[name][-1],
        }
        pol[f"iterate-{name}"] = {**m, "rounds": cfg.rounds}  # the final round's evaluation
    baseline = params.get("baseline") or next(iter(arms))
    out["baseline"] = baseline
    for name in arms:
        claims[f"iterate-{name}_vs_sft"] = gold_diff(pol[f"iterate-{name}"], pol["sft"], p.seed)
        if name != baseline:
            claims[f"iterate-{name}_vs_baseline"] = gold_diff(pol[f"iterate-{name}"], pol[f"iterate-{baseline}"], p.seed)
    for a, b in params.get("contrasts") or []:  # pairs of arms the report compares directly
        claims[f"iterate-{a}_vs_iterate-{b}"] = gold_diff(pol[f"iterate-{a}"], pol[f"iterate-{b}"], p.seed)


def aggregate_rounds(per_seed: list[dict]) -> dict:
    """The iterate experiment over seeds: per arm and round, the mean gold, KL and reward-model
    accuracy, the seed-level interval of gold, and on how many seeds the round's run raised an alarm."""
    first = per_seed[0]["iterate"]
    arms = {}
    for name, arm in first["arms"].items():
        rows = []
        for i, row in enumerate(arm["by_round"]):
            seeds = [r["iterate"]["arms"][name]["by_round"][i] for r in per_seed]
            gold = seed_interval([s["gold"] for s in seeds])
            rows.append(
                {
                    "round": row["round"],
                    "labels": row["labels"],
                    "gold": gold["diff"],
                    "gold_seeds_ci95": None if gold["lo"] is None else gold["diff"] - gold["lo"],
                    "gold_per_seed": gold["per_seed"],
                    "kl": statistics.fmean(s["kl"] for s in seeds),
                    "rm_gold_pair_accuracy": statistics.fmean(s["rm_gold_pair_accuracy"] for s in seeds),
                    "pairs_bayes_accuracy": statistics.fmean(s["pairs_bayes_accuracy"] for s in seeds),
                    "alarmed_seeds": sum(s["alarms"] != "none" for s in seeds),
                }
            )
        arms[name] = {**{k: v for k, v in arm.items() if k not in ("by_round", "key")}, "by_round": rows}
    return {"budget": first["budget"], "baseline": first["baseline"], "arms": arms}
