"""``report.html`` and its PNG figures from a run's ``results.json`` (``preftune report RUN_DIR``).

Nothing in the report is typed in by hand: every number is a ``<span class="num" data-key=...>``
that formats the value at that path of ``results.json`` (a test checks each one against the
file), and every sentence that states a result chooses its words from those values.
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


def lookup(res: dict, key: str) -> Any:
    """The value at a dotted path of results.json (list items by index)."""
    value: Any = res
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def fmt(value: Any, digits: int) -> str:
    """A number as the report prints it: ``digits`` decimals, with a sign when ``digits < 0``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:+.{-digits}f}" if digits < 0 else f"{value:.{digits}f}"


class Html:
    """Builds the page; ``num`` is the only way a number gets in."""

    def __init__(self, res: dict):
        self.res = res

    def num(self, key: str, digits: int = 3) -> str:
        text = fmt(lookup(self.res, key), digits)
        return f'<span class="num" data-key="{html.escape(key)}" data-digits="{digits}">{text}</span>'

    def interval(self, key: str) -> str:
        """``diff (95% CI lo to hi)`` of a paired-bootstrap claim."""
        return f"{self.num(key + '.diff', -3)} (95% CI {self.num(key + '.lo', -3)} to {self.num(key + '.hi', -3)})"


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


def _say(better: bool, yes: str, no: str) -> str:
    return yes if better else no


def _methods(h: Html, res: dict, figures: list[str]) -> str | None:
    pol = res.get("policies", {})
    rows = [m for m in HEADLINE if m in pol]
    if not rows:
        return None
    keys = ("gold", "gold_ci95", "win_rate", "kl", "length", "distinct1", "distinct2", "well_formed")
    titles = (
        "policy",
        "gold reward",
        "± 95% CI",
        "win rate vs SFT",
        "KL to SFT",
        "length",
        "distinct-1",
        "distinct-2",
        "well-formed",
        "train s",
    )
    cells = [_row(TITLES[m], *(h.num(f"policies.{m}.{k}", 3) for k in keys), h.num(f"policies.{m}.wall_s", 0)) for m in rows]
    table = _table(_head(*titles), cells)
    note = (
        "<p class='note'>KL is the Monte Carlo estimate over each policy's own samples; best-of-n's is the analytic "
        "log n − (n−1)/n; train s is the wall time of the stage that made the policy.</p>"
    )
    figure = (
        [_figure("methods", "Mean gold reward per method, with SFT and the demonstrator as dashed lines")] if "methods" in figures else []
    )
    return "\n".join([table, note, *figure]) + "\n"


def _vs_sft(h: Html, res: dict, figures: list[str]) -> str | None:
    c = res.get("claims", {})
    if "sft_vs_demonstrator" not in c:
        return None
    sft_below = c["sft_vs_demonstrator"]["hi"] < 0
    text = (
        f"SFT {_say(sft_below, 'stays below', 'does not stay below')} the demonstrator it imitates: {h.interval('claims.sft_vs_demonstrator')}. "
        f"Preference-tuned policies that beat the demonstrator with a bootstrap interval above zero: {h.num('claims.beat_demonstrator.count', 0)} "
        f"of {h.num('claims.beat_demonstrator.of', 0)} "
        f"({html.escape(', '.join(c['beat_demonstrator']['methods']) or 'none')})."
    )
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
    best = res.get("claims", {}).get("frontier_best", {})
    points = "; ".join(
        f"{m.upper()} {h.num(f'claims.frontier_best.{m}.gold')} at KL {h.num(f'claims.frontier_best.{m}.kl', 2)} (β {h.num(f'claims.frontier_best.{m}.beta', 2)})"
        for m in best
    )
    summary = [f"<p>Best point per method: {points}.</p>"] if best else []
    return _block(*figure, _table(_head("method", "β", "gold", "± CI", "KL"), rows), *summary)


def _offline_online(h: Html, res: dict, figures: list[str]) -> str | None:
    c = res.get("claims", {})
    if "dpo_vs_ppo" not in c:
        return None
    lines = []
    for other in ("ppo", "rloo"):
        d = c[f"dpo_vs_{other}"]
        verdict = "beats" if d["lo"] > 0 else "trails" if d["hi"] < 0 else "is indistinguishable from"
        lines.append(
            f"DPO {verdict} {other.upper()} at their default β: {h.interval(f'claims.dpo_vs_{other}')} in gold reward, "
            f"at KL {h.num('policies.dpo.kl', 2)} against {h.num(f'policies.{other}.kl', 2)}. "
        )
    lines.append(
        "DPO learns from the fixed comparisons of pi_SFT's samples; the RL methods sample their own completions and are "
        "scored by the reward model trained on those comparisons.</p>"
    )
    return "\n".join(["<p>", *lines])


def _overoptimisation(h: Html, res: dict, figures: list[str]) -> str | None:
    if "overoptimisation" not in res:
        return None
    o = res["overoptimisation"]
    intro = (
        f"<p>{o['algo'].upper()} against a reward model trained on only {h.num('overoptimisation.comparisons', 0)} rankings "
        f"(held-out accuracy {h.num('overoptimisation.reward_model.accuracy')}, Bayes-optimal {h.num('overoptimisation.reward_model.bayes_optimal_accuracy')}, "
        f"Spearman with gold {h.num('overoptimisation.reward_model.spearman_gold')}), {h.num('overoptimisation.iterations', 0)} iterations.</p><ul>"
    )
    items = []
    for i, run in enumerate(o["runs"]):
        k = f"overoptimisation.runs.{i}.summary"
        verdict = "over-optimises: the proxy rises while gold falls" if run["summary"]["overoptimised"] else "does not over-optimise"
        items.append(
            f"<li>β = {h.num(f'overoptimisation.runs.{i}.beta', 2)} {verdict}. Proxy {h.num(k + '.proxy_start')} → {h.num(k + '.proxy_end')}, "
            f"gold {h.num(k + '.gold_start')} → {h.num(k + '.gold_end')} (peak {h.num(k + '.gold_peak')} at KL {h.num(k + '.kl_peak', 2)}), "
            f"final KL {h.num(k + '.kl_end', 2)}.</li>"
        )
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
    d = res.get("claims", {}).get("diverse", {})
    if not d:
        return _block(intro, table)
    claim = (
        f"<p>Conditioning on the group {_say(d['minority_gain'] > 0, 'raises', 'does not raise')} the minority's utility: "
        f"{h.num('claims.diverse.pooled_minority')} pooled against {h.num('claims.diverse.conditioned_minority')} conditioned "
        f"(change {h.num('claims.diverse.minority_gain', -3)}); the majority gets {h.num('claims.diverse.pooled_majority')} "
        f"and {h.num('claims.diverse.conditioned_majority')}.</p>"
    )
    return _block(intro, table, claim)


def _reward_model(h: Html, res: dict, figures: list[str]) -> str | None:
    if "reward_model" not in res:
        return None
    models = [("all rankings", "reward_model")] + [("few rankings", "overoptimisation.reward_model")] * ("overoptimisation" in res)
    keys = ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")
    rows = [_row(label, *(h.num(f"{k}.{key}") for key in keys)) for label, k in models]
    note = (
        "<p class='note'>The Bayes-optimal accuracy is E[max(p, 1−p)] of the simulated annotators' own "
        "label probabilities on the same held-out pairs: no model can do better on those labels.</p>"
    )
    head = _head("reward model", "held-out accuracy", "Bayes-optimal", "ratio", "Spearman with gold")
    return "\n".join(["<table>", head, *rows, "</table>" + note])


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
    ("samples", "Samples side by side", _samples),
)
"""(id, heading, body) of each section in page order; ``body`` gives the HTML between the ``<h2>`` and
``</section>``, or None when ``results.json`` has nothing for it. Only sections with a body are numbered."""


def build(res: dict, figures: list[str]) -> str:
    h = Html(res)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>preftune report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>preftune: preference tuning on the lists world</h1>")
    parts.append(
        f"<p class='note'>All numbers below are computed from <code>results.json</code>: mean gold reward on {h.num('heldout_prompts', 0)} "
        "held-out prompts (templates never seen in training), ± the 95% normal interval over prompts; differences between two policies "
        "are paired over prompts with a 95% bootstrap interval. One training seed per method (a seed sweep does not fit in the demo's "
        f"budget). Total time {h.num('seconds.total', 0)} s.</p>"
    )
    bodies = [(sid, title, body) for sid, title, section in SECTIONS if (body := section(h, res, figures)) is not None]
    for n, (sid, title, body) in enumerate(bodies, start=1):
        parts.append(f"<section id='{sid}'><h2>{n}. {title}</h2>{body}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_table(res: dict) -> str:
    """The terminal's table: the same numbers as the report's methods table."""
    pol = res.get("policies", {})
    rows = [m for m in HEADLINE if m in pol]
    head = f"{'policy':<14}{'gold':>8}{'± CI':>8}{'win/SFT':>9}{'KL':>8}{'length':>8}{'train s':>9}"
    lines = [head, "-" * len(head)]
    for m in rows:
        r = pol[m]
        lines.append(
            f"{m:<14}{fmt(r['gold'], 3):>8}{fmt(r['gold_ci95'], 3):>8}{fmt(r.get('win_rate'), 3):>9}{fmt(r.get('kl'), 3):>8}"
            f"{fmt(r['length'], 1):>8}{fmt(r.get('wall_s'), 0):>9}"
        )
    return "\n".join(lines)


def render(run: str | Path) -> Path:
    run = Path(run)
    path = run / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here (run `preftune demo` or `preftune experiment` first)")
    res = json.loads(path.read_text())
    from .figures import draw  # matplotlib is imported only to draw

    figures = draw(res, run / "figures")
    out = run / "report.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(build(res, figures))
    tmp.replace(out)
    return out
