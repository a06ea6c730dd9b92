"""Every sentence of the report that states a result, each choosing its words from a 95% interval
(:func:`preftune.report.results.compare`); shared by the page and the Markdown."""

from __future__ import annotations

from .results import HEADLINE, compare, comparisons, grouped, ordered, title
from .rounds import rounds_findings
from .writers import Html


def sft_findings(h: Html, res: dict) -> list[str]:
    c = res.get("claims", {})
    if "sft_vs_demonstrator" not in c:
        return []
    out = [
        f"SFT {compare(c['sft_vs_demonstrator'], 'beats', 'stays below', 'is indistinguishable from')} the demonstrator it imitates: "
        f"{h.interval('claims.sft_vs_demonstrator')}."
    ]
    tuned = ordered(k[: -len("_vs_sft")] for k in c if k.endswith("_vs_sft"))
    said = grouped({title(res, m): c[f"{m}_vs_sft"] for m in tuned}, "SFT")
    out.append(f"Against SFT (the interval of each method's difference in gold reward): {h.esc(said)}.")
    beat = c["beat_demonstrator"]
    out.append(
        f"Methods whose difference to the demonstrator lies above zero: {h.num('claims.beat_demonstrator.count', 0)} "
        f"of {h.num('claims.beat_demonstrator.of', 0)} ({h.esc(', '.join(title(res, m) for m in beat['methods']) or 'none')})."
    )
    return out


def frontier_findings(h: Html, res: dict) -> list[str]:
    best = res.get("claims", {}).get("frontier_best", {})
    if not best:
        return []
    points = "; ".join(
        f"{m.upper()} {h.num(f'claims.frontier_best.{m}.gold')} at KL {h.num(f'claims.frontier_best.{m}.kl', 2)} (β {h.num(f'claims.frontier_best.{m}.beta', 2)})"
        for m in best
    )
    return [f"On the frontier, the β with the highest mean gold per method (a point estimate, not a comparison): {points}."]


def online_findings(h: Html, res: dict) -> list[str]:
    c = res.get("claims", {})
    out = []
    for other in ("ppo", "rloo"):
        if f"dpo_vs_{other}" in c:
            verdict = compare(c[f"dpo_vs_{other}"], "beats", "trails", "is indistinguishable from")
            out.append(
                f"DPO {verdict} {other.upper()} at their default β: {h.interval(f'claims.dpo_vs_{other}')} in gold reward, "
                f"at KL {h.num('policies.dpo.kl', 2)} against {h.num(f'policies.{other}.kl', 2)}."
            )
    return out


def overopt_findings(h: Html, res: dict) -> list[str]:
    o = res.get("overoptimisation")
    if not o:
        return []
    out = []
    for i, run in enumerate(o["runs"]):
        k = f"overoptimisation.runs.{i}.summary"
        sm = run["summary"]
        verdict = (
            "over-optimises: the proxy rises while gold falls"
            if sm["overoptimised"]
            else f"does not over-optimise: the proxy {compare(sm['proxy_change'], 'rises', 'falls', 'does not move clearly')}, "
            f"gold {compare(sm['gold_change'], 'rises', 'falls', 'does not move clearly')}"
        )
        out.append(
            f"{o['algo'].upper()} at β = {h.num(f'overoptimisation.runs.{i}.beta', 2)} against the reward model from "
            f"{h.num('overoptimisation.comparisons', 0)} rankings {verdict}. Proxy {h.num(k + '.proxy_start')} → {h.num(k + '.proxy_end')} "
            f"(change {h.interval(k + '.proxy_change')}), gold {h.num(k + '.gold_start')} → {h.num(k + '.gold_end')} "
            f"(change {h.interval(k + '.gold_change')}; peak {h.num(k + '.gold_peak')} at KL {h.num(k + '.kl_peak', 2)}), final KL {h.num(k + '.kl_end', 2)}."
        )
    return out


def diverse_findings(h: Html, res: dict) -> list[str]:
    c = res.get("claims", {})
    if "diverse_minority_gain" not in c:
        return []
    return [
        f"Naming the labeller's group in the prompt {compare(c['diverse_minority_gain'], 'raises', 'lowers', 'does not detectably change')} "
        f"the minority's utility ({h.num('claims.diverse.pooled_minority')} pooled, {h.num('claims.diverse.conditioned_minority')} conditioned: "
        f"{h.interval('claims.diverse_minority_gain')}) and {compare(c['diverse_majority_gain'], 'raises', 'lowers', 'does not detectably change')} "
        f"the majority's ({h.num('claims.diverse.pooled_majority')} and {h.num('claims.diverse.conditioned_majority')}: "
        f"{h.interval('claims.diverse_majority_gain')})."
    ]


def rm_findings(h: Html, res: dict) -> list[str]:
    if "reward_model" not in res:
        return []
    k = "reward_model"
    return [
        f"The reward model orders {h.num(k + '.gold_pair_accuracy')} (± {h.num(k + '.gold_pair_accuracy_ci95')}) of the within-prompt pairs "
        f"of fresh pi_SFT samples with different gold reward as gold does; on held-out labels it reaches {h.num(k + '.accuracy')}, "
        f"{h.num(k + '.accuracy_over_bayes')} of the Bayes-optimal {h.num(k + '.bayes_optimal_accuracy')}."
    ] + (
        [
            f"Within prompts its score correlates with repeated items at r = {h.num(k + '.components.duplicates.score', -2)} "
            f"(gold's own: {h.num(k + '.components.duplicates.gold', -2)}) and with the count error at "
            f"r = {h.num(k + '.components.count_error.score', -2)} (gold's: {h.num(k + '.components.count_error.gold', -2)})."
        ]
        if "duplicates" in res[k].get("components", {})
        else []
    )


def gold_findings(h: Html, res: dict) -> list[str]:
    """RL against the gold reward itself, from the base model: does it beat where it started?"""
    out = []
    for name in (m for m in HEADLINE if f"{m}_vs_base" in res.get("claims", {})):
        verdict = compare(res["claims"][f"{name}_vs_base"], "beats", "falls below", "is indistinguishable from")
        out.append(f"{title(res, name)} {verdict} the base model it started from: {h.interval(f'claims.{name}_vs_base')} in gold reward.")
    return out


def seed_findings(h: Html, res: dict) -> list[str]:
    """Over several seeds: on how many each tuned policy beats SFT, and how wide its seed interval is."""
    c, pol = res.get("claims", {}), res.get("policies", {})
    out = []
    for m in ordered(k[: -len("_vs_sft")] for k in c if k.endswith("_vs_sft") and "above" in c[k].get("seeds", {})):
        k = f"claims.{m}_vs_sft.seeds"
        diffs = ", ".join(h.num(f"{k}.per_seed.{i}", -3) for i in range(len(c[f"{m}_vs_sft"]["seeds"]["per_seed"])))
        spread = (
            f"; gold {h.num(f'policies.{m}.gold')} ± {h.num(f'policies.{m}.gold_seeds_ci95')} over seeds"
            if pol.get(m, {}).get("gold_seeds_ci95") is not None
            else ""
        )
        out.append(f"{h.esc(title(res, m))} is above SFT on {h.num(k + '.above', 0)} of {h.num(k + '.n', 0)} seeds ({diffs}){spread}.")
    return out


def alarm_findings(h: Html, res: dict) -> list[str]:
    """The alarms judged on gold: detection, false alarms, lead."""
    a = res.get("alarms")
    if not a or not a["runs"]:
        return []
    k = "alarms.summary"
    lead = f", a median {h.num(k + '.lead_median', 0)} steps before gold fell that far" if a["summary"]["lead_median"] is not None else ""
    out = [
        f"Of {h.num(k + '.runs', 0)} training runs, {h.num(k + '.went_wrong', 0)} went wrong (gold at some point {h.num('alarms.fall', 2)} "
        f"or more below its best so far). An alarm flagged {h.num(k + '.detected', 0)} of them{lead}, and "
        f"{h.num(k + '.false_alarms', 0)} of the {h.num(k + '.healthy', 0)} runs that did not go wrong."
    ]
    if "held_out" in a:
        k = "alarms.held_out"
        seeds = ", ".join(h.num(f"alarms.held_out_seeds.{i}", 0) for i in range(len(a["held_out_seeds"])))
        tuned = ", ".join(h.num(f"alarms.tuned_on.{i}", 0) for i in range(len(a["tuned_on"])))
        out.append(
            f"The thresholds were chosen on seed{'s' if len(a['tuned_on']) > 1 else ''} {tuned}; on the others ({seeds}) alone: "
            f"{h.num(k + '.detected', 0)} of {h.num(k + '.went_wrong', 0)} runs that went wrong flagged, "
            f"{h.num(k + '.false_alarms', 0)} of {h.num(k + '.healthy', 0)} healthy ones."
        )
    return out


COLLAPSE_KEYS = (
    ("sample/gold", "gold of its samples", -3),
    ("logratio/chosen", "log π(chosen) − log π_ref(chosen)", -2),
    ("logratio/rejected", "log π(rejected) − log π_ref(rejected)", -2),
    ("margin", "their margin", -2),
    ("sample/kl", "KL to pi_SFT", 1),
    ("sample/length", "sample length", 1),
    ("sample/eos_rate", "share of samples that end", 2),
    ("eos_chosen", "log-prob of EOS after a chosen completion", 4),
)


def collapse_findings(h: Html, res: dict) -> list[str]:
    """The first DPO-family run that went wrong, from the evaluation before gold fell to the one where it had."""
    runs = res.get("alarms", {}).get("runs", [])
    for i, r in enumerate(runs):
        steps = [m["step"] for m in r.get("monitors", [])]
        if not r["went_wrong"] or r["drop_step"] not in steps or steps.index(r["drop_step"]) == 0:
            continue
        j = steps.index(r["drop_step"])
        k = f"alarms.runs.{i}.monitors"
        moves = "; ".join(f"{what} {h.num(f'{k}.{j - 1}.{key}', d)} → {h.num(f'{k}.{j}.{key}', d)}" for key, what, d in COLLAPSE_KEYS)
        seed = f" (seed {h.num(f'alarms.runs.{i}.seed', 0)})" if "seed" in r else ""
        return [
            f"{h.esc(r['name'])}{seed}, from step {h.num(f'{k}.{j - 1}.step', 0)} to step {h.num(f'{k}.{j}.step', 0)}, means over "
            f"the held-out pairs and the monitor's samples: {moves}."
        ]
    return []


def findings(h: Html, res: dict) -> list[str]:
    """Every sentence of the report that states a result, in page order."""
    parts = (
        sft_findings,
        seed_findings,
        gold_findings,
        frontier_findings,
        online_findings,
        overopt_findings,
        diverse_findings,
        rm_findings,
    )
    parts += (alarm_findings, collapse_findings, rounds_findings)
    return [x for part in parts for x in part(h, res)]


ALARM_COLUMNS = (
    ("runs", "runs"),
    ("went_wrong", "went wrong"),
    ("detected", "of them flagged"),
    ("healthy", "healthy"),
    ("false_alarms", "of them flagged (false alarms)"),
    ("lead_median", "median lead, steps"),
)


def alarm_rows(h: Html, res: dict) -> list[list[str]]:
    """The alarms table: one row per run name (over seeds), then all runs."""
    a = res.get("alarms")
    if not a or not a["runs"]:
        return []
    rows = [[h.esc(r["name"]), *(h.num(f"alarms.by_name.{i}.{key}", 0) for key, _ in ALARM_COLUMNS)] for i, r in enumerate(a["by_name"])]
    return rows + [["all runs", *(h.num(f"alarms.summary.{key}", 0) for key, _ in ALARM_COLUMNS)]]


ALARMS_NOTE = (
    "A run went wrong when the gold of its own samples (a DPO run's monitor prompts at each evaluation, an RL run's rollouts) stood "
    "the stated fall or more below its best so far at some point; flagged: an alarm fired at any step; lead: steps from the first "
    "alarm to the point gold had fallen that far (negative: the alarm came after). The alarms are those --alarm.*'s defaults (or the "
    "experiment's thresholds) raise when replayed over each run's logged monitors, whatever the run itself printed."
)


LEVER_COLUMNS = (
    ("gold_pair_accuracy", "gold pair accuracy", 3),
    ("gold_pair_accuracy_ci95", "± CI", 3),
    ("accuracy", "held-out accuracy", 3),
    ("bayes_optimal_accuracy", "Bayes-optimal", 3),
    ("accuracy_over_bayes", "ratio", 3),
    ("components.duplicates", "r(duplicates)", -2),
    ("components.count_error", "r(count error)", -2),
    ("components.wrong", "r(wrong items)", -2),
    ("components.coverage", "r(coverage)", -2),
)


def lever_rows(h: Html, res: dict) -> list[list[str]]:
    rows = []
    for i, r in enumerate(res.get("reward_levers", [])):
        rows.append([h.esc(r["lever"]), *(h.num(f"reward_levers.{i}.{key}", d) for key, _, d in LEVER_COLUMNS)])
    if rows:
        gold = [h.num(f"reward_levers.0.gold_components.{key.split('.')[1]}", -2) for key, _, _ in LEVER_COLUMNS[5:]]
        rows.append(["gold itself", *["–"] * 5, *gold])
    return rows


LEVERS_NOTE = (
    "One reward model per row, each changing one thing from the first row; r(term) is the within-prompt correlation of its "
    "score with that term of the gold reward on fresh pi_SFT samples (the last row: gold's own). A lever that changes the "
    "pipeline (corpus, pretraining) is measured on its own pi_SFT's samples."
)


def intervals_note(h: Html, res: dict) -> str:
    n = comparisons(res)
    seeds = res.get("seeds") or []
    over = (
        f"over {len(seeds)} training seeds (a t interval of the per-seed results; beside it, the interval over prompts of the mean over seeds)"
        if len(seeds) > 1
        else "over prompts (paired bootstrap), for one training seed: they say nothing about another seed"
    )
    return (
        f"Each verdict is read from a 95% interval {over}; the report makes {n} such comparisons, and by chance alone "
        f"about one in twenty{f' (here {round(n / 20)})' if n >= 20 else ''} may land on the wrong side."
    )


def provenance(h: Html, res: dict) -> str:
    """Which run the numbers come from: command, seeds, machine, date, commit (as results.json records them)."""
    if not res.get("run"):
        return ""
    seeds = res.get("seeds") or []
    seeds_said = ", ".join(h.num(f"seeds.{i}", 0) for i in range(len(seeds))) if seeds else h.num("run.seed", 0)
    return (
        f"Run: {h.code(h.num('run.command'))}, seed{'s' if len(seeds) > 1 else ''} {seeds_said}, on {h.num('run.machine')} "
        f"({h.num('run.threads', 0)} threads), {h.num('run.date')}, preftune {h.num('preftune')} at commit {h.num('run.commit')}."
    )
