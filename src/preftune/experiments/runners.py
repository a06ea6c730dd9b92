"""The lecture's experiments on the built-in world. Each takes the shared :class:`Pipeline`, the
results dict to fill and its settings from the experiment file. Every sentence of the report that
states a result is decided here, in ``res["claims"]``.

Each is a generator: up to its ``yield`` it asks for the policies it needs (queued on the
pipeline's workers, if it has any), after it evaluates them. :func:`preftune.experiments.run` runs
every experiment up to its ``yield`` before any goes on, so all their training shares the workers.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

from ..alarms import dpo_rules, replay, rl_rules
from ..atomic import write_jsonl
from ..commands.common import comparisons
from ..config import PREFERENCE_LOSSES, AlarmConfig, override, to_dict
from ..data import Comparison, Ranking
from ..evaluate import evaluate_reward_model, mean_ci
from ..models import RewardEnsemble, load_policy, load_reward_model
from ..rollout import sample
from ..stages import merge
from ..world import lists
from .judge import alarm_outcome, alarm_summary, alarm_table, dpo_monitors, gold_curve, load_run, monitor_rows
from .judge import gold_diff as _diff
from .pipeline import Pipeline
from .rounds import iterate

RL_METHODS = ("raft", "reinforce", "rloo", "ppo")
DPO_METHODS = ("dpo", "ipo", "unlikelihood")
TUNED = ("best-of-n", *RL_METHODS, *DPO_METHODS)
# A reward model's evaluation as the results keep it (preftune.evaluate.evaluate_reward_model).
REWARD_KEYS = (
    "gold_pair_accuracy",
    "gold_pair_accuracy_ci95",
    "accuracy",
    "bayes_optimal_accuracy",
    "accuracy_over_bayes",
    "held_out_pairs",
)


def _named(methods: list | dict) -> dict[str, dict]:
    """A list of method names, or a mapping of names to config changes, as the mapping."""
    return {m: {} for m in methods} if isinstance(methods, list | tuple) else {m: dict(c or {}) for m, c in methods.items()}


def methods(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """The headline table: every method from the same pi_SFT, comparisons and reward model."""
    rm_dir, rm_eval = p.reward_model()
    pairs = p.labels("comparisons", "pairs")
    rl_cfgs = {algo: p.rl_policy(algo, rm_dir, {"algo": algo, **c}) for algo, c in _named(params.get("rl", RL_METHODS)).items()}
    dpo_cfgs = {loss: p.dpo_policy(loss, pairs, {"loss": loss, **c}) for loss, c in _named(params.get("dpo", DPO_METHODS)).items()}
    # RL against the gold reward itself (a verifiable reward), from the base model rather than pi_SFT
    gold_cfgs = {
        f"{algo}-gold": p.rl_policy(f"{algo}-gold", "gold", {"algo": algo, "model": p.path("base"), **c})
        for algo, c in _named(params.get("gold_from_base", [])).items()
    }
    yield
    res["reward_model"] = {k: rm_eval[k] for k in (*REWARD_KEYS, "gold_pairs", "spearman_gold", "components")}
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
    for name, cfg in gold_cfgs.items():
        pol[name] = {**p.evaluate(name), "beta": cfg.beta}
        res["claims"][f"{name}_vs_base"] = _diff(pol[name], pol["base"], p.seed)
    demo_, sft_ = pol["demonstrator"], pol["sft"]
    claims = res["claims"]
    claims["sft_vs_demonstrator"] = _diff(sft_, demo_, p.seed)
    for name in [m for m in pol if m not in ("base", "demonstrator", "sft")]:
        claims[f"{name}_vs_sft"] = _diff(pol[name], sft_, p.seed)
        claims[f"{name}_vs_demonstrator"] = _diff(pol[name], demo_, p.seed)
    if {"dpo", "ppo", "rloo"} <= set(pol):
        claims["dpo_vs_ppo"] = _diff(pol["dpo"], pol["ppo"], p.seed)
        claims["dpo_vs_rloo"] = _diff(pol["dpo"], pol["rloo"], p.seed)
    candidates = [m for m in pol if m not in ("base", "demonstrator", "sft", "best-of-n", "unlikelihood", *gold_cfgs)]
    tuned = [m for m in candidates if claims[f"{m}_vs_demonstrator"]["lo"] > 0]
    claims["beat_demonstrator"] = {"methods": tuned, "count": len(tuned), "of": len(candidates)}


def frontier(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """Gold reward against KL to pi_SFT, several β per method (the DPO paper's figure 2)."""
    rm_dir, _ = p.reward_model()
    pairs = p.labels("comparisons", "pairs")
    runs = []
    for method, betas in params.items():
        offline = method in PREFERENCE_LOSSES  # the DPO family (IPO's β is its 1/(2τ)); else an RL algorithm
        for beta in betas:
            default = p.dpo_config(method, pairs, {"loss": method}).beta if offline else p.rl_config(method, rm_dir, {"algo": method}).beta
            name = method if float(beta) == default else f"{method}-beta{beta:g}"  # the default-β point is the methods table's run
            if offline:
                p.dpo_policy(name, pairs, {"loss": method, "beta": float(beta)})
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


def _change(a: dict, b: dict, key: str) -> dict:
    """b[key] - a[key] between two iterations' rollouts (independent samples), with a 95% interval."""
    d = b[key] - a[key]
    half = math.hypot(a[f"{key}_ci95"], b[f"{key}_ci95"]) if a.get(f"{key}_ci95") is not None and b.get(f"{key}_ci95") is not None else None
    return {"diff": d, "lo": None if half is None else d - half, "hi": None if half is None else d + half}


def _overoptimisation_summary(curve: list[dict]) -> dict:
    first, last = curve[0], curve[-1]
    peak = max(curve, key=lambda r: r["gold"])
    proxy, gold = _change(first, last, "proxy"), _change(first, last, "gold")
    return {
        "proxy_start": first["proxy"],
        "proxy_end": last["proxy"],
        "proxy_change": proxy,
        "gold_start": first["gold"],
        "gold_end": last["gold"],
        "gold_change": gold,
        "gold_peak": peak["gold"],
        "kl_peak": peak["kl"],
        "kl_end": last["kl"],
        # the proxy rose and gold fell, each with its 95% interval on that side of zero
        "overoptimised": bool(proxy["lo"] is not None and proxy["lo"] > 0 and gold["hi"] is not None and gold["hi"] < 0),
    }


def overoptimisation(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """RL against a reward model trained on few comparisons, with β = 0 and the default β:
    proxy score and gold reward per iteration, against KL (Gao et al.'s curve)."""
    few, algo = int(params.get("comparisons", 300)), params.get("algo", "rloo")
    rm_dir, rm_eval = p.reward_model(f"rm-few{few}", limit=few)
    changes = {"algo": algo, **({"iterations": int(params["iterations"])} if "iterations" in params else {})}
    if "lr" in params:  # the demo uses 1e-3: over-optimisation within its budget
        changes["train"] = {"lr": float(params["lr"])}
    # ``watch: N``: N more reward models on the same comparisons, seeds apart, that only score the
    # rollouts: their disagreement with the trained-against one is the alarms' gold-free signal
    watch = [
        p.reward_model(f"rm-few{few}-seed{i}", limit=few, changes={"train": {"seed": p.seed + i}})[0]
        for i in range(1, 1 + int(params.get("watch", 0)))
    ]
    if watch:
        changes["monitor_rewards"] = watch
    names = {}
    for beta in (0.0, p.rl_config("overopt", rm_dir).beta):
        names[beta] = f"overopt/{algo}-beta{beta:g}"
        iterations = p.rl_policy(names[beta], rm_dir, {**changes, "beta": beta}).iterations
    yield
    runs = []
    for beta, name in names.items():
        p.wait(name)
        rows = [json.loads(line) for line in (p.out / name / "iterations.jsonl").read_text().splitlines()]
        curve = [
            {
                "iteration": r["iteration"],
                "kl": r["kl"],
                "proxy": r["score"],
                "proxy_ci95": r.get("score_ci95"),
                "gold": r["gold"],
                "gold_ci95": r.get("gold_ci95"),
            }
            for r in rows
        ]
        runs.append({"beta": beta, "curve": curve, "summary": _overoptimisation_summary(curve)})
    res["overoptimisation"] = {
        "algo": algo,
        "comparisons": few,
        "iterations": iterations,
        "reward_model": {k: rm_eval[k] for k in (*REWARD_KEYS, "spearman_gold")},
        "runs": runs,
    }


def _group_utilities(p: Pipeline, policy: str, prompts: list[str]) -> list[dict]:
    """Each annotator group's utility of one policy's answers (a conditioned policy is told the group)."""
    model, tok = load_policy(p.path(policy))
    rows = []
    for group, extra in (("majority", 0), ("minority", 2)):
        asked = [lists.tag_prompt(q, group) for q in prompts] if policy == "diverse/conditioned" else prompts
        outs = sample(model, tok, asked, p.gen)
        per_prompt = [lists.utility(q, s.completion, s.ended, extra) for q, s in zip(prompts, outs)]
        mean, ci = mean_ci(per_prompt)
        items = statistics.fmean(len(lists.parse_items(s.completion)) for s in outs)
        rows.append({"policy": policy, "group": group, "utility": mean, "ci95": ci, "length_items": items, "per_prompt": per_prompt})
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
    get = {(r["policy"], r["group"]): r for r in table}
    res["claims"]["diverse"] = {
        "pooled_minority": get[("diverse/pooled", "minority")]["utility"],
        "conditioned_minority": get[("diverse/conditioned", "minority")]["utility"],
        "pooled_majority": get[("diverse/pooled", "majority")]["utility"],
        "conditioned_majority": get[("diverse/conditioned", "majority")]["utility"],
    }
    for group in ("minority", "majority"):  # conditioned - pooled, paired over the same prompts
        a, b = get[("diverse/conditioned", group)], get[("diverse/pooled", group)]
        res["claims"][f"diverse_{group}_gain"] = _diff({"gold_per_prompt": a["per_prompt"]}, {"gold_per_prompt": b["per_prompt"]}, p.seed)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _record_row(r: Comparison | Ranking) -> dict:
    """A comparison or ranking as the row it was read from (``load_comparisons`` reads it back)."""
    row = {k: v for k, v in vars(r).items() if v is not None}
    if isinstance(r, Comparison):
        row["chosen_ended"], row["rejected_ended"] = row.pop("ended")
    return row


def _ensemble_eval(p: Pipeline, name: str, n: int, k: float, limit: int, changes: dict, tau: float) -> dict:
    """``n`` reward models that differ only in their seed (initialisation and order), held out on the
    same rankings, scored as one (:class:`RewardEnsemble`: mean − k·std)."""
    cfg = p.reward_config(name, limit, changes, tau)
    train, held = comparisons(cfg.data, "", 0.1, p.seed)  # the split every member shares
    split = {}
    for part, rows in (("train", train), ("held", held)):
        split[part] = p.out / f"data/{Path(cfg.data).stem}-{part}.jsonl"
        write_jsonl(split[part], [_record_row(r) for r in rows])
    members = []
    for i in range(n):
        seeded = {
            **changes,
            "data": str(split["train"]),
            "eval_data": str(split["held"]),
            "train": {**changes.get("train", {}), "seed": p.seed + i},
        }
        members.append(load_reward_model(p.reward_model(f"{name}/member{i}", limit, seeded, tau)[0])[0])
    tok = load_reward_model(p.path(f"{name}/member0"))[1]
    return evaluate_reward_model(RewardEnsemble(members, k), tok, held, cfg.tau, cfg.model, cfg.eval_prompts, cfg.tokens)


LEVER_SETTINGS = ("comparisons", "tau", "reward", "ensemble", "ensemble_k", "pipeline")


def check_levers(params: dict, where: str = "reward") -> dict[str, dict]:
    """The reward experiment's levers, refused (before anything runs) if one has an unknown setting."""
    levers = params.get("levers") or {"demo": {}}
    if not isinstance(levers, dict):
        raise ValueError(f"{where}: 'levers' must map names to settings")
    for name, lever in levers.items():
        if not isinstance(lever or {}, dict):
            raise ValueError(f"{where}: lever {name!r} must be a mapping of {', '.join(LEVER_SETTINGS)}")
        unknown = set(lever or {}) - set(LEVER_SETTINGS)
        if unknown:
            raise ValueError(f"{where}: lever {name!r} has unknown setting(s) {sorted(unknown)} (settings: {', '.join(LEVER_SETTINGS)})")
    return {name: dict(lever or {}) for name, lever in levers.items()}


def reward(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """Reward-model levers, one row each: what a change to the data, the model or the pipeline does to
    the reward model's gold pair accuracy and held-out accuracy against the Bayes bound.

    A lever is a mapping of: ``comparisons`` (the first N rankings), ``tau`` (labels drawn at that
    annotator temperature), ``reward`` (changes to `preftune reward`'s config), ``ensemble`` (N
    members; ``ensemble_k``: score mean − k·std) and ``pipeline`` (changes to the shared stages: the
    lever then builds its own world, base model and pi_SFT under ``OUT/levers/NAME``, and is measured
    on its own pi_SFT's samples)."""
    levers = check_levers(params)
    yield
    rows = []
    for name, lever in levers.items():
        sub = p
        if "pipeline" in lever:
            sub = Pipeline(p.out / "levers" / _slug(name), p.seed, merge(p.settings, lever["pipeline"]))
        limit, changes, tau = int(lever.get("comparisons", 0)), lever.get("reward") or {}, float(lever.get("tau", 0.0))
        print(f"\n--- reward lever: {name} ---")
        own = not (changes or limit or tau or lever.get("ensemble"))
        rm_name = "rm" if own else f"rm-{_slug(name)}"  # "rm": the pipeline's own
        if lever.get("ensemble"):
            ev = _ensemble_eval(sub, rm_name, int(lever["ensemble"]), float(lever.get("ensemble_k", 0.0)), limit, changes, tau)
        else:
            ev = sub.reward_model(rm_name, limit, changes, tau)[1]
        rows.append(
            {
                "lever": name,
                "settings": lever,
                **{k: ev[k] for k in REWARD_KEYS},
                "components": {c: v["score"] for c, v in ev["components"].items()},
                "gold_components": {c: v["gold"] for c, v in ev["components"].items()},
            }
        )
    res["reward_levers"] = rows


def alarms(p: Pipeline, res: dict, params: dict) -> Iterator[None]:
    """The alarms judged on gold, over every policy the file's other experiments train (put it last):
    per run, whether gold fell ``fall`` below its best so far, and the first alarm with its lead
    (:func:`alarm_outcome`); then detection rate, false alarms and lead (:func:`alarm_summary`). The
    alarms are those the rules raise over the run's logged monitors at ``thresholds`` (changes to
    ``--alarm.*``'s defaults; :func:`preftune.alarms.replay`), whatever thresholds the run had."""
    fall = float(params.get("fall", 0.2))
    thresholds = override(AlarmConfig(), params.get("thresholds") or {}, "experiments.alarms.thresholds")
    yield
    runs = []
    for name in p.trained():
        p.wait(name)
        run = p.out / name
        rows, its = load_run(run)
        curve, last = gold_curve(rows, its)
        if not curve:
            continue
        config = json.loads((run / "run_config.json").read_text())
        fired = replay(monitor_rows(rows, its), (dpo_rules if config["command"] == "dpo" else rl_rules)(thresholds))
        outcome = alarm_outcome(curve, last, fired, fall)
        monitors = {"monitors": dpo_monitors(rows)} if config["command"] == "dpo" else {}
        runs.append({"name": name, "command": config["command"], "curve": curve, **outcome, **monitors})
    res["alarms"] = {
        "fall": fall,
        "thresholds": to_dict(thresholds),
        "tuned_on": [int(x) for x in params.get("tuned_on", [])],  # seeds the thresholds were chosen on (see aggregate)
        "runs": runs,
        "summary": alarm_summary(runs),
        "by_name": alarm_table(runs),
    }


RUNNERS = {
    "methods": methods,
    "frontier": frontier,
    "overoptimisation": overoptimisation,
    "diverse": diverse,
    "reward": reward,
    "alarms": alarms,
    "iterate": iterate,
}
