"""``preftune report RUN_DIR``: ``report.html`` and its PNG figures from ``results.json``.

Nothing in the report is typed in by hand: every number is a ``<span class="num" data-key=...>``
that formats the value at that path of ``results.json`` (a test checks each one against the
file), and every sentence that states a result chooses its words from those values.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import doc

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
}
HEADLINE = tuple(TITLES)


@dataclass(frozen=True)
class ReportCommand:
    run: str = doc("runs/demo", "a run directory holding results.json (from `preftune demo` or `preftune experiment`)", positional=True)


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


def _figure(name: str, caption: str) -> str:
    return f'<figure><img src="figures/{name}.png" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _plots(res: dict, figdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    made = []
    pol = res.get("policies", {})
    if "frontier" in res:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method, pts in res["frontier"].items():
            pts = sorted(pts, key=lambda r: r["kl"])
            ax.errorbar(
                [r["kl"] for r in pts],
                [r["gold"] for r in pts],
                yerr=[r["gold_ci95"] for r in pts],
                marker="o",
                capsize=3,
                label=method.upper(),
            )
            for r in pts:
                ax.annotate(f"β={r['beta']:g}", (r["kl"], r["gold"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for ref in ("sft", "demonstrator"):
            if ref in pol:
                ax.axhline(pol[ref]["gold"], ls="--", lw=1, color="grey" if ref == "sft" else "black", label=TITLES[ref])
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(π || π_SFT), nats per completion (log scale above 1)")
        ax.set_ylabel("mean gold reward (held-out prompts)")
        ax.set_title("Reward–KL frontier")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(figdir / "frontier.png", dpi=110)
        plt.close(fig)
        made.append("frontier")
    if "overoptimisation" in res:
        runs = res["overoptimisation"]["runs"]
        fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.8), squeeze=False)
        for ax, run in zip(axes[0], runs):
            c = run["curve"]
            kl, it = [r["kl"] for r in c], [r["iteration"] for r in c]  # KL need not grow monotonically: points, darker = later
            ax.scatter(kl, [r["proxy"] for r in c], c=it, cmap="Blues", vmin=-len(c) / 3, marker="o", s=18, label="proxy (reward model)")
            ax.scatter(kl, [r["gold"] for r in c], c=it, cmap="Oranges", vmin=-len(c) / 3, marker="s", s=18, label="gold")
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel("KL(π || π_SFT) of the rollouts, nats")
            ax.set_title(f"β = {run['beta']:g}")
            ax.legend(fontsize=8)
        axes[0][0].set_ylabel("mean reward of the iteration's rollouts")
        fig.tight_layout()
        fig.savefig(figdir / "overoptimisation.png", dpi=110)
        plt.close(fig)
        made.append("overoptimisation")
    rows = [m for m in HEADLINE if m in pol]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        ax.bar(range(len(rows)), [pol[m]["gold"] for m in rows], yerr=[pol[m]["gold_ci95"] for m in rows], capsize=3, color="#4c72b0")
        for ref, color in (("sft", "grey"), ("demonstrator", "black")):
            if ref in pol:
                ax.axhline(pol[ref]["gold"], ls="--", lw=1, color=color, label=TITLES[ref])
        ax.set_xticks(range(len(rows)), rows, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("mean gold reward")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(figdir / "methods.png", dpi=110)
        plt.close(fig)
        made.append("methods")
    return made


CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}td.text{text-align:left;font-family:monospace;white-space:pre-wrap}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}.note{color:#555;font-size:13px}
section{margin-top:2em}
"""


def _say(better: bool, yes: str, no: str) -> str:
    return yes if better else no


def build(res: dict, figures: list[str]) -> str:
    h = Html(res)
    pol, claims = res.get("policies", {}), res.get("claims", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>preftune report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>preftune: preference tuning on the lists world</h1>")
    parts.append(
        f"<p class='note'>All numbers below are computed from <code>results.json</code>: mean gold reward on {h.num('heldout_prompts', 0)} "
        "held-out prompts (templates never seen in training), ± the 95% normal interval over prompts; differences between two policies "
        "are paired over prompts with a 95% bootstrap interval. One training seed per method (a seed sweep does not fit in the demo's "
        f"budget). Total time {h.num('seconds.total', 0)} s.</p>"
    )

    # 1 + 4: methods table and preference tuning against SFT and the demonstrator
    rows = [m for m in HEADLINE if m in pol]
    if rows:
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
        parts.append("<section id='methods'><h2>1. Methods</h2><table>" + _head(*titles))
        for m in rows:
            cells = [
                h.num(f"policies.{m}.{k}", 3)
                for k in ("gold", "gold_ci95", "win_rate", "kl", "length", "distinct1", "distinct2", "well_formed")
            ]
            cells.append(h.num(f"policies.{m}.wall_s", 0))
            parts.append(_row(TITLES[m], *cells))
        parts.append("</table>")
        parts.append(
            "<p class='note'>KL is the Monte Carlo estimate over each policy's own samples; best-of-n's is the analytic "
            "log n − (n−1)/n; train s is the wall time of the stage that made the policy.</p>"
        )
        if "methods" in figures:
            parts.append(_figure("methods", "Mean gold reward per method, with SFT and the demonstrator as dashed lines"))
        parts.append("</section>")
    if "sft_vs_demonstrator" in claims:
        c = claims
        sft_below = c["sft_vs_demonstrator"]["hi"] < 0
        parts.append("<section id='vs-sft'><h2>2. Preference tuning against SFT and the demonstrator</h2><p>")
        parts.append(
            f"SFT {_say(sft_below, 'stays below', 'does not stay below')} the demonstrator it imitates: {h.interval('claims.sft_vs_demonstrator')}. "
            f"Preference-tuned policies that beat the demonstrator with a bootstrap interval above zero: {h.num('claims.beat_demonstrator.count', 0)} "
            f"of {h.num('claims.beat_demonstrator.of', 0)} "
            f"({html.escape(', '.join(c['beat_demonstrator']['methods']) or 'none')})."
        )
        parts.append("</p><table>" + _head("method", "− SFT", "− demonstrator"))
        for m in ("best-of-n", "raft", "reinforce", "rloo", "ppo", "dpo", "ipo", "unlikelihood"):
            if f"{m}_vs_sft" in c:
                parts.append(_row(TITLES[m], h.interval(f"claims.{m}_vs_sft"), h.interval(f"claims.{m}_vs_demonstrator")))
        parts.append("</table></section>")

    # 2: frontier, 5: DPO against RLHF
    if "frontier" in res:
        parts.append("<section id='frontier'><h2>3. The reward–KL frontier</h2>")
        if "frontier" in figures:
            parts.append(_figure("frontier", "Gold reward against KL to pi_SFT, several beta per method"))
        parts.append("<table>" + _head("method", "β", "gold", "± CI", "KL"))
        for method, pts in res["frontier"].items():
            for i, _ in enumerate(pts):
                k = f"frontier.{method}.{i}"
                parts.append(_row(method.upper(), h.num(k + ".beta", 2), h.num(k + ".gold"), h.num(k + ".gold_ci95"), h.num(k + ".kl")))
        parts.append("</table>")
        best = claims.get("frontier_best", {})
        if best:
            parts.append(
                "<p>Best point per method: "
                + "; ".join(
                    f"{m.upper()} {h.num(f'claims.frontier_best.{m}.gold')} at KL {h.num(f'claims.frontier_best.{m}.kl', 2)} (β {h.num(f'claims.frontier_best.{m}.beta', 2)})"
                    for m in best
                )
                + ".</p>"
            )
        parts.append("</section>")
    if "dpo_vs_ppo" in claims:
        c = claims
        parts.append("<section id='offline-online'><h2>4. DPO (offline) against RLHF (online)</h2><p>")
        for other in ("ppo", "rloo"):
            d = c[f"dpo_vs_{other}"]
            verdict = "beats" if d["lo"] > 0 else "trails" if d["hi"] < 0 else "is indistinguishable from"
            parts.append(
                f"DPO {verdict} {other.upper()} at their default β: {h.interval(f'claims.dpo_vs_{other}')} in gold reward, "
                f"at KL {h.num('policies.dpo.kl', 2)} against {h.num(f'policies.{other}.kl', 2)}. "
            )
        parts.append(
            "DPO learns from the fixed comparisons of pi_SFT's samples; the RL methods sample their own completions and are "
            "scored by the reward model trained on those comparisons.</p></section>"
        )

    # 3: over-optimisation
    if "overoptimisation" in res:
        o = res["overoptimisation"]
        parts.append("<section id='overoptimisation'><h2>5. Over-optimisation</h2>")
        parts.append(
            f"<p>{o['algo'].upper()} against a reward model trained on only {h.num('overoptimisation.comparisons', 0)} rankings "
            f"(held-out accuracy {h.num('overoptimisation.reward_model.accuracy')}, Bayes-optimal {h.num('overoptimisation.reward_model.bayes_optimal_accuracy')}, "
            f"Spearman with gold {h.num('overoptimisation.reward_model.spearman_gold')}), {h.num('overoptimisation.iterations', 0)} iterations.</p><ul>"
        )
        for i, run in enumerate(o["runs"]):
            k = f"overoptimisation.runs.{i}.summary"
            s = run["summary"]
            verdict = "over-optimises: the proxy rises while gold falls" if s["overoptimised"] else "does not over-optimise"
            parts.append(
                f"<li>β = {h.num(f'overoptimisation.runs.{i}.beta', 2)} {verdict}. Proxy {h.num(k + '.proxy_start')} → {h.num(k + '.proxy_end')}, "
                f"gold {h.num(k + '.gold_start')} → {h.num(k + '.gold_end')} (peak {h.num(k + '.gold_peak')} at KL {h.num(k + '.kl_peak', 2)}), "
                f"final KL {h.num(k + '.kl_end', 2)}.</li>"
            )
        parts.append("</ul>")
        if "overoptimisation" in figures:
            parts.append(
                _figure(
                    "overoptimisation",
                    "Proxy score and gold reward of each iteration's rollouts against their KL to pi_SFT (darker = later iteration)",
                )
            )
        parts.append("</section>")

    # 6: diverse preferences
    if "diverse" in res:
        parts.append("<section id='diverse'><h2>6. Diverse preferences</h2>")
        parts.append(
            f"<p>A share of {h.num('diverse.minority_share', 2)} of the labels come from the group called 'minority', who want k + 2 items; "
            "the rest from the majority, whose utility is the gold reward. DPO on the pooled labels, and DPO with the labeller's group named in the prompt.</p>"
        )
        parts.append("<table>" + _head("policy", "group", "group's utility", "± CI", "items per answer"))
        for i, r in enumerate(res["diverse"]["rows"]):
            k = f"diverse.rows.{i}"
            parts.append(
                _row(html.escape(r["policy"]), r["group"], h.num(k + ".utility"), h.num(k + ".ci95"), h.num(k + ".length_items", 2))
            )
        parts.append("</table>")
        d = claims.get("diverse", {})
        if d:
            gain = d["minority_gain"] > 0
            parts.append(
                f"<p>Conditioning on the group {_say(gain, 'raises', 'does not raise')} the minority's utility: "
                f"{h.num('claims.diverse.pooled_minority')} pooled against {h.num('claims.diverse.conditioned_minority')} conditioned "
                f"(change {h.num('claims.diverse.minority_gain', -3)}); the majority gets {h.num('claims.diverse.pooled_majority')} "
                f"and {h.num('claims.diverse.conditioned_majority')}.</p>"
            )
        parts.append("</section>")

    # 7: reward model
    if "reward_model" in res:
        parts.append("<section id='reward-model'><h2>7. Reward model against the Bayes optimum</h2><table>")
        parts.append(_head("reward model", "held-out accuracy", "Bayes-optimal", "ratio", "Spearman with gold"))
        models = [("all rankings", "reward_model")] + [("few rankings", "overoptimisation.reward_model")] * ("overoptimisation" in res)
        for label, k in models:
            cells = [h.num(f"{k}.{key}") for key in ("accuracy", "bayes_optimal_accuracy", "accuracy_over_bayes", "spearman_gold")]
            parts.append(_row(label, *cells))
        parts.append(
            "</table><p class='note'>The Bayes-optimal accuracy is E[max(p, 1−p)] of the simulated annotators' own "
            "label probabilities on the same held-out pairs: no model can do better on those labels.</p></section>"
        )

    # 8: samples
    if res.get("samples"):
        parts.append("<section id='samples'><h2>8. Samples side by side</h2>")
        for s in res["samples"]:
            parts.append(f"<h3>{html.escape(s['prompt'])}</h3><table>")
            for m, text in s["completions"].items():
                parts.append(f"<tr><td>{html.escape(TITLES.get(m, m))}</td><td class='text'>{html.escape(text)}</td></tr>")
            parts.append("</table>")
        parts.append("</section>")
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
    figures = _plots(res, run / "figures")
    out = run / "report.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(build(res, figures))
    tmp.replace(out)
    return out


def report(cfg: ReportCommand) -> Path:
    out = render(cfg.run)
    res = json.loads((Path(cfg.run) / "results.json").read_text())
    print(summary_table(res))
    print(f"wrote {out}")
    return out
