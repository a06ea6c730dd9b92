"""The ``iterate`` experiment in the report and the README: each arm's gold after every round, its
reward models' gold pair accuracy, and the verdicts against the one-round baseline and between
the arms it names (``contrasts``), each read from an interval over seeds."""

from __future__ import annotations

from .results import compare, grouped
from .writers import Html

ROUNDS_COLUMNS = (
    "arm",
    "rounds × pairs",
    "RL iterations, each round",
    "pooling",
    "selection",
    "reference",
    "gold after each round (± 95% CI over seeds)",
    "against the baseline",
    "labelled pairs' Bayes accuracy, each round",
    "reward model's gold pair accuracy, each round",
    "KL to SFT",
    "rounds with an alarm",
)
ROUNDS_NOTE = (
    "Every arm spends the same labels, split evenly over its rounds; each round trains a reward model from pi_SFT and "
    "a policy from the last round's policy. Gold is each round's policy's on the held-out prompts, a mean over seeds; "
    "against the baseline: the difference in final gold with its 95% t interval over seeds. The labelled pairs' Bayes accuracy is "
    "the best any model could reach on the round's labels (one half for a tie, whose label is a coin flip): how much the "
    "labels can teach. The reward model's gold pair accuracy is on fresh pi_SFT samples of held-out prompts, the same "
    "pairs for every arm. Alarms: the runs' own "
    "(--alarm.* defaults), counted over seeds and rounds."
)


def _arms(res: dict) -> dict:
    return res.get("iterate", {}).get("arms", {})


def rounds_rows(h: Html, res: dict) -> list[list[str]]:
    """One row per arm (cells as :class:`Html` or :class:`Text` renders them)."""
    rows, baseline = [], res.get("iterate", {}).get("baseline")
    for name, arm in _arms(res).items():
        k = f"iterate.arms.{name}"
        n = len(arm["by_round"])
        last = f"{k}.by_round.{n - 1}"  # the arm's final round
        claim = f"claims.iterate-{name}_vs_baseline"
        if name == baseline:
            against = "(baseline)"
        else:
            c = res["claims"][f"iterate-{name}_vs_baseline"]
            verdict = compare(c, "better", "worse", "no difference")
            against = (
                f"{h.num(_ci(c, claim) + '.diff', -3)} [{h.num(_ci(c, claim) + '.lo', -3)}, {h.num(_ci(c, claim) + '.hi', -3)}]: {verdict}"
            )
        alarmed = sum(r.get("alarmed_seeds", 0) for r in arm["by_round"])
        rows.append(
            [
                h.esc(name),
                f"{h.num(k + '.rounds', 0)} × {h.num(k + '.per_round', 0)}",
                h.num(k + ".rl_iterations", 0) if arm["method"] == "rl" else "–",
                h.esc(arm["pooling"]),
                h.esc(arm["selection"]),
                h.esc(arm["reference"]),
                " → ".join(_gold(h, f"{k}.by_round.{i}", r) for i, r in enumerate(arm["by_round"])),
                against,
                " → ".join(h.num(f"{k}.by_round.{i}.pairs_bayes_accuracy") for i in range(n)),
                " → ".join(h.num(f"{k}.by_round.{i}.rm_gold_pair_accuracy") for i in range(n)),
                h.num(last + ".kl", 2),
                h.esc(str(alarmed)),
            ]
        )
    return rows


def _gold(h: Html, key: str, row: dict) -> str:
    """A round's gold, with its interval over seeds when there are several."""
    return h.num(key + ".gold") + (f" ± {h.num(key + '.gold_seeds_ci95')}" if row.get("gold_seeds_ci95") is not None else "")


def _ci(claim: dict, key: str) -> str:
    """The key of the interval a verdict is read from: over seeds when there are seeds."""
    return key + ".seeds" if "seeds" in claim else key


def rounds_findings(h: Html, res: dict) -> list[str]:
    """The verdicts: each arm against the baseline, then each named contrast."""
    it = res.get("iterate")
    if not it:
        return []
    c, baseline = res["claims"], it["baseline"]
    others = [a for a in _arms(res) if a != baseline and f"iterate-{a}_vs_baseline" in c]
    said = grouped({a: c[f"iterate-{a}_vs_baseline"] for a in others}, "it")
    out = [
        f"At a budget of {h.num('iterate.budget', 0)} labelled pairs, against the baseline ({h.esc(baseline)}, final gold "
        f"{h.num(f'iterate.arms.{baseline}.by_round.0.gold')}): {h.esc(said)}."
    ]
    for key in c:
        if key.startswith("iterate-") and "_vs_iterate-" in key:
            a, b = key[len("iterate-") :].split("_vs_iterate-")
            verdict = compare(c[key], "beats", "falls below", "is indistinguishable from")
            out.append(f"{h.esc(a)} {verdict} {h.esc(b)}: {h.interval('claims.' + key)} in final gold.")
    return out
