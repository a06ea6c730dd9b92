"""The lecture's experiments on the built-in world. Each takes the shared :class:`Pipeline`, the
results dict to fill and its settings from the experiment file. Every sentence of the report that
states a result is decided here, in ``res["claims"]``.

Each is a generator: up to its ``yield`` it asks for the policies it needs (queued on the
pipeline's workers, if it has any), after it evaluates them. :func:`preftune.experiments.run` runs
every experiment up to its ``yield`` before any goes on, so all their training shares the workers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

from ..data import write_jsonl
from ..evaluate import mean_ci, paired_bootstrap
from ..models import load_policy
from ..rollout import sample
from ..world import lists
from .pipeline import Pipeline

RL_METHODS = ("raft", "reinforce", "rloo", "ppo")
DPO_METHODS = ("dpo", "ipo", "unlikelihood")
TUNED = ("best-of-n", *RL_METHODS, *DPO_METHODS)


def _named(methods: list | dict) -> dict[str, dict]:
    """A list of method names, or a mapping of names to config changes, as the mapping."""
    return {m: {} for m in methods} if isinstance(methods, list | tuple) else {m: dict(c or {}) for m, c in methods.items()}


def _diff(a: dict, b: dict, seed: int) -> dict:
    """a - b in mean gold reward over the same prompts, with a paired-bootstrap 95% interval."""
    d, lo, hi = paired_bootstrap(a["gold_per_prompt"], b["gold_per_prompt"], seed=seed)
    return {"diff": d, "lo": lo, "hi": hi, "significant": lo > 0 or hi < 0}


def methods(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """The headline table: every method from the same pi_SFT, comparisons and reward model."""
    rm_dir, rm_eval = p.reward_model()
    pairs = p.labels("comparisons", "pairs")
    rl_cfgs = {algo: p.rl_policy(algo, rm_dir, {"algo": algo, **c}) for algo, c in _named(params.get("rl", RL_METHODS)).items()}
    dpo_cfgs = {loss: p.dpo_policy(loss, pairs, {"loss": loss, **c}) for loss, c in _named(params.get("dpo", DPO_METHODS)).items()}
    yield
    res["reward_model"] = {
        k: rm_eval[k] for k in ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold", "held_out_pairs")
    }
    pol = res["policies"]
    pol["base"] = p.evaluate("base")
    pol["demonstrator"] = p.demonstrator()
    pol["sft"] = p.evaluate("sft")
    n = int(params.get("best_of_n", 16))
    pol["best-of-n"] = {**p.best_of_n(rm_dir, n), "n_samples": n}
    for algo, cfg in rl_cfgs.items():
        pol[algo] = {**p.evaluate(algo), "beta": cfg.beta}
    for loss, cfg in dpo_cfgs.items():
        pol[loss] = {**p.evaluate(loss), "beta": None if loss == "unlikelihood" else cfg.beta}
    demo_, sft_ = pol["demonstrator"], pol["sft"]
    claims = res["claims"]
    claims["sft_vs_demonstrator"] = _diff(sft_, demo_, p.seed)
    for name in [m for m in pol if m not in ("base", "demonstrator", "sft")]:
        claims[f"{name}_vs_sft"] = _diff(pol[name], sft_, p.seed)
        claims[f"{name}_vs_demonstrator"] = _diff(pol[name], demo_, p.seed)
    if {"dpo", "ppo", "rloo"} <= set(pol):
        claims["dpo_vs_ppo"] = _diff(pol["dpo"], pol["ppo"], p.seed)
        claims["dpo_vs_rloo"] = _diff(pol["dpo"], pol["rloo"], p.seed)
    candidates = [m for m in pol if m not in ("base", "demonstrator", "sft", "best-of-n", "unlikelihood")]
    tuned = [m for m in candidates if claims[f"{m}_vs_demonstrator"]["lo"] > 0]
    claims["beat_demonstrator"] = {"methods": tuned, "count": len(tuned), "of": len(candidates)}


def frontier(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """Gold reward against KL to pi_SFT, several β per method (the DPO paper's figure 2)."""
    rm_dir, _ = p.reward_model()
    pairs = p.labels("comparisons", "pairs")
    runs = []
    for method, betas in params.items():
        for beta in betas:
            default = p.dpo_config(method, pairs).beta if method == "dpo" else p.rl_config(method, rm_dir, {"algo": method}).beta
            name = method if float(beta) == default else f"{method}-beta{beta:g}"  # the default-β point is the methods table's run
            if method == "dpo":
                p.dpo_policy(name, pairs, {"beta": float(beta)})
            else:
                p.rl_policy(name, rm_dir, {"algo": method, "beta": float(beta)})
            runs.append((method, float(beta), name))
    yield
    points = res.setdefault("frontier", {})
    for method, beta, name in runs:
        m = p.evaluate(name)
        points.setdefault(method, []).append(
            {"beta": beta, "gold": m["gold"], "gold_ci95": m["gold_ci95"], "kl": m["kl"], "kl_ci95": m["kl_ci95"]}
        )
    best = {m: max(v, key=lambda r: r["gold"]) for m, v in points.items()}
    res["claims"]["frontier_best"] = {m: {"beta": r["beta"], "gold": r["gold"], "kl": r["kl"]} for m, r in best.items()}


def _overoptimisation_summary(curve: list[dict]) -> dict:
    first, last = curve[0], curve[-1]
    peak = max(curve, key=lambda r: r["gold"])
    return {
        "proxy_start": first["proxy"],
        "proxy_end": last["proxy"],
        "proxy_change": last["proxy"] - first["proxy"],
        "gold_start": first["gold"],
        "gold_end": last["gold"],
        "gold_change": last["gold"] - first["gold"],
        "gold_peak": peak["gold"],
        "kl_peak": peak["kl"],
        "kl_end": last["kl"],
        "overoptimised": last["proxy"] > first["proxy"] and last["gold"] < first["gold"] - 0.1,
    }


def overoptimisation(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """RL against a reward model trained on few comparisons, with β = 0 and the default β:
    proxy score and gold reward per iteration, against KL (Gao et al.'s curve)."""
    few, algo = int(params.get("comparisons", 300)), params.get("algo", "rloo")
    rm_dir, rm_eval = p.reward_model(f"rm-few{few}", limit=few)
    changes = {"algo": algo, **({"iterations": int(params["iterations"])} if "iterations" in params else {})}
    if "lr" in params:  # the demo uses 1e-3: over-optimisation within its budget
        changes["train"] = {"lr": float(params["lr"])}
    names = {}
    for beta in (0.0, p.rl_config("overopt", rm_dir).beta):
        names[beta] = f"overopt/{algo}-beta{beta:g}"
        iterations = p.rl_policy(names[beta], rm_dir, {**changes, "beta": beta}).iterations
    yield
    runs = []
    for beta, name in names.items():
        p.wait(name)
        rows = [json.loads(line) for line in (p.out / name / "iterations.jsonl").read_text().splitlines()]
        curve = [{"iteration": r["iteration"], "kl": r["kl"], "proxy": r["score"], "gold": r["gold"]} for r in rows]
        runs.append({"beta": beta, "curve": curve, "summary": _overoptimisation_summary(curve)})
    res["overoptimisation"] = {
        "algo": algo,
        "comparisons": few,
        "iterations": iterations,
        "reward_model": {k: rm_eval[k] for k in ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")},
        "runs": runs,
    }


def _group_utilities(p: Pipeline, policy: str, prompts: list[str]) -> list[dict]:
    """Each annotator group's utility of one policy's answers (a conditioned policy is told the group)."""
    model, tok = load_policy(p.path(policy))
    rows = []
    for group, extra in (("majority", 0), ("minority", 2)):
        asked = [lists.tag_prompt(q, group) for q in prompts] if policy == "diverse/conditioned" else prompts
        outs = sample(model, tok, asked, p.gen)
        mean, ci = mean_ci([lists.utility(q, s.completion, s.ended, extra) for q, s in zip(prompts, outs)])
        items = statistics.fmean(len(lists.parse_items(s.completion)) for s in outs)
        rows.append({"policy": policy, "group": group, "utility": mean, "ci95": ci, "length_items": items})
    return rows


def diverse(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """Two annotator groups: a majority wanting k items and a minority wanting k + 2. A policy tuned
    on the pooled comparisons against one conditioned on the group (a tag in the prompt)."""
    share = float(params.get("minority", 0.5))
    pooled = p.labels("comparisons-mixed", "pairs", minority=share)
    rows = [json.loads(line) for line in Path(pooled).read_text().splitlines()]
    tagged = p.out / "data/comparisons-mixed-tagged.jsonl"
    write_jsonl(tagged, [{**r, "prompt": lists.tag_prompt(r["prompt"], r["group"])} for r in rows])
    changes = {"train": {"epochs": float(params["epochs"])}} if "epochs" in params else {}
    p.dpo_policy("diverse/pooled", pooled, changes)
    p.dpo_policy("diverse/conditioned", str(tagged), changes)
    yield
    p.wait("diverse/pooled")
    p.wait("diverse/conditioned")
    table = [row for policy in ("sft", "diverse/pooled", "diverse/conditioned") for row in _group_utilities(p, policy, p.heldout())]
    res["diverse"] = {"minority_share": share, "rows": table}
    get = {(r["policy"], r["group"]): r["utility"] for r in table}
    res["claims"]["diverse"] = {
        "pooled_minority": get[("diverse/pooled", "minority")],
        "conditioned_minority": get[("diverse/conditioned", "minority")],
        "pooled_majority": get[("diverse/pooled", "majority")],
        "conditioned_majority": get[("diverse/conditioned", "majority")],
        "minority_gain": get[("diverse/conditioned", "minority")] - get[("diverse/pooled", "minority")],
    }


RUNNERS = {"methods": methods, "frontier": frontier, "overoptimisation": overoptimisation, "diverse": diverse}
