"""The report's figures: one function per figure, each drawn from ``results.json`` alone."""

from __future__ import annotations

import io
from pathlib import Path

from ..atomic import write_atomic
from .results import TITLES, MissingResult, ordered


def _reference_lines(ax, pol: dict) -> None:
    """SFT and the demonstrator as dashed horizontal lines at their gold reward."""
    for ref, color in (("sft", "grey"), ("demonstrator", "black")):
        if ref in pol:
            ax.axhline(pol[ref]["gold"], ls="--", lw=1, color=color, label=TITLES[ref])


def _plot_frontier(plt, res: dict):
    if "frontier" not in res:
        return None
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
    _reference_lines(ax, res.get("policies", {}))
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("KL(π || π_SFT), nats per completion (log scale above 1)")
    ax.set_ylabel("mean gold reward (held-out prompts)")
    ax.set_title("Reward–KL frontier")
    ax.legend(fontsize=8)
    return fig


def _plot_overoptimisation(plt, res: dict):
    if "overoptimisation" not in res:
        return None
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
    return fig


def _plot_methods(plt, res: dict):
    pol = res.get("policies", {})
    rows = ordered(pol)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.bar(range(len(rows)), [pol[m]["gold"] for m in rows], yerr=[pol[m]["gold_ci95"] for m in rows], capsize=3, color="#4c72b0")
    _reference_lines(ax, pol)
    ax.set_xticks(range(len(rows)), rows, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mean gold reward")
    ax.legend(fontsize=8)
    return fig


COLLAPSE_PANELS = (
    ("sample/gold", "gold of its samples"),
    ("logratio/chosen", "log π/π_ref: chosen (—), rejected (- -)"),
    ("margin", "margin (held-out pairs)"),
    ("sample/kl", "KL to pi_SFT (log scale)"),
    ("sample/length", "sample length"),
    ("sample/eos_rate", "share of samples that end"),
)


def _values(rows: list[dict], key: str) -> list[float]:
    """``key`` of each row, NaN (a gap in the line) where it is missing (a reference-free loss has no log-ratios)."""
    return [float("nan") if r.get(key) is None else r[key] for r in rows]


def _plot_collapse(plt, res: dict):
    """Every DPO-family run of one name that went wrong (the first such name), its monitors along the
    run, one line per seed, a cross at each seed's first alarm."""
    runs = [r for r in res.get("alarms", {}).get("runs", []) if r.get("monitors")]
    wrong = next((r["name"] for r in runs if r["went_wrong"]), None)
    if wrong is None:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.4))
    for i, r in enumerate(x for x in runs if x["name"] == wrong):
        steps = [m["step"] for m in r["monitors"]]
        label = f"seed {r['seed']}" if "seed" in r else None
        for ax, (key, what) in zip(axes.flat, COLLAPSE_PANELS):
            line = ax.plot(steps, _values(r["monitors"], key), lw=1.2, label=label, color=f"C{i}")[0]
            if key == "logratio/chosen":
                ax.plot(steps, _values(r["monitors"], "logratio/rejected"), lw=1.0, ls="--", color=line.get_color())
            if r["alarm_step"] in steps:
                j = steps.index(r["alarm_step"])
                ax.plot([steps[j]], _values([r["monitors"][j]], key), marker="x", ms=7, color=line.get_color())
            ax.set_title(what, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0][0].legend(fontsize=7)
    axes[1][0].set_yscale("symlog", linthresh=1.0)
    fig.suptitle(f"{wrong}: monitors at each evaluation (x: the first alarm)", fontsize=10)
    return fig


PLOTS = (
    ("frontier", _plot_frontier),
    ("overoptimisation", _plot_overoptimisation),
    ("methods", _plot_methods),
    ("collapse", _plot_collapse),
)


def draw(res: dict, figdir: Path) -> list[str]:
    """Draw and save ``figdir/NAME.png`` for each of ``PLOTS`` that ``res`` has data for; the names drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, draw in PLOTS:
        try:
            fig = draw(plt, res)
        except KeyError as e:  # a results file without a key it reads: one line, as results.lookup
            plt.close("all")
            raise MissingResult(
                f"the {name} figure found no {e.args[0]!r} in the results (written by another preftune version? run the experiment again)"
            ) from None
        if fig is None:
            continue
        fig.tight_layout()
        save_png(fig, figdir / f"{name}.png", dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def save_png(fig, path: Path, dpi: int) -> None:
    """``fig`` as a PNG at ``path``, written whole or not at all (:func:`preftune.atomic.write_atomic`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())
