"""The report page's sections, one function each, in page order (:data:`SECTIONS`)."""

from __future__ import annotations

import html

from .findings import (
    ALARM_COLUMNS,
    ALARMS_NOTE,
    LEVER_COLUMNS,
    LEVERS_NOTE,
    alarm_findings,
    alarm_rows,
    collapse_findings,
    diverse_findings,
    frontier_findings,
    lever_rows,
    online_findings,
    overopt_findings,
    seed_findings,
    sft_findings,
)
from .results import ordered, title
from .rounds import ROUNDS_COLUMNS, ROUNDS_NOTE, rounds_findings, rounds_rows
from .writers import Html, block, figure_tag, html_table, td_row, th_row


def _methods(h: Html, res: dict, figures: list[str]) -> str | None:
    pol = res.get("policies", {})
    rows = ordered(pol)
    if not rows:
        return None
    seeded = any("gold_seeds_ci95" in pol[m] for m in rows)
    watched = any("alarms" in pol[m] for m in rows)
    keys = ("gold", "gold_ci95", *(("gold_seeds_ci95",) * seeded), "win_rate", "kl", "length", "distinct1", "distinct2", "well_formed")
    titles = ("policy", "gold reward", "± 95% CI (prompts)", *(("± 95% CI (seeds)",) * seeded), "win rate vs SFT", "KL to SFT")
    titles += ("length", "distinct-1", "distinct-2", "well-formed", "train s", *(("alarms raised",) * watched))
    cells = [
        td_row(
            title(res, m),
            *(h.num(f"policies.{m}.{k}", 3) for k in keys),
            h.num(f"policies.{m}.wall_s", 0),
            *((h.num(f"policies.{m}.alarms") if "alarms" in pol[m] else "–",) * watched),
        )
        for m in rows
    ]
    table = html_table(th_row(*titles), cells)
    note = (
        "<p class='note'>KL is the Monte Carlo estimate over each policy's own samples; best-of-n's is the analytic "
        "log n − (n−1)/n; train s is the wall time of the stage that made the policy"
        + (
            ". Every number is the mean over the seeds; the interval over prompts is that of the mean (independent seeds), "
            "the interval over seeds a t interval of the per-seed means.</p>"
            if seeded
            else ".</p>"
        )
    )
    figure = (
        [figure_tag("methods", "Mean gold reward per method, with SFT and the demonstrator as dashed lines")]
        if "methods" in figures
        else []
    )
    return "\n".join([table, note, *figure]) + "\n"


def _vs_sft(h: Html, res: dict, figures: list[str]) -> str | None:
    c = res.get("claims", {})
    if "sft_vs_demonstrator" not in c:
        return None
    text = " ".join(sft_findings(h, res) + seed_findings(h, res))
    rows = [
        td_row(title(res, m), h.interval(f"claims.{m}_vs_sft"), h.interval(f"claims.{m}_vs_demonstrator"))
        for m in ordered(k[: -len("_vs_sft")] for k in c if k.endswith("_vs_sft"))
    ]
    return f"<p>\n{text}\n</p>" + html_table(th_row("method", "− SFT", "− demonstrator"), rows)


def _frontier(h: Html, res: dict, figures: list[str]) -> str | None:
    if "frontier" not in res:
        return None
    figure = [figure_tag("frontier", "Gold reward against KL to pi_SFT, several beta per method")] if "frontier" in figures else []
    rows = []
    for method, pts in res["frontier"].items():
        for i in range(len(pts)):
            k = f"frontier.{method}.{i}"
            rows.append(td_row(method.upper(), h.num(k + ".beta", 2), h.num(k + ".gold"), h.num(k + ".gold_ci95"), h.num(k + ".kl")))
    summary = [f"<p>{x}</p>" for x in frontier_findings(h, res)]
    return block(*figure, html_table(th_row("method", "β", "gold", "± CI", "KL"), rows), *summary)


def _offline_online(h: Html, res: dict, figures: list[str]) -> str | None:
    lines = online_findings(h, res)
    if not lines:
        return None
    lines.append(
        "DPO learns from the fixed comparisons of pi_SFT's samples; the RL methods sample their own completions and are "
        "scored by the reward model trained on those comparisons."
    )
    return "<p>\n" + "\n".join(lines) + "</p>"


def _overoptimisation(h: Html, res: dict, figures: list[str]) -> str | None:
    if "overoptimisation" not in res:
        return None
    o = res["overoptimisation"]
    intro = (
        f"<p>{o['algo'].upper()} against a reward model trained on only {h.num('overoptimisation.comparisons', 0)} rankings "
        f"(gold pair accuracy {h.num('overoptimisation.reward_model.gold_pair_accuracy')}, held-out accuracy "
        f"{h.num('overoptimisation.reward_model.accuracy')} of a Bayes-optimal {h.num('overoptimisation.reward_model.bayes_optimal_accuracy')}), "
        f"{h.num('overoptimisation.iterations', 0)} iterations. Changes are from the first iteration's rollouts to the last's, "
        "with 95% intervals over rollouts.</p><ul>"
    )
    items = [f"<li>{x}</li>" for x in overopt_findings(h, res)]
    caption = "Proxy score and gold reward of each iteration's rollouts against their KL to pi_SFT (darker = later iteration)"
    figure = [figure_tag("overoptimisation", caption)] if "overoptimisation" in figures else []
    return block(intro, *items, "</ul>", *figure)


def _diverse(h: Html, res: dict, figures: list[str]) -> str | None:
    if "diverse" not in res:
        return None
    intro = (
        f"<p>A share of {h.num('diverse.minority_share', 2)} of the labels come from the group called 'minority', who want k + 2 items; "
        "the rest from the majority, whose utility is the gold reward. DPO on the pooled labels, and DPO with the labeller's group named in the prompt.</p>"
    )
    rows = []
    for i, r in enumerate(res["diverse"]["rows"]):
        k = f"diverse.rows.{i}"
        rows.append(td_row(html.escape(r["policy"]), r["group"], h.num(k + ".utility"), h.num(k + ".ci95"), h.num(k + ".length_items", 2)))
    table = html_table(th_row("policy", "group", "group's utility", "± CI", "items per answer"), rows)
    findings = diverse_findings(h, res)
    return block(intro, table, *(f"<p>{x}</p>" for x in findings))


def _reward_model(h: Html, res: dict, figures: list[str]) -> str | None:
    if "reward_model" not in res:
        return None
    models = [("all rankings", "reward_model")] + [("few rankings", "overoptimisation.reward_model")] * ("overoptimisation" in res)
    keys = ("gold_pair_accuracy", "gold_pair_accuracy_ci95", "accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")
    rows = [td_row(label, *(h.num(f"{k}.{key}") for key in keys)) for label, k in models]
    head = th_row("reward model", "gold pair accuracy", "± CI", "held-out accuracy", "Bayes-optimal", "ratio", "Spearman across prompts")
    comps = res["reward_model"].get("components", {})
    crow = [
        td_row(
            name.replace("_", " "), h.num(f"reward_model.components.{name}.score", -2), h.num(f"reward_model.components.{name}.gold", -2)
        )
        for name in comps
    ]
    note = (
        "<p class='note'>Gold pair accuracy: fresh pi_SFT samples, several per held-out prompt; the share of pairs of the same prompt with "
        "different gold reward that the reward model orders as gold does (a tied score counts ½), with its 95% interval over prompts — "
        "Bradley–Terry identifies a reward only within a prompt. Held-out accuracy is on every pair of each held-out ranking; the "
        "Bayes-optimal accuracy is E[max(p, 1−p)] of the simulated annotators' own label probabilities on those same pairs (a "
        "Plackett–Luce ranking's pairs are Bradley–Terry), truncation included: no model can do better on those labels. The Spearman "
        "correlation across prompts mostly measures offsets between prompts that no label fixes. Below: within-prompt correlation of "
        "the reward model's score, and of gold, with each term of the gold reward — what the reward model has learnt of each.</p>"
    )
    parts = [html_table(head, rows), note]
    if crow:
        parts.append(html_table(th_row("term of gold", "reward model", "gold"), crow))
    return block(*parts)


def _levers(h: Html, res: dict, figures: list[str]) -> str | None:
    rows = lever_rows(h, res)
    if not rows:
        return None
    head = th_row("lever", *(title for _, title, _ in LEVER_COLUMNS))
    return block(html_table(head, [td_row(*r) for r in rows]), f"<p class='note'>{html.escape(LEVERS_NOTE)}</p>")


def _alarms(h: Html, res: dict, figures: list[str]) -> str | None:
    rows = alarm_rows(h, res)
    if not rows:
        return None
    table = html_table(th_row("run", *(t for _, t in ALARM_COLUMNS)), [td_row(*r) for r in rows])
    said = [f"<p>{x}</p>" for x in alarm_findings(h, res) + collapse_findings(h, res)]
    caption = "A DPO run that went wrong, on every seed: its monitors at each evaluation, and where its first alarm fired"
    figure = [figure_tag("collapse", caption)] if "collapse" in figures else []
    return block(*said, table, f"<p class='note'>{html.escape(ALARMS_NOTE)}</p>", *figure)


def _rounds(h: Html, res: dict, figures: list[str]) -> str | None:
    rows = rounds_rows(h, res)
    if not rows:
        return None
    said = [f"<p>{x}</p>" for x in rounds_findings(h, res)]
    return block(*said, html_table(th_row(*ROUNDS_COLUMNS), [td_row(*r) for r in rows]), f"<p class='note'>{html.escape(ROUNDS_NOTE)}</p>")


def _samples(h: Html, res: dict, figures: list[str]) -> str | None:
    if not res.get("samples"):
        return None
    tables = []
    for s in res["samples"]:
        rows = [
            f"<tr><td>{html.escape(title(res, m))}</td><td class='text'>{html.escape(text)}</td></tr>"
            for m, text in s["completions"].items()
        ]
        tables.append(f"<h3>{html.escape(s['prompt'])}</h3>" + html_table("", rows))
    return block(*tables)


SECTIONS = (
    ("methods", "Methods", _methods),
    ("vs-sft", "Preference tuning against SFT and the demonstrator", _vs_sft),
    ("frontier", "The reward–KL frontier", _frontier),
    ("offline-online", "DPO (offline) against RLHF (online)", _offline_online),
    ("overoptimisation", "Over-optimisation", _overoptimisation),
    ("diverse", "Diverse preferences", _diverse),
    ("reward-model", "Reward model against the Bayes optimum", _reward_model),
    ("reward-levers", "Reward-model levers", _levers),
    ("alarms", "Alarms judged on gold", _alarms),
    ("iterate", "Iterating at a fixed budget of labels", _rounds),
    ("samples", "Samples side by side", _samples),
)
"""(id, heading, body) of each section in page order; ``body`` gives the HTML between the ``<h2>`` and
``</section>``, or None when ``results.json`` has nothing for it. Only sections with a body are numbered."""
