"""InstructGPT's step 2: sample completions, label them, train and evaluate a reward model.

Commands: ``preftune sample``, ``preftune annotate --simulated``, ``preftune reward`` (which
also evaluates the model it trains) and ``preftune score``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import GenerateConfig, TokenConfig, TrainConfig, doc, save_config
from .data import (
    SCALE_STRENGTHS,
    Comparison,
    DataError,
    Ranking,
    collate,
    encode,
    load_comparisons,
    load_prompts,
    load_sft,
    read_rows,
    write_jsonl,
)
from .loop import train
from .methods.reward import RewardTraining, to_units
from .models import build_reward_model, load_policy, load_reward_model, save_model
from .rollout import sample
from .stages import held_out_split, set_threads
from .world import lists

# --------------------------------------------------------------------------------------- sample


@dataclass(frozen=True)
class SampleCommand:
    model: str = doc("", "policy directory")
    prompts: str = doc("", "file of {'prompt'} rows")
    out: str = doc("samples.jsonl", "write {'prompt','completions','ended'} rows here")
    k: int = doc(4, "completions per prompt (a pair or a K-way set)")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    gen: GenerateConfig = GenerateConfig()


def sample_sets(cfg: SampleCommand) -> Path:
    """K completions per prompt, batched with a KV cache, as JSONL ready for labelling."""
    set_threads()
    model, tokenizer = load_policy(cfg.model)
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[: cfg.limit] if cfg.limit else prompts
    samples = sample(model, tokenizer, prompts, cfg.gen, n=cfg.k, progress=True)
    rows = []
    for i, prompt in enumerate(prompts):
        group = samples[i * cfg.k : (i + 1) * cfg.k]
        rows.append({"prompt": prompt, "completions": [s.completion for s in group], "ended": [s.ended for s in group]})
    write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} sets of {cfg.k} completions to {cfg.out}")
    return Path(cfg.out)


# ------------------------------------------------------------------------------------- annotate

# A simulated annotator's certainty max(p, 1-p) at which it says "much better", "better",
# "slightly better", else "negligibly better" (strengths: data.SCALE_STRENGTHS).
CERTAINTY_THRESHOLDS = (0.95, 0.8, 0.6, 0.0)


def strength_of(p: float) -> float:
    """A simulated annotator's 8-point strength from its own certainty ``max(p, 1-p)``."""
    certainty = max(p, 1.0 - p)
    return next(s for threshold, s in zip(CERTAINTY_THRESHOLDS, SCALE_STRENGTHS) if certainty >= threshold)


@dataclass(frozen=True)
class AnnotateCommand:
    samples: str = doc("", "output of `preftune sample` ({'prompt','completions','ended'} rows)")
    out: str = doc("comparisons.jsonl", "write comparison rows here")
    simulated: bool = doc(False, "label with the world's simulated annotators (the only labeller offline; see `preftune label`)")
    tau: float = doc(0.1, "annotator temperature: P(a > b) = sigmoid((u(a) - u(b)) / tau)")
    minority: float = doc(0.0, "share of labels from the minority group, who want k+2 items")
    format: str = doc(
        "pairs",
        "'pairs' (disjoint pairs from each set) or 'rankings' (Plackett–Luce order of the whole set)",
        choices=("pairs", "rankings"),
    )
    seed: int = doc(0, "labelling seed")


def annotators(tau: float, minority: float) -> list[tuple[lists.Annotator, float]]:
    return [(lists.Annotator(tau, 0, "majority"), 1.0 - minority), (lists.Annotator(tau, 2, "minority"), minority)]


def annotate(cfg: AnnotateCommand) -> Path:
    """Label sampled sets with simulated Bradley–Terry annotators (``annotator``/``group`` recorded)."""
    if not cfg.simulated:
        raise ValueError("only --simulated labelling runs offline; people label with the web app (`preftune label serve`)")
    rng = random.Random(f"annotate-{cfg.seed}")
    pool = annotators(cfg.tau, cfg.minority)
    rows = []
    for where, row in read_rows(cfg.samples):
        prompt, comps = row.get("prompt"), row.get("completions")
        if not isinstance(prompt, str) or not isinstance(comps, list) or len(comps) < 2:
            raise DataError(cfg.samples, where, "expected {'prompt', 'completions': [at least 2]} (the output of `preftune sample`)")
        ended = row.get("ended") or [True] * len(comps)
        ann = rng.choices([a for a, _ in pool], weights=[w for _, w in pool])[0]
        name = f"sim-{ann.group}-tau{cfg.tau:g}"
        if cfg.format == "rankings":
            # Plackett–Luce: draw the best with P ∝ exp(u / tau), then the best of the rest, ...
            left, order = list(range(len(comps))), []
            while left:
                u = [ann.utility(prompt, comps[i], ended[i]) / cfg.tau for i in left]
                top = max(u)
                pick = rng.choices(left, weights=[math.exp(x - top) for x in u])[0]
                order.append(pick)
                left.remove(pick)
            rows.append({"prompt": prompt, "completions": comps, "ranking": order, "annotator": name, "group": ann.group})
            continue
        for a in range(0, len(comps) - 1, 2):
            b = a + 1
            p = ann.p_prefers_a(prompt, comps[a], comps[b], ended[a], ended[b])
            win, lose = (a, b) if rng.random() < p else (b, a)
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": comps[win],
                    "rejected": comps[lose],
                    "strength": strength_of(p),
                    "annotator": name,
                    "group": ann.group,
                }
            )
    write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} {cfg.format} to {cfg.out}")
    return Path(cfg.out)


# --------------------------------------------------------------------------------------- reward


@dataclass(frozen=True)
class RewardConfig:
    model: str = doc("", "policy to initialise from (pi_SFT): same transformer, scalar head")
    data: str = doc("", "comparisons: pairs, HH-RLHF transcripts or rankings")
    eval_data: str = doc("", "held-out comparisons (default: 10% of --data)")
    margin: float = doc(0.0, "Bradley–Terry margin m: -log sigmoid(r_w - r_l - m)")
    use_strength: bool = doc(False, "weight each pair by its preference strength (8-point scale)")
    ranking_loss: str = doc("pairs", "rankings: all K(K-1)/2 pairs, or the Plackett–Luce likelihood", choices=("pairs", "plackett-luce"))
    world_eval: bool = doc(True, "after training, evaluate against the lists world (needs --tau and the policy)")
    tau: float = doc(0.1, "the simulated annotators' temperature, for the Bayes-optimal accuracy")
    eval_prompts: str = doc("", "prompts for the Spearman check on fresh policy samples (default: the held-out prompts)")
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)
    # lr 3e-4 beat 1e-3 and 1e-4 on the lists world (README: "Reward model"); early stopping keeps the best.
    train: TrainConfig = TrainConfig(out="runs/rm", epochs=3.0, lr=3e-4, batch_size=8, eval_every=100, patience=5)


def reward(cfg: RewardConfig) -> dict:
    """Train a reward model, centre it on reference samples, save it, and evaluate it."""
    set_threads()
    out = Path(cfg.train.out)
    rm, tokenizer = build_reward_model(cfg.model, seed=cfg.train.seed)
    save_config(cfg, out / "run_config.json", command="reward", preftune=__version__)
    records = load_comparisons(cfg.data)
    held_records = load_comparisons(cfg.eval_data) if cfg.eval_data else []
    if not held_records:
        records, held_records = held_out_split(records, fraction=0.1, seed=cfg.train.seed)

    def units(rs):
        return to_units(rs, tokenizer, cfg.tokens.max_length, cfg.tokens.max_prompt_length, cfg.use_strength)

    method = RewardTraining(
        units(records), units(held_records), tokenizer.pad_token_id, cfg.train.batch_size, cfg.train.seed, cfg.margin, cfg.ranking_loss
    )
    print(f"reward: {len(records):,} training and {len(held_records):,} held-out comparisons -> {out}")
    train(rm, method, cfg.train)

    # Centre: reference-policy samples (the compared completions) score 0 on average.
    refs = sorted({(r.prompt, c) for r in records for c in _completions(r)})[:2000]
    raw = score_texts(rm, tokenizer, refs, cfg.tokens) + rm.offset
    rm.config.preftune_reward_offset = float(raw.mean())
    save_model(rm.model, tokenizer, out)
    print(f"centred: offset {rm.offset:+.4f} (mean raw score of {len(refs)} reference samples)")
    result = {"held_out_accuracy": method.evaluate(rm.eval())["accuracy"]}
    if cfg.world_eval:
        with torch.no_grad():
            result = evaluate_reward_model(rm, tokenizer, held_records, cfg.tau, cfg.model, cfg.eval_prompts, cfg.tokens)
        print(format_reward_report(result))
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _completions(r: Comparison | Ranking) -> tuple[str, ...]:
    return r.completions if isinstance(r, Ranking) else (r.chosen, r.rejected)


@torch.no_grad()
def score_texts(rm, tokenizer, pairs: Sequence[tuple[str, str]], tokens: TokenConfig = TokenConfig(), batch_size: int = 64) -> torch.Tensor:
    """Reward-model scores (N,) of (prompt, completion) pairs; each completion is scored with its EOS."""
    rm.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        enc = [encode(tokenizer, p, c, tokens.max_length, tokens.max_prompt_length) for p, c in pairs[i : i + batch_size]]
        batch = collate(enc, tokenizer.pad_token_id)
        out.append(rm(batch.input_ids, batch.attention_mask))
    return torch.cat(out) if out else torch.zeros(0)


# ---------------------------------------------------------------------------------- evaluation


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


def evaluate_reward_model(
    rm, tokenizer, held: Sequence[Comparison | Ranking], tau: float, policy: str, prompts_path: str, tokens: TokenConfig, n_fresh: int = 400
) -> dict:
    """Held-out accuracy next to the Bayes-optimal accuracy of the same simulated labels, Spearman
    with the gold reward on fresh policy samples, score spread, and calibration."""
    groups = {"majority": lists.Annotator(tau, 0), "minority": lists.Annotator(tau, 2)}
    pairs = [(r.prompt, r.chosen, r.rejected, r.group) for r in held if isinstance(r, Comparison)]
    for r in held:
        if isinstance(r, Ranking):
            pairs += [(r.prompt, r.completions[w], r.completions[l], r.group) for w, l in zip(r.ranking, r.ranking[1:])]
    s_w = score_texts(rm, tokenizer, [(p, w) for p, w, _, _ in pairs], tokens)
    s_l = score_texts(rm, tokenizer, [(p, l) for p, _, l, _ in pairs], tokens)
    accuracy = float((s_w > s_l).float().mean())
    # Bayes-optimal: the true P(a > b) of the annotator group that labelled each pair.
    p_true = [groups.get(g or "majority", groups["majority"]).p_prefers_a(p, w, l) for p, w, l, g in pairs]
    bayes = lists.bayes_optimal_accuracy(p_true)
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
    # Spearman against the gold reward on fresh samples of the policy.
    model, ptok = load_policy(policy)
    prompts = (
        load_prompts(prompts_path)[:n_fresh] if prompts_path else [r["prompt"] for r in lists.prompts(n_fresh, seed=12345, split="heldout")]
    )
    fresh = sample(model, ptok, prompts, GenerateConfig(seed=4321))
    gold = [lists.gold_reward(s.prompt, s.completion, s.ended) for s in fresh]
    scores = score_texts(rm, tokenizer, [(s.prompt, s.completion) for s in fresh], tokens).tolist()
    return {
        "held_out_pairs": len(pairs),
        "accuracy": accuracy,
        "bayes_optimal_accuracy": bayes,
        "accuracy_over_bayes": accuracy / bayes,
        "spearman_gold": spearman(scores, gold),
        "fresh_samples": len(fresh),
        "score_mean": statistics.fmean(scores),
        "score_std": statistics.stdev(scores),
        "calibration": bins,
    }


def format_reward_report(r: dict) -> str:
    lines = [
        f"held-out accuracy      {r['accuracy']:.3f}  on {r['held_out_pairs']} pairs",
        f"Bayes-optimal accuracy {r['bayes_optimal_accuracy']:.3f}  (ratio {r['accuracy_over_bayes']:.3f})",
        f"Spearman with gold     {r['spearman_gold']:.3f}  on {r['fresh_samples']} fresh policy samples",
        f"score spread           mean {r['score_mean']:+.3f}  sd {r['score_std']:.3f}",
        "calibration (predicted -> observed agreement with the label):",
    ]
    lines += [f"  {b['bin']}  n={b['n']:4d}  {b['predicted']:.3f} -> {b['observed']:.3f}" for b in r["calibration"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- score


@dataclass(frozen=True)
class ScoreCommand:
    reward: str = doc("", "reward model directory (from `preftune reward`)")
    data: str = doc("", "rows {'prompt','completion'} to score")
    out: str = doc("", "write rows with a 'score' field here (default: print)")


def score(cfg: ScoreCommand) -> list[float]:
    set_threads()
    rm, tokenizer = load_reward_model(cfg.reward)
    rows = [row for _, row in read_rows(cfg.data)]
    pairs = [(r.prompt, r.completion) for r in load_sft(cfg.data)]
    scores = score_texts(rm, tokenizer, pairs).tolist()
    out_rows = [{**row, "score": s} for row, s in zip(rows, scores)]
    if cfg.out:
        write_jsonl(cfg.out, out_rows)
        print(f"wrote {len(out_rows)} scores to {cfg.out}")
    else:
        for r in out_rows:
            print(json.dumps(r, ensure_ascii=False))
    return scores
