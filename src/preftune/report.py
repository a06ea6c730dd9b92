"""``report.html`` and its PNG figures from a run's ``results.json`` (``preftune report RUN_DIR``).

Nothing in the report is typed in by hand: every number is a ``<span class="num" data-key=...>``
that formats the value at that path of ``results.json`` (a test checks each one against the
file), and every sentence that states a comparison chooses its words from a 95% interval — the
seed-level one when the run has several seeds (:func:`verdict_interval`). :func:`markdown`
renders the same findings as Markdown (``preftune report RUN --markdown``: the README's results).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

TITLES = {
    "base": "base (pretrained)",
    "demonstrator": "demonstrator (noisy human)",
    "sft": "SFT (pi_SFT)",
    "best-of-n": "best-of-n (reward model)",
    "raft": "RAFT (filter + SFT)",
    "reinforce": "REINFORCE",
    "rloo": "RLOO",
    "ppo": "PPO",
    "dpo": "DPO",
    "ipo": "IPO",
    "unlikelihood": "unlikelihood",
    "grpo": "GRPO",
    "simpo": "SimPO",
}
HEADLINE = tuple(TITLES)  # the methods table's rows, in order, where the results have them


class MissingResult(ValueError):
    """A results file without a value the report reads: one written by another preftune version."""


def lookup(res: dict, key: str) -> Any:
    """The value at a dotted path of results.json (list items by index)."""
    value: Any = res
    for part in key.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            raise MissingResult(f"no {key!r} in the results (written by another preftune version? run the experiment again)") from None
    return value


def fmt(value: Any, digits: int) -> str:
    """A number as the report prints it: ``digits`` decimals, with a sign when ``digits < 0``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:+.{-digits}f}" if digits < 0 else f"{value:.{digits}f}"


class Html:
    """Builds the page; ``num`` is the only way a number gets in."""

    def __init__(self, res: dict):
        self.res = res

    def num(self, key: str, digits: int = 3) -> str:
        text = html.escape(fmt(lookup(self.res, key), digits))
        return f'<span class="num" data-key="{html.escape(key)}" data-digits="{digits}">{text}</span>'

    def esc(self, text: str) -> str:
        return html.escape(text)

    def code(self, text: str) -> str:
        return f"<code>{text}</code>"

    def interval(self, key: str) -> str:
        """``diff (95% CI lo to hi)`` of a claim; with seeds, the interval over seeds next to the one over prompts."""
        claim = lookup(self.res, key)
        text = f"{self.num(key + '.diff', -3)} (95% CI {self.num(key + '.lo', -3)} to {self.num(key + '.hi', -3)}"
        if "seeds" in claim:
            text = (
                f"{self.num(key + '.seeds.diff', -3)} (95% CI over {self.num(key + '.seeds.n', 0)} seeds {self.num(key + '.seeds.lo', -3)} "
                f"to {self.num(key + '.seeds.hi', -3)}; over prompts {self.num(key + '.lo', -3)} to {self.num(key + '.hi', -3)}"
            )
        return text + ")"


class Text(Html):
    """The same sentences as plain text (Markdown): numbers without their spans."""

    def num(self, key: str, digits: int = 3) -> str:
        return fmt(lookup(self.res, key), digits)

    def esc(self, text: str) -> str:
        return text

    def code(self, text: str) -> str:
        return f"`{text}`"


def verdict_interval(claim: dict) -> dict:
    """The interval a verdict is read from: over seeds when the run has them, else over prompts."""
    return claim.get("seeds", claim)


def above(claim: dict) -> bool:
    ci = verdict_interval(claim)
    return ci["lo"] is not None and ci["lo"] > 0


def below(claim: dict) -> bool:
    ci = verdict_interval(claim)
    return ci["hi"] is not None and ci["hi"] < 0


def compare(claim: dict, better: str, worse: str, same: str) -> str:
    """``better`` if the claim's interval lies above zero, ``worse`` if below, else ``same``."""
    return better if above(claim) else worse if below(claim) else same


def comparisons(res: dict) -> int:
    """How many intervals the report's verdicts are read from (each at 95%)."""
    n = 0
    for claim in res.get("claims", {}).values():
        n += isinstance(claim, dict) and "lo" in claim and "hi" in claim
    n += 2 * len(res.get("overoptimisation", {}).get("runs", []))  # each run's proxy and gold change
    return n


def _head(*titles: str) -> str:
    return "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(head: str, rows: list[str]) -> str:
    return "\n".join(["<table>" + head, *rows, "</table>"])


def _block(*parts: str) -> str:
    """``parts`` on lines of their own between a section's heading and its ``</section>``."""
    return "\n" + "\n".join(parts) + "\n"


def _figure(name: str, caption: str) -> str:
    return f'<figure><img src="figures/{name}.png" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}td.text{text-align:left;font-family:monospace;white-space:pre-wrap}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}.note{color:#555;font-size:13px}
section{margin-top:2em}
"""


def _methods(h: Html, res: dict, figures: list[str]) -> str | None:
    pol = res.get("policies", {})
    rows = [m for m in HEADLINE if m in pol]
    if not rows:
        return None
    seeded = any("gold_seeds_ci95" in pol[m] for m in rows)
    keys = ("gold", "gold_ci95", *(("gold_seeds_ci95",) * seeded), "win_rate", "kl", "length", "distinct1", "distinct2", "well_formed")
    titles = ("policy", "gold reward", "± 95% CI (prompts)", *(("± 95% CI (seeds)",) * seeded), "win rate vs SFT", "KL to SFT")
    titles += ("length", "distinct-1", "distinct-2", "well-formed", "train s")
    cells = [_row(TITLES[m], *(h.num(f"policies.{m}.{k}", 3) for k in keys), h.num(f"policies.{m}.wall_s", 0)) for m in rows]
    table = _table(_head(*titles), cells)
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
        [_figure("methods", "Mean gold reward per method, with SFT and the demonstrator as dashed lines")] if "methods" in figures else []
    )
    return "\n".join([table, note, *figure]) + "\n"


def _sft_findings(h: Html, res: dict) -> list[str]:
    c = res.get("claims", {})
    if "sft_vs_demonstrator" not in c:
        return []
    out = [
        f"SFT {compare(c['sft_vs_demonstrator'], 'beats', 'stays below', 'is indistinguishable from')} the demonstrator it imitates: "
        f"{h.interval('claims.sft_vs_demonstrator')}."
    ]
    tuned = [m for m in HEADLINE if f"{m}_vs_sft" in c]
    groups = {
        ("beats", "beat"): [m for m in tuned if above(c[f"{m}_vs_sft"])],
        ("is indistinguishable from", "are indistinguishable from"): [
            m for m in tuned if not above(c[f"{m}_vs_sft"]) and not below(c[f"{m}_vs_sft"])
        ],
        ("falls below", "fall below"): [m for m in tuned if below(c[f"{m}_vs_sft"])],
    }
    said = "; ".join(f"{', '.join(TITLES[m] for m in ms)} {verb[len(ms) > 1]} SFT" for verb, ms in groups.items() if ms)
    out.append(f"Against SFT (the interval of each method's difference in gold reward): {h.esc(said)}.")
    beat = c["beat_demonstrator"]
    out.append(
        f"Methods whose difference to the demonstrator lies above zero: {h.num('claims.beat_demonstrator.count', 0)} "
        f"of {h.num('claims.beat_demonstrator.of', 0)} ({h.esc(', '.join(TITLES.get(m, m) for m in beat['methods']) or 'none')})."
    )
    return out


def _vs_sft(h: Html, res: dict, figures: list[str]) -> str | None:
    c = res.get("claims", {})
    if "sft_vs_demonstrator" not in c:
        return None
    text = " ".join(_sft_findings(h, res))
    rows = [
        _row(TITLES[m], h.interval(f"claims.{m}_vs_sft"), h.interval(f"claims.{m}_vs_demonstrator")) for m in HEADLINE if f"{m}_vs_sft" in c
    ]
    return f"<p>\n{text}\n</p>" + _table(_head("method", "− SFT", "− demonstrator"), rows)


def _frontier(h: Html, res: dict, figures: list[str]) -> str | None:
    if "frontier" not in res:
        return None
    figure = [_figure("frontier", "Gold reward against KL to pi_SFT, several beta per method")] if "frontier" in figures else []
    rows = []
    for method, pts in res["frontier"].items():
        for i in range(len(pts)):
            k = f"frontier.{method}.{i}"
            rows.append(_row(method.upper(), h.num(k + ".beta", 2), h.num(k + ".gold"), h.num(k + ".gold_ci95"), h.num(k + ".kl")))
    summary = [f"<p>{x}</p>" for x in _frontier_findings(h, res)]
    return _block(*figure, _table(_head("method", "β", "gold", "± CI", "KL"), rows), *summary)


def _frontier_findings(h: Html, res: dict) -> list[str]:
    best = res.get("claims", {}).get("frontier_best", {})
    if not best:
        return []
    points = "; ".join(
        f"{m.upper()} {h.num(f'claims.frontier_best.{m}.gold')} at KL {h.num(f'claims.frontier_best.{m}.kl', 2)} (β {h.num(f'claims.frontier_best.{m}.beta', 2)})"
        for m in best
    )
    return [f"On the frontier, the β with the highest mean gold per method (a point estimate, not a comparison): {points}."]


def _online_findings(h: Html, res: dict) -> list[str]:
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


def _offline_online(h: Html, res: dict, figures: list[str]) -> str | None:
    lines = _online_findings(h, res)
    if not lines:
        return None
    lines.append(
        "DPO learns from the fixed comparisons of pi_SFT's samples; the RL methods sample their own completions and are "
        "scored by the reward model trained on those comparisons."
    )
    return "<p>\n" + "\n".join(lines) + "</p>"


def _overopt_findings(h: Html, res: dict) -> list[str]:
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
    items = [f"<li>{x}</li>" for x in _overopt_findings(h, res)]
    caption = "Proxy score and gold reward of each iteration's rollouts against their KL to pi_SFT (darker = later iteration)"
    figure = [_figure("overoptimisation", caption)] if "overoptimisation" in figures else []
    return _block(intro, *items, "</ul>", *figure)


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
        rows.append(_row(html.escape(r["policy"]), r["group"], h.num(k + ".utility"), h.num(k + ".ci95"), h.num(k + ".length_items", 2)))
    table = _table(_head("policy", "group", "group's utility", "± CI", "items per answer"), rows)
    findings = _diverse_findings(h, res)
    return _block(intro, table, *(f"<p>{x}</p>" for x in findings))


def _diverse_findings(h: Html, res: dict) -> list[str]:
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


def _rm_findings(h: Html, res: dict) -> list[str]:
    if "reward_model" not in res:
        return []
    k = "reward_model"
    return [
        f"The reward model orders {h.num(k + '.gold_pair_accuracy')} (± {h.num(k + '.gold_pair_accuracy_ci95')}) of the within-prompt pairs "
        f"of fresh pi_SFT samples with different gold reward as gold does; on held-out labels it reaches {h.num(k + '.accuracy')}, "
        f"{h.num(k + '.accuracy_over_bayes')} of the Bayes-optimal {h.num(k + '.bayes_optimal_accuracy')}."
    ]


def _reward_model(h: Html, res: dict, figures: list[str]) -> str | None:
    if "reward_model" not in res:
        return None
    models = [("all rankings", "reward_model")] + [("few rankings", "overoptimisation.reward_model")] * ("overoptimisation" in res)
    keys = ("gold_pair_accuracy", "gold_pair_accuracy_ci95", "accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")
    rows = [_row(label, *(h.num(f"{k}.{key}") for key in keys)) for label, k in models]
    head = _head("reward model", "gold pair accuracy", "± CI", "held-out accuracy", "Bayes-optimal", "ratio", "Spearman across prompts")
    comps = res["reward_model"].get("components", {})
    crow = [
        _row(name.replace("_", " "), h.num(f"reward_model.components.{name}.score", -2), h.num(f"reward_model.components.{name}.gold", -2))
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
    parts = [_table(head, rows), note]
    if crow:
        parts.append(_table(_head("term of gold", "reward model", "gold"), crow))
    return _block(*parts)


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


def _lever_rows(h: Html, res: dict) -> list[list[str]]:
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


def _levers(h: Html, res: dict, figures: list[str]) -> str | None:
    rows = _lever_rows(h, res)
    if not rows:
        return None
    head = _head("lever", *(title for _, title, _ in LEVER_COLUMNS))
    return _block(_table(head, [_row(*r) for r in rows]), f"<p class='note'>{html.escape(LEVERS_NOTE)}</p>")


def _samples(h: Html, res: dict, figures: list[str]) -> str | None:
    if not res.get("samples"):
        return None
    tables = []
    for s in res["samples"]:
        rows = [
            f"<tr><td>{html.escape(TITLES.get(m, m))}</td><td class='text'>{html.escape(text)}</td></tr>"
            for m, text in s["completions"].items()
        ]
        tables.append(f"<h3>{html.escape(s['prompt'])}</h3>" + _table("", rows))
    return _block(*tables)


SECTIONS = (
    ("methods", "Methods", _methods),
    ("vs-sft", "Preference tuning against SFT and the demonstrator", _vs_sft),
    ("frontier", "The reward–KL frontier", _frontier),
    ("offline-online", "DPO (offline) against RLHF (online)", _offline_online),
    ("overoptimisation", "Over-optimisation", _overoptimisation),
    ("diverse", "Diverse preferences", _diverse),
    ("reward-model", "Reward model against the Bayes optimum", _reward_model),
    ("reward-levers", "Reward-model levers", _levers),
    ("samples", "Samples side by side", _samples),
)
"""(id, heading, body) of each section in page order; ``body`` gives the HTML between the ``<h2>`` and
``</section>``, or None when ``results.json`` has nothing for it. Only sections with a body are numbered."""


def findings(h: Html, res: dict) -> list[str]:
    """Every sentence of the report that states a result, in page order."""
    parts = (_sft_findings, _frontier_findings, _online_findings, _overopt_findings, _diverse_findings, _rm_findings)
    return [x for part in parts for x in part(h, res)]


def _intervals_note(h: Html, res: dict) -> str:
    n = comparisons(res)
    seeds = res.get("seeds") or []
    over = (
        f"over {len(seeds)} training seeds (a t interval of the per-seed results; beside it, the interval over prompts of the mean over seeds)"
        if len(seeds) > 1
        else "over prompts (paired bootstrap), for one training seed: they say nothing about another seed"
    )
    return (
        f"Each verdict is read from a 95% interval {over}; the report makes {n} such comparisons, so about "
        f"{n / 20:.0f} of them may land on the wrong side by chance."
    )


def build(res: dict, figures: list[str]) -> str:
    h = Html(res)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>preftune report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>preftune: preference tuning on the lists world</h1>")
    parts.append(
        f"<p class='note'>All numbers below are computed from <code>results.json</code>: mean gold reward on {h.num('heldout_prompts', 0)} "
        "held-out prompts (templates never seen in training), ± the 95% normal interval over prompts. "
        f"{html.escape(_intervals_note(h, res))} {_provenance(h, res)} Total time {h.num('seconds.total', 0)} s.</p>"
    )
    bodies = [(sid, title, body) for sid, title, section in SECTIONS if (body := section(h, res, figures)) is not None]
    for n, (sid, title, body) in enumerate(bodies, start=1):
        parts.append(f"<section id='{sid}'><h2>{n}. {title}</h2>{body}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _provenance(h: Html, res: dict) -> str:
    """Which run the numbers come from: command, seeds, machine, date, commit (as results.json records them)."""
    if not res.get("run"):
        return ""
    seeds = res.get("seeds") or []
    seeds_said = ", ".join(h.num(f"seeds.{i}", 0) for i in range(len(seeds))) if seeds else h.num("run.seed", 0)
    return (
        f"Run: {h.code(h.num('run.command'))}, seed{'s' if len(seeds) > 1 else ''} {seeds_said}, on {h.num('run.machine')} "
        f"({h.num('run.threads', 0)} threads), {h.num('run.date')}, preftune {h.num('preftune')} at commit {h.num('run.commit')}."
    )


def markdown(res: dict, source: str) -> str:
    """The README's results: the methods table and every finding, as Markdown, from ``results.json`` alone
    (no methods table for a run that evaluated only pi_SFT, as every run does)."""
    h = Text(res)
    pol = res.get("policies", {})
    rows = [m for m in HEADLINE if m in pol] if len(pol) > 1 else []
    seeded = any("gold_seeds_ci95" in pol[m] for m in rows)
    head = ["policy", "gold reward", "± 95% CI (prompts)", *(["± 95% CI (seeds)"] if seeded else []), "win rate vs SFT", "KL to SFT"]
    head += ["length", "well-formed", "distinct-2", "train s"]
    lines = [f"*From `{source}`.* {_provenance(h, res)}", ""]
    if rows:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        k = f"policies.{m}"
        cells = [TITLES[m], h.num(k + ".gold"), h.num(k + ".gold_ci95")]
        cells += [h.num(k + ".gold_seeds_ci95") if "gold_seeds_ci95" in pol[m] else "–"] * seeded
        cells += [h.num(k + ".win_rate"), h.num(k + ".kl", 2), h.num(k + ".length", 1), h.num(k + ".well_formed"), h.num(k + ".distinct2")]
        cells.append(h.num(k + ".wall_s", 0) if pol[m].get("wall_s") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    said = findings(h, res)
    if said:
        lines += ["", _intervals_note(h, res), "", *(f"- {x}" for x in said)]
    levers = _lever_rows(h, res)
    if levers:
        titles = ["lever", *(title for _, title, _ in LEVER_COLUMNS)]
        lines += [""] * (lines[-1] != "") + ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
        lines += ["| " + " | ".join(r) + " |" for r in levers]
        lines += ["", LEVERS_NOTE]
    return "\n".join(lines) + "\n"


def summary_table(res: dict) -> str:
    """The terminal's table: the same numbers as the report's methods table."""
    pol = res.get("policies", {})
    rows = [m for m in HEADLINE if m in pol]
    head = f"{'policy':<14}{'gold':>8}{'± CI':>8}{'win/SFT':>9}{'KL':>8}{'length':>8}{'train s':>9}"
    lines = [head, "-" * len(head)]
    for m in rows:
        r = pol[m]
        gold, ci, length = (lookup(res, f"policies.{m}.{key}") for key in ("gold", "gold_ci95", "length"))
        lines.append(
            f"{m:<14}{fmt(gold, 3):>8}{fmt(ci, 3):>8}{fmt(r.get('win_rate'), 3):>9}{fmt(r.get('kl'), 3):>8}"
            f"{fmt(length, 1):>8}{fmt(r.get('wall_s'), 0):>9}"
        )
    return "\n".join(lines)


def results_path(run: str | Path) -> Path:
    """A run directory's results.json, or a results file itself."""
    run = Path(run)
    path = run if run.suffix == ".json" else run / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here (run `preftune demo` or `preftune experiment` first)")
    return path


def render(run: str | Path) -> Path:
    path = results_path(run)
    run = path.parent
    res = json.loads(path.read_text())
    from .data import write_atomic
    from .figures import draw  # matplotlib is imported only to draw

    figures = draw(res, run / "figures")
    out = run / "report.html"
    write_atomic(out, build(res, figures))
    return out
