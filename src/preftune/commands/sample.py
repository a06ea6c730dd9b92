"""``preftune sample`` and ``preftune annotate``: K completions per prompt, then labels on them."""

from __future__ import annotations

import math
import random
from pathlib import Path

from .. import distributed
from ..atomic import write_jsonl
from ..config import AnnotateConfig, SampleConfig
from ..data import SCALE_STRENGTHS, DataError, read_rows
from ..models import load_policy
from ..rollout import sample_shared
from ..world import lists
from .common import prepare, prompts_from


def sample_sets(cfg: SampleConfig) -> Path:
    """K completions per prompt, batched with a KV cache, as JSONL ready for labelling."""
    prepare(cfg)
    model, tokenizer = load_policy(cfg.model)
    prompts = prompts_from(cfg.prompts, cfg.limit, tokenizer)
    samples = sample_shared(model, tokenizer, prompts, cfg.gen, n=cfg.k, progress=True)
    rows = []
    for i, prompt in enumerate(prompts):
        group = samples[i * cfg.k : (i + 1) * cfg.k]
        rows.append({"prompt": prompt, "completions": [s.completion for s in group], "ended": [s.ended for s in group]})
    if distributed.is_main():
        write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} sets of {cfg.k} completions to {cfg.out}")
    return Path(cfg.out)


# A simulated annotator's certainty max(p, 1-p) at which it says "much better", "better",
# "slightly better", else "negligibly better" (strengths: data.SCALE_STRENGTHS).
CERTAINTY_THRESHOLDS = (0.95, 0.8, 0.6, 0.0)


def strength_of(p: float) -> float:
    """A simulated annotator's 8-point strength from its own certainty ``max(p, 1-p)``."""
    certainty = max(p, 1.0 - p)
    return next(s for threshold, s in zip(CERTAINTY_THRESHOLDS, SCALE_STRENGTHS) if certainty >= threshold)


def annotators(tau: float, minority: float) -> list[tuple[lists.Annotator, float]]:
    """The simulated annotator groups and the share of labels each gives."""
    return [(lists.Annotator(tau, 0, "majority"), 1.0 - minority), (lists.Annotator(tau, 2, "minority"), minority)]


def plackett_luce_order(annotator: lists.Annotator, prompt: str, completions: list, ended: list, rng: random.Random) -> list[int]:
    """A ranking drawn from Plackett–Luce: the best with P ∝ exp(u / tau), then the best of the rest, ..."""
    left, order = list(range(len(completions))), []
    while left:
        u = [annotator.utility(prompt, completions[i], ended[i]) / annotator.tau for i in left]
        top = max(u)
        pick = rng.choices(left, weights=[math.exp(x - top) for x in u])[0]
        order.append(pick)
        left.remove(pick)
    return order


def label_pair(
    annotator: lists.Annotator, prompt: str, a: str, b: str, a_ended: bool, b_ended: bool, rng: random.Random, extra: dict
) -> dict:
    """One pair labelled by a simulated annotator, as a comparison row (``extra``'s fields last): a
    wins with its Bradley–Terry probability; the strength is the annotator's certainty."""
    p = annotator.p_prefers_a(prompt, a, b, a_ended, b_ended)
    (win, win_ended), (lose, lose_ended) = ((a, a_ended), (b, b_ended)) if rng.random() < p else ((b, b_ended), (a, a_ended))
    row = {"prompt": prompt, "chosen": win, "rejected": lose, "strength": strength_of(p)}
    return {**row, "chosen_ended": win_ended, "rejected_ended": lose_ended, **extra}


def annotate(cfg: AnnotateConfig) -> Path:
    """Label sampled sets with simulated Bradley–Terry annotators (``annotator``/``group`` recorded).

    A completion repeated in a set is labelled once (its repeats would be a ranking or a pair of
    identical texts, which ``load_comparisons`` refuses)."""
    if not cfg.simulated:
        raise ValueError("only --simulated labelling runs offline; people label with the web app (`preftune label serve`)")
    rng = random.Random(f"annotate-{cfg.seed}")
    pool = annotators(cfg.tau, cfg.minority)
    rows, repeats, skipped = [], 0, 0
    for where, row in read_rows(cfg.samples):
        prompt, comps = row.get("prompt"), row.get("completions")
        if not isinstance(prompt, str) or not isinstance(comps, list) or len(comps) < 2 or not all(isinstance(c, str) for c in comps):
            raise DataError(
                cfg.samples, where, "expected {'prompt', 'completions': [at least 2 strings]} (the output of `preftune sample`)"
            )
        ended = row.get("ended") or [True] * len(comps)
        if not isinstance(ended, list) or len(ended) != len(comps) or not all(isinstance(e, bool) for e in ended):
            raise DataError(cfg.samples, where, f"'ended' must be a list of {len(comps)} booleans, one per completion")
        distinct = list(dict.fromkeys(zip(comps, ended)))  # a repeated completion carries no preference: labelled once
        repeats += len(comps) - len(distinct)
        if len(distinct) < 2:
            skipped += 1
            continue
        comps, ended = [c for c, _ in distinct], [e for _, e in distinct]
        ann = rng.choices([a for a, _ in pool], weights=[w for _, w in pool])[0]
        labels = {"annotator": f"sim-{ann.group}-tau{cfg.tau:g}", "group": ann.group}
        try:
            lists.parse_request(prompt)
        except ValueError as e:
            raise DataError(cfg.samples, where, str(e)) from None
        if cfg.format == "rankings":
            order = plackett_luce_order(ann, prompt, comps, ended, rng)
            rows.append({"prompt": prompt, "completions": comps, "ranking": order, "ended": ended, **labels})
            continue
        for a in range(0, len(comps) - 1, 2):
            rows.append(label_pair(ann, prompt, comps[a], comps[a + 1], ended[a], ended[a + 1], rng, labels))
    if repeats:
        print(f"note: {repeats} repeated completions labelled once; {skipped} sets had fewer than 2 distinct completions and were left out")
    write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} {cfg.format} to {cfg.out}")
    return Path(cfg.out)
