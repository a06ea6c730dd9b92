"""``preftune plot RUN``: a training run's curves, one small plot per metric, into one PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..alarms import raised
from ..config import PlotConfig
from ..report.figures import save_png


def _rows(path: Path) -> list[dict]:
    """The JSON rows of a JSONL file; a line a kill cut in half (or one being written) is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def curves(run: str | Path) -> dict[str, tuple[str, list[float], list[float]]]:
    """Every numeric metric of ``run``: name -> (x label, xs, ys). metrics.jsonl's by step, and
    iterations.jsonl's as ``iteration/NAME`` by iteration (the tags of ``--train.report-to``)."""
    run = Path(run)
    sources = (("metrics.jsonl", "step", ""), ("iterations.jsonl", "iteration", "iteration/"))
    if not any((run / name).exists() for name, _, _ in sources):
        raise FileNotFoundError(f"{run}: no metrics.jsonl or iterations.jsonl (not a training run's directory?)")
    out: dict[str, tuple[str, list[float], list[float]]] = {}
    for name, x, prefix in sources:
        for row in _rows(run / name):
            if not _number(row.get(x)):
                continue
            for key, value in row.items():
                if key != x and not key.startswith("alarm/") and _number(value) and math.isfinite(value):
                    _, xs, ys = out.setdefault(prefix + key, (x, [], []))
                    xs.append(row[x])
                    ys.append(value)
    return out


def alarm_steps(run: str | Path) -> list[tuple[int, str]]:
    """(step, rule) of every alarm the run raised (``alarm/NAME`` in metrics.jsonl, :mod:`preftune.alarms`)."""
    return raised(_rows(Path(run) / "metrics.jsonl"))


def plot(cfg: PlotConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = curves(cfg.run)
    if not found:
        raise ValueError(f"{cfg.run}: no numeric metrics to draw")
    names = [m.strip() for m in cfg.metrics.split(",") if m.strip()] or list(found)
    missing = [m for m in names if m not in found]
    if missing:
        raise ValueError(f"{cfg.run} has no metric {', '.join(map(repr, missing))}; it has: {', '.join(found)}")
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    alarms = alarm_steps(cfg.run)
    for ax, name in zip(axes.flat, names):
        x, xs, ys = found[name]
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3, lw=1.2)
        for step in sorted({t for t, _ in alarms}) if x == "step" else []:  # each alarm, where it fired
            ax.axvline(step, color="#c44e52", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if alarms:
        fig.suptitle("alarms (dashed): " + ", ".join(f"{rule} at step {t}" for t, rule in alarms), fontsize=9, color="#c44e52")
    fig.tight_layout()
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "curves.png"
    save_png(fig, out, dpi=100)  # makes its directory
    plt.close(fig)
    print(f"wrote {out}")
    return out
