"""Evaluation on the built-in world: gold reward with a 95% confidence interval, length, diversity.

A confidence interval is the normal approximation ``mean ± 1.96·sd/sqrt(n)`` over prompts.
distinct-n is the number of distinct n-grams (over whitespace/comma-split words) divided by the
number of n-grams across all completions of the set.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

from .rollout import Sample
from .world import lists


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        words = t.replace(",", " ,").replace(".", " .").split()
        for i in range(len(words) - n + 1):
            grams.add(tuple(words[i : i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def summarize(prompts: Sequence[str], completions: Sequence[str], ended: Sequence[bool], lengths: Sequence[int]) -> dict[str, float]:
    """The world's metrics for one set of completions (one per prompt)."""
    rewards = [lists.gold_reward(p, c, e) for p, c, e in zip(prompts, completions, ended)]
    mean, ci = mean_ci(rewards)
    return {
        "gold": mean,
        "gold_ci95": ci,
        "length": statistics.fmean(lengths),
        "eos_rate": statistics.fmean(float(e) for e in ended),
        "well_formed": statistics.fmean(float(lists.is_well_formed(c)) for c in completions),
        "distinct1": distinct_n(completions, 1),
        "distinct2": distinct_n(completions, 2),
        "n": len(rewards),
    }


def evaluate_samples(samples: Sequence[Sample]) -> dict[str, float]:
    return summarize(
        [s.prompt for s in samples], [s.completion for s in samples], [s.ended for s in samples], [len(s.completion_ids) for s in samples]
    )


def evaluate_demonstrator(prompts: Sequence[str], tokenizer, seed: int = 0) -> dict[str, float]:
    """The noisy demonstrator's metrics on the same prompts (its answers always end)."""
    rng = random.Random(f"demonstrator-eval-{seed}")
    demo = lists.Demonstrator()
    answers = [demo.answer(p, rng) for p in prompts]
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
    return summarize(prompts, answers, [True] * len(answers), lengths)


COLUMNS = (
    ("gold", "gold reward"),
    ("gold_ci95", "± 95% CI"),
    ("length", "length"),
    ("eos_rate", "EOS"),
    ("well_formed", "well-formed"),
    ("distinct1", "distinct-1"),
    ("distinct2", "distinct-2"),
)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per policy; same numbers as the JSON."""
    name_w = max(6, *(len(k) for k in rows))
    head = f"{'policy':<{name_w}}  " + "  ".join(f"{title:>11}" for _, title in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{m[key]:>11.3f}" for key, _ in COLUMNS))
    return "\n".join(lines)
