"""The same results as text: the README's Markdown (``preftune report RUN --markdown``) and the
terminal's table."""

from __future__ import annotations

from .findings import ALARM_COLUMNS, ALARMS_NOTE, LEVER_COLUMNS, LEVERS_NOTE, alarm_rows, findings, intervals_note, lever_rows, provenance
from .results import fmt, lookup, ordered, title
from .rounds import ROUNDS_COLUMNS, ROUNDS_NOTE, rounds_rows
from .writers import Text


def markdown(res: dict, source: str, samples: int = 0) -> str:
    """The README's results: the methods table and every finding, as Markdown, from ``results.json`` alone
    (no methods table for a run that evaluated only pi_SFT, as every run does); with ``samples``, each
    policy's completion for the first held-out prompts, one table per prompt."""
    h = Text(res)
    pol = res.get("policies", {})
    rows = ordered(pol) if len(pol) > 1 else []
    seeded = any("gold_seeds_ci95" in pol[m] for m in rows)
    head = ["policy", "gold reward", "± 95% CI (prompts)", *(["± 95% CI (seeds)"] if seeded else []), "win rate vs SFT", "KL to SFT"]
    watched = any("alarms" in pol[m] for m in rows)
    head += ["length", "well-formed", "distinct-2", "train s", *(["alarms raised"] * watched)]
    lines = [f"*From `{source}`.* {provenance(h, res)}", ""]
    if rows:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        k = f"policies.{m}"
        cells = [title(res, m), h.num(k + ".gold"), h.num(k + ".gold_ci95")]
        cells += [h.num(k + ".gold_seeds_ci95") if "gold_seeds_ci95" in pol[m] else "–"] * seeded
        cells += [h.num(k + ".win_rate"), h.num(k + ".kl", 2), h.num(k + ".length", 1), h.num(k + ".well_formed"), h.num(k + ".distinct2")]
        cells.append(h.num(k + ".wall_s", 0) if pol[m].get("wall_s") is not None else "–")
        cells += [h.num(k + ".alarms") if "alarms" in pol[m] else "–"] * watched
        lines.append("| " + " | ".join(cells) + " |")
    stages = [k for k in ("pretrain", "sft", "sample", "rm") if k in res.get("seconds", {})]  # the shared ones
    if stages and "total" in res.get("seconds", {}):
        said_stages = ", ".join(f"{k} {h.num(f'seconds.{k}', 0)} s" for k in stages)
        lines += ["", f"Wall time {h.num('seconds.total', 0)} s in all; shared stages: {said_stages} (policies: the train s column)."]
    said = findings(h, res)
    if said:
        lines += ["", intervals_note(h, res), "", *(f"- {x}" for x in said)]
    for titles, rows, note in (
        (["lever", *(t for _, t, _ in LEVER_COLUMNS)], lever_rows(h, res), LEVERS_NOTE),
        (["run", *(t for _, t in ALARM_COLUMNS)], alarm_rows(h, res), ALARMS_NOTE),
        (list(ROUNDS_COLUMNS), rounds_rows(h, res), ROUNDS_NOTE),
    ):
        if rows:  # a table of its own, after a blank line, with its note under it
            lines += [""] * (lines[-1] != "") + ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines += ["", note]
    for i, s in enumerate(res.get("samples", [])[:samples]):
        lines += ["", f"Samples for held-out prompt {i + 1}, {_cell(_request(s['prompt']))}:", "", "| policy | completion |", "|---|---|"]
        lines += [f"| {title(res, m)} | {_cell(h.num(f'samples.{i}.completions.{m}'))} |" for m in ordered(s["completions"])]
    return "\n".join(lines) + "\n"


def _request(prompt: str) -> str:
    """The user's last message in a prompt rendered by ChatML or the ``Human: ... Assistant:`` template
    (the two the README's runs use); any other prompt as it is."""
    chatml = prompt.rsplit("<|im_start|>user\n", 1)
    if len(chatml) == 2:
        return chatml[1].split("<|im_end|>", 1)[0]
    return prompt.rsplit("Human: ", 1)[-1].removesuffix("\n\nAssistant:")


def _cell(text: str) -> str:
    """A completion in one Markdown table cell: its newlines and pipes shown, not acted on."""
    return "`" + text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "`" if text else "(empty)"


def summary_table(res: dict) -> str:
    """The terminal's table: the same numbers as the report's methods table."""
    pol = res.get("policies", {})
    rows = ordered(pol)
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
