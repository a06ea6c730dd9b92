"""Evaluation on the built-in world: gold reward with a 95% confidence interval, length, diversity,
KL and win rate against a reference, and a reward model against the gold reward.

A confidence interval is the normal approximation ``mean ± 1.96·sd/sqrt(n)`` over prompts.
distinct-n is the number of distinct n-grams (over whitespace/comma-split words) divided by the
number of n-grams across all completions of the set.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import replace

import torch

from . import distributed
from .config import SamplingConfig, TokenConfig
from .data import Comparison, Ranking, collate, load_prompts
from .logprobs import completion_logps
from .methods.reward import score_samples, score_texts
from .models import load_policy
from .rollout import Sample, sample
from .world import lists


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) over paired items (the same prompts) and its 95% percentile-bootstrap interval
    (resampling prompts with replacement)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    rng = random.Random(f"bootstrap-{seed}")
    n = len(d)
    means = sorted(sum(rng.choices(d, k=n)) / n for _ in range(n_resamples))
    return statistics.fmean(d), means[int(0.025 * n_resamples)], means[int(0.975 * n_resamples) - 1]


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


def demonstrator_samples(prompts: Sequence[str], seed: int = 0, tokenizer=None) -> list[Sample]:
    """The noisy demonstrator's answers to ``prompts`` (they always end). With a tokenizer, each
    carries its ids in that tokenizer plus EOS, so lengths count like a policy's."""
    rng = random.Random(f"demonstrator-eval-{seed}")
    demo = lists.Demonstrator()
    out = [Sample(p, demo.answer(p, rng), (), True, 0.0) for p in prompts]
    if tokenizer is not None:
        eos = (tokenizer.eos_token_id,)
        out = [replace(s, completion_ids=tuple(tokenizer(s.completion, add_special_tokens=False)["input_ids"]) + eos) for s in out]
    return out


def evaluate_demonstrator(prompts: Sequence[str], tokenizer, seed: int = 0) -> dict[str, float]:
    """The noisy demonstrator's metrics on the same prompts."""
    return evaluate_samples(demonstrator_samples(prompts, seed, tokenizer))


def win_rate(samples: Sequence[Sample], reference: Sequence[Sample]) -> dict[str, float]:
    """Share of prompts where the sample beats the reference's by gold reward (a tie counts 1/2)."""
    scores = []
    for s, r in zip(samples, reference, strict=True):
        a, b = lists.gold_reward(s.prompt, s.completion, s.ended), lists.gold_reward(r.prompt, r.completion, r.ended)
        scores.append(1.0 if a > b else 0.5 if a == b else 0.0)
    mean, ci = mean_ci(scores)
    return {"win_rate": mean, "win_rate_ci95": ci}


@torch.no_grad()
def kl_to_reference(samples: Sequence[Sample], reference, tokenizer, temperature: float = 1.0, batch_size: int = 64) -> dict[str, float]:
    """Sequence-level Monte Carlo KL(π || π_ref) = E_{y ~ π}[log π(y|x) - log π_ref(y|x)] over the
    policy's own samples (both at the sampling temperature); the mean and its 95% CI."""
    diffs, mine = [], distributed.shard(list(samples))  # under torchrun each process takes a share
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        ref_logps = completion_logps(reference, collate([s.encoded() for s in chunk], tokenizer.pad_token_id), temperature).logps
        diffs += [s.logp - float(r) for s, r in zip(chunk, ref_logps)]
    mean, ci = mean_ci(distributed.gather(diffs))
    return {"kl": mean, "kl_ci95": ci}


COLUMNS = (
    ("gold", "gold reward"),
    ("gold_ci95", "± 95% CI"),
    ("win_rate", "win vs ref"),
    ("kl", "KL to ref"),
    ("length", "length"),
    ("eos_rate", "EOS"),
    ("well_formed", "well-formed"),
    ("distinct1", "distinct-1"),
    ("distinct2", "distinct-2"),
)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per policy; same numbers as the JSON."""
    name_w = max(6, *(len(k) for k in rows))
    cols = [(key, title) for key, title in COLUMNS if any(key in m for m in rows.values())]
    head = f"{'policy':<{name_w}}  " + "  ".join(f"{title:>11}" for _, title in cols)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{m[key]:>11.3f}" if key in m else f"{'-':>11}" for key, _ in cols))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- reward models


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    return statistics.correlation(rx, ry) if len(x) > 1 else float("nan")


def labelled_pairs(held: Sequence[Comparison | Ranking], tau: float) -> list[tuple[str, str, bool, str, bool, float]]:
    """The held-out labels as pairs ``(prompt, winner, winner ended, loser, loser ended, p)``: a
    comparison's one pair, and *every* pair of a ranking; ``p`` is the true probability, under the
    annotator group that gave the label, that the winner is preferred — for a Plackett–Luce ranking
    the Bradley–Terry probability of the two (its pairwise marginal; :func:`lists.ranking_pair_probs`)."""
    groups = {"majority": lists.Annotator(tau, 0), "minority": lists.Annotator(tau, 2)}
    out = []
    for r in held:
        ann = groups.get(r.group or "majority", groups["majority"])
        if isinstance(r, Ranking):
            ended = r.ended_flags()
            items = [(r.completions[w], ended[w], r.completions[l], ended[l]) for i, w in enumerate(r.ranking) for l in r.ranking[i + 1 :]]
        else:
            items = [(r.chosen, r.ended[0], r.rejected, r.ended[1])]
        out += [(r.prompt, w, we, l, le, ann.p_prefers_a(r.prompt, w, l, we, le)) for w, we, l, le in items]
    return out


def ratio_ci(hits: Sequence[float], counts: Sequence[int]) -> tuple[float, float]:
    """``sum(hits) / sum(counts)`` over clusters (prompts) and the half-width of its 95% interval
    (delta method, clusters independent, pairs within one not)."""
    m, n = len(counts), sum(counts)
    r = sum(hits) / n
    if m < 2:
        return r, float("nan")
    nbar = n / m
    resid = [h - r * c for h, c in zip(hits, counts)]
    return r, 1.96 * math.sqrt(statistics.variance(resid) / m) / nbar


def _within(values: Sequence[float], groups: Sequence[int]) -> list[float]:
    """``values`` minus the mean of their group (a prompt)."""
    sums: dict[int, list[float]] = {}
    for v, g in zip(values, groups):
        sums.setdefault(g, []).append(v)
    means = {g: statistics.fmean(v) for g, v in sums.items()}
    return [v - means[g] for v, g in zip(values, groups)]


def _corr(x: Sequence[float], y: Sequence[float]) -> float | None:
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:  # constant: nothing to correlate
        return None


def gold_agreement(samples: Sequence[Sample], scores: Sequence[float], k: int) -> dict:
    """A scorer against the gold reward where Bradley–Terry identifies it: within each prompt's ``k``
    samples, the share of pairs with distinct gold that it orders as gold does (a tied score counts
    1/2), with a 95% interval over prompts; and, per term of the gold reward, the within-prompt
    correlation of the score with it, next to gold's own (what the scorer has learnt of each term)."""
    gold = [lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples]
    hits, counts = [], []
    for g in range(0, len(samples), k):
        h = c = 0
        for i in range(g, g + k):
            for j in range(i + 1, g + k):
                if gold[i] != gold[j]:
                    c += 1
                    d = (scores[i] - scores[j]) * (gold[i] - gold[j])
                    h += 1.0 if d > 0 else 0.5 if scores[i] == scores[j] else 0.0
        if c:
            hits.append(h)
            counts.append(c)
    acc, ci = ratio_ci(hits, counts) if counts else (float("nan"), float("nan"))
    group = [i // k for i in range(len(samples))]
    comps = [lists.components(s.prompt, s.completion, s.ended) for s in samples]
    score_w, gold_w = _within(scores, group), _within(gold, group)
    per_component = {}
    for name in lists.COMPONENTS:
        x = _within([c[name] for c in comps], group)
        per_component[name] = {"score": _corr(score_w, x), "gold": _corr(gold_w, x)}
    return {"gold_pair_accuracy": acc, "gold_pair_accuracy_ci95": ci, "gold_pairs": sum(counts), "components": per_component}


def evaluate_reward_model(
    rm,
    tokenizer,
    held: Sequence[Comparison | Ranking],
    tau: float,
    policy: str,
    prompts_path: str,
    tokens: TokenConfig,
    n_fresh: int = 500,
    k_fresh: int = 4,
) -> dict:
    """A reward model on the held-out labels, next to the Bayes-optimal accuracy of those same pairs
    (every pair of a ranking; :func:`labelled_pairs`), and against the gold reward on fresh samples
    of the policy, ``k_fresh`` per prompt (:func:`gold_agreement`); score spread and calibration.

    Accuracy counts a tied score 1/2, as the bound counts a pair of equal utilities. Bradley–Terry
    identifies a reward only up to a constant per prompt, so the across-prompt Spearman correlation
    with gold (kept for comparison) mostly measures offsets between prompts that no label constrains.
    """
    pairs = labelled_pairs(held, tau)
    # each completion once (a ranking's completions appear in K - 1 pairs each)
    texts = list(dict.fromkeys(x for p, w, we, l, le, _ in pairs for x in ((p, w, we), (p, l, le))))
    scored = dict(zip(texts, score_texts(rm, tokenizer, [(p, c) for p, c, _ in texts], tokens, [e for *_, e in texts])))
    s_w = torch.stack([scored[(p, w, we)] for p, w, we, *_ in pairs])
    s_l = torch.stack([scored[(p, l, le)] for p, _, _, l, le, _ in pairs])
    accuracy = float(((s_w > s_l).float() + 0.5 * (s_w == s_l).float()).mean())
    bayes = lists.bayes_optimal_accuracy([p for *_, p in pairs])
    # Calibration: predicted P(chosen > rejected) = sigmoid(s_w - s_l) against how often the
    # label agreed, in bins of the prediction folded to [0.5, 1].
    pred = torch.sigmoid(s_w - s_l).tolist()
    bins = []
    for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
        idx = [i for i, q in enumerate(pred) if lo <= max(q, 1 - q) < lo + 0.1 + (1e-9 if lo == 0.9 else 0)]
        if idx:
            observed = statistics.fmean(float(pred[i] >= 0.5) for i in idx)
            bins.append(
                {
                    "bin": f"{lo:.1f}-{lo + 0.1:.1f}",
                    "n": len(idx),
                    "predicted": statistics.fmean(max(pred[i], 1 - pred[i]) for i in idx),
                    "observed": observed,
                }
            )
    # Against gold on fresh samples of the policy, k per prompt.
    model, ptok = load_policy(policy)
    prompts = (
        load_prompts(prompts_path, ptok)[:n_fresh]
        if prompts_path
        else [r["prompt"] for r in lists.prompts(n_fresh, seed=12345, split="heldout")]
    )
    fresh = sample(model, ptok, prompts, SamplingConfig(seed=4321), n=k_fresh)
    gold = [lists.gold_reward(s.prompt, s.completion, s.ended) for s in fresh]
    scores = score_samples(rm, fresh, tokenizer.pad_token_id).tolist()
    return {
        "held_out_pairs": len(pairs),
        "accuracy": accuracy,
        "bayes_optimal_accuracy": bayes,
        "accuracy_over_bayes": accuracy / bayes,
        **gold_agreement(fresh, scores, k_fresh),
        "spearman_gold": spearman(scores, gold),
        "fresh_samples": len(fresh),
        "fresh_per_prompt": k_fresh,
        "score_mean": statistics.fmean(scores),
        "score_std": statistics.stdev(scores),
        "calibration": bins,
    }


def _r(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def format_reward_report(r: dict) -> str:
    lines = [
        f"held-out accuracy      {r['accuracy']:.3f}  on {r['held_out_pairs']} pairs",
        f"Bayes-optimal accuracy {r['bayes_optimal_accuracy']:.3f}  (ratio {r['accuracy_over_bayes']:.3f})",
        f"gold pair accuracy     {r['gold_pair_accuracy']:.3f} ± {r['gold_pair_accuracy_ci95']:.3f}  on {r['gold_pairs']} within-prompt pairs "
        f"of {r['fresh_samples']} fresh policy samples ({r['fresh_per_prompt']} per prompt)",
        f"Spearman with gold     {r['spearman_gold']:.3f}  across prompts (mostly offsets between prompts, which labels do not fix)",
        "within-prompt correlation with each term of gold (score / gold): "
        + ", ".join(f"{k} {_r(c['score'])}/{_r(c['gold'])}" for k, c in r["components"].items()),
        f"score spread           mean {r['score_mean']:+.3f}  sd {r['score_std']:.3f}",
        "calibration (predicted -> observed agreement with the label):",
    ]
    lines += [f"  {b['bin']}  n={b['n']:4d}  {b['predicted']:.3f} -> {b['observed']:.3f}" for b in r["calibration"]]
    return "\n".join(lines)
