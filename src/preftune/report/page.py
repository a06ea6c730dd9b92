"""``report.html``: the page around the sections, written with its figures (``preftune report RUN``)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..atomic import write_atomic
from .figures import draw  # matplotlib itself is imported only to draw
from .findings import intervals_note, provenance
from .results import results_path
from .sections import SECTIONS
from .writers import Html

CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}td.text{text-align:left;font-family:monospace;white-space:pre-wrap}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}.note{color:#555;font-size:13px}
section{margin-top:2em}
"""


def build(res: dict, figures: list[str]) -> str:
    h = Html(res)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>preftune report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>preftune: preference tuning on the lists world</h1>")
    parts.append(
        f"<p class='note'>All numbers below are computed from <code>results.json</code>: mean gold reward on {h.num('heldout_prompts', 0)} "
        "held-out prompts (templates never seen in training), ± the 95% normal interval over prompts. "
        f"{html.escape(intervals_note(h, res))} {provenance(h, res)} Total time {h.num('seconds.total', 0)} s.</p>"
    )
    bodies = [(sid, title, body) for sid, title, section in SECTIONS if (body := section(h, res, figures)) is not None]
    for n, (sid, title, body) in enumerate(bodies, start=1):
        parts.append(f"<section id='{sid}'><h2>{n}. {title}</h2>{body}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render(run: str | Path) -> Path:
    """Write ``report.html`` and its figures beside a run's ``results.json``; the page's path."""
    path = results_path(run)
    run = path.parent
    res = json.loads(path.read_text())
    figures = draw(res, run / "figures")
    out = run / "report.html"
    write_atomic(out, build(res, figures))
    return out
