"""Iterated RLHF (``preftune iterate``): rounds of sample → select → label → reward model → policy.

Round r, in its own directory:

1. ``prompts.jsonl``: ``candidates × per_round`` training prompts, drawn afresh each round.
2. ``candidates.jsonl``: ``k`` completions per prompt, from the last round's policy (pi_SFT in
   round 1); with ``--selection random`` always from pi_SFT, as a one-shot pipeline labels.
3. ``pairs.jsonl``: one pair per prompt, for ``per_round`` prompts (:func:`select`): at random, or
   where the last round's reward model is least sure (``uncertainty``: the smallest |r(a) − r(b)|),
   or where its ensemble disagrees most (``ensemble``: the largest spread of the members'
   P(a > b)). Round 1 has no reward model yet: it chooses at random.
4. ``labels.jsonl``: the pairs labelled, by the world's simulated annotators or by people in the
   web app (:mod:`preftune.commands.iterate` waits for them).
5. ``train.jsonl``: this round's labels, or every round's so far (``--pooling pooled``, Llama 2's way).
6. ``rm/``: a reward model on ``train.jsonl``, always initialised from pi_SFT.
7. ``policy/``: RL against ``rm/`` (or DPO on ``train.jsonl``) from the last round's policy, with
   pi_SFT (``--reference sft``) or the last round's policy (``previous``) as the frozen reference.

Every step is a stage (:mod:`preftune.stages`): made once from its inputs, reused while they are
unchanged, a training stage resumed from its checkpoint after a crash; so a killed loop run again
with the same command goes on where it stopped.
"""

from __future__ import annotations

import fcntl
import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .atomic import write_atomic, write_jsonl
from .commands.dpo import dpo
from .commands.reward import reward
from .commands.rl import rl
from .commands.sample import label_pair, sample_sets
from .config import DPOConfig, IterateConfig, RewardConfig, RLConfig, SampleConfig, load_config, override, to_dict
from .data import DataError, load_prompts, read_rows
from .evaluate import evaluate_samples, kl_to_reference
from .methods.reward import score_texts
from .models import load_policy, load_reward_model
from .rollout import sample
from .stages import STAGE_CONFIGS, digest, file_stage, merge, run_stage
from .world import lists

STAGES = ("sample", "reward", "rl", "dpo")  # the stages a settings file may configure
EVAL_PROMPTS = 500  # held-out prompts each round's policy is scored on


def check_settings(settings: object, where: str) -> dict:
    """The stages' settings (``--settings``), refused with where and what before anything runs."""
    if not isinstance(settings, dict) or not set(settings) <= set(STAGES):
        raise ValueError(f"{where}: expected a mapping of stage names ({', '.join(STAGES)}) to settings")
    for stage, values in settings.items():
        override(STAGE_CONFIGS[stage](), values or {}, f"{where}: {stage}")
    return settings


def round_key(cfg: IterateConfig, settings: dict, r: int, parent: str = "") -> str:
    """What round ``r`` is made from, as a digest: every setting it reads, and the rounds before it
    (``parent``, the previous round's key). Loops that agree on these share the round (the
    experiment's arms share their first rounds)."""
    reads = {
        k: v
        for k, v in to_dict(cfg).items()
        if k in ("model", "prompts", "eval_prompts", "per_round", "method", "candidates", "k", "tau", "seed")
    }
    if r > 1:  # round 1 has no reward model to select with, nothing to pool and pi_SFT as its start
        reads.update(selection=cfg.selection, pooling=cfg.pooling, reference=cfg.reference)
        if cfg.selection == "ensemble":
            reads["ensemble"] = cfg.ensemble
    return digest([], [reads, settings, parent, r])[:16]


# ------------------------------------------------------------------------------------ selection


def candidate_pairs(completions: list[str], ended: list[bool]) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of distinct completions (a repeat carries no preference)."""
    seen, first = set(), []
    for i, item in enumerate(zip(completions, ended)):
        if item not in seen:
            seen.add(item)
            first.append(i)
    return [(i, j) for n, i in enumerate(first) for j in first[n + 1 :]]


def select(sets: list[dict], n: int, how: str, seed: int, scores: list[list[list[float]]] | None = None) -> list[dict]:
    """``n`` pairs to label, one per set (``{'prompt', 'completions', 'ended'}``).

    ``scores[m][s][i]``: judge m's reward for completion i of set s (the last round's reward model,
    or its ensemble). Without judges every strategy chooses at random: sets uniformly, a pair in
    each uniformly. ``uncertainty``: in each set the pair with the smallest |r(a) − r(b)|, and the
    sets where it is smallest. ``ensemble``: in each set the pair whose P(a > b) = σ(r(a) − r(b))
    spreads most over the judges (standard deviation), and the sets where it spreads most."""
    rng = random.Random(f"select-{seed}")
    order = [s for s in range(len(sets)) if candidate_pairs(sets[s]["completions"], sets[s]["ended"])]
    rng.shuffle(order)  # ties in the scores go in this order
    picked: list[tuple[int, tuple[int, int], float | None]] = []
    if not scores or how in ("random", "on-policy"):
        for s in order[:n]:
            picked.append((s, rng.choice(candidate_pairs(sets[s]["completions"], sets[s]["ended"])), None))
    else:
        best = []
        for s in order:
            per_judge = [m[s] for m in scores]
            pair = min(candidate_pairs(sets[s]["completions"], sets[s]["ended"]), key=lambda ij: _doubt(how, per_judge, *ij))
            best.append((_doubt(how, per_judge, *pair), s, pair))
        best.sort(key=lambda t: t[0])  # stable: equal values keep the shuffled order
        picked = [(s, pair, abs(v)) for v, s, pair in best[:n]]
    out = []
    for s, (i, j), value in picked:
        row = sets[s]
        if rng.random() < 0.5:  # which of the two is "a": not the sampling order
            i, j = j, i
        task = {"prompt": row["prompt"], "a": row["completions"][i], "b": row["completions"][j]}
        task.update(a_ended=row["ended"][i], b_ended=row["ended"][j], set=s)
        out.append(task if value is None else {**task, how: value})
    return out


def _doubt(how: str, scores: list[list[float]], i: int, j: int) -> float:
    """Smaller is more worth labelling: |r(a) − r(b)| under the first judge (uncertainty), or minus
    the spread (population standard deviation) of the judges' P(a > b) = σ(r(a) − r(b)) (ensemble)."""
    if how == "uncertainty":
        return abs(scores[0][i] - scores[0][j])
    return -statistics.pstdev(1 / (1 + math.exp(m[j] - m[i])) for m in scores)


def simulated_labels(tasks: list[dict], tau: float, seed: int, r: int) -> list[dict]:
    """The pairs labelled by the lists world's (majority) Bradley–Terry annotators at ``tau``."""
    rng, annotator = random.Random(f"iterate-labels-{seed}-{r}"), lists.Annotator(tau)
    rows = []
    for t in tasks:
        try:
            extra = {"annotator": f"sim-majority-tau{tau:g}", "round": r}
            rows.append(label_pair(annotator, t["prompt"], t["a"], t["b"], t["a_ended"], t["b_ended"], rng, extra))
        except (ValueError, KeyError):
            raise ValueError(
                f"round {r}: simulated labels need the lists world's prompts, not {t['prompt'][:60]!r}; label with --labels web"
            ) from None
    return rows


def pairs_bayes_accuracy(tasks: list[dict], tau: float) -> float | None:
    """How informative the pairs' labels are: the accuracy the best possible model reaches on them,
    the mean of max(p, 1 - p) under the lists world's annotators (0.5 for a tie, whose label is a coin
    flip); None for prompts of another world."""
    try:
        return lists.bayes_optimal_accuracy(
            [lists.Annotator(tau).p_prefers_a(t["prompt"], t["a"], t["b"], t["a_ended"], t["b_ended"]) for t in tasks]
        )
    except (ValueError, KeyError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------------------------------- a round


def _rows(path: Path) -> list[dict]:
    return [row for _, row in read_rows(path)]


def ensemble(round_dir: Path, size: int, timings: dict) -> list[str]:
    """The round's reward model and ``size - 1`` more on the same labels at other seeds (trained on
    first use; a lock keeps two loops sharing the round from training one twice)."""
    rm = round_dir / "rm"
    members = [str(rm)]
    with (round_dir / ".ensemble.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for m in range(1, size):
            cfg = load_config(RewardConfig, rm / "run_config.json", "reward")
            cfg = replace(cfg, train=replace(cfg.train, out=str(round_dir / f"rm-{m + 1}"), seed=cfg.train.seed + m, resume=False))
            run_stage(f"{round_dir.name}: ensemble member {m + 1}", reward, cfg, [cfg.data, cfg.model], timings)
            members.append(cfg.train.out)
    return members


def _judge_scores(judges: list[str], sets: list[dict]) -> list[list[list[float]]]:
    texts = [(row["prompt"], c) for row in sets for c in row["completions"]]
    ended = [e for row in sets for e in row["ended"]]
    out = []
    for path in judges:
        rm, tok = load_reward_model(path)
        tokens = load_config(RewardConfig, Path(path) / "run_config.json", "reward").tokens
        flat = score_texts(rm, tok, texts, tokens, ended).tolist()
        it = iter(flat)
        out.append([[next(it) for _ in row["completions"]] for row in sets])
    return out


def run_round(
    cfg: IterateConfig,
    settings: dict,
    dirs: list[str],
    label: Callable[[Path, list[dict], int], Path] | None = None,
    timings: dict | None = None,
) -> dict:
    """Round ``len(dirs)`` of a loop into ``dirs[-1]`` (the rounds before it in ``dirs[:-1]``, done).
    ``label(round_dir, tasks, r)`` writes ``round_dir/labels.jsonl`` (default: simulated); each
    stage that runs adds its wall seconds to ``timings``. Returns the round's summary (its labels,
    what it trained on, its reward model's evaluation)."""
    here, before = Path(dirs[-1]), [Path(d) for d in dirs[:-1]]
    r, timings = len(dirs), {} if timings is None else timings
    here.mkdir(parents=True, exist_ok=True)
    start = str(before[-1] / "policy") if before else cfg.model

    def choose(out: Path) -> None:
        rows = _rows(Path(cfg.prompts))
        write_jsonl(out, random.Random(f"iterate-prompts-{cfg.seed}-{r}").sample(rows, min(len(rows), cfg.candidates * cfg.per_round)))

    prompts = file_stage(here / "prompts.jsonl", [cfg.prompts], [cfg.seed, r, cfg.candidates * cfg.per_round], choose)
    sampler = cfg.model if cfg.selection == "random" else start
    gen = override(SampleConfig(model="", prompts=""), settings.get("sample", {}), "settings: sample").gen
    sample_cfg = SampleConfig(
        model=sampler, prompts=str(prompts), out=str(here / "candidates.jsonl"), k=cfg.k, gen=replace(gen, seed=cfg.seed + 7919 * r)
    )
    candidates = file_stage(here / "candidates.jsonl", [str(prompts), sampler], to_dict(sample_cfg), lambda out: sample_sets(sample_cfg))

    judges = []
    if before and cfg.selection == "uncertainty":
        judges = [str(before[-1] / "rm")]
    elif before and cfg.selection == "ensemble":
        judges = ensemble(before[-1], cfg.ensemble, timings)

    def pick(out: Path) -> None:
        sets = _rows(candidates)
        scores = _judge_scores(judges, sets) if judges else None
        write_jsonl(out, select(sets, cfg.per_round, cfg.selection, cfg.seed * 1000 + r, scores))

    pairs = file_stage(here / "pairs.jsonl", [str(candidates), *judges], [cfg.selection, cfg.per_round, cfg.seed, r], pick)
    tasks = _rows(pairs)
    if label is None:
        file_stage(
            here / "labels.jsonl",
            [str(pairs)],
            [cfg.tau, cfg.seed, r],
            lambda out: write_jsonl(out, simulated_labels(tasks, cfg.tau, cfg.seed, r)),
        )
    else:
        label(here, tasks, r)
    rounds = [*before, here] if cfg.pooling == "pooled" else [here]
    sources = [str(d / "labels.jsonl") for d in rounds]
    train_data = file_stage(
        here / "train.jsonl", sources, cfg.pooling, lambda out: write_jsonl(out, [x for s in sources for x in _rows(Path(s))])
    )

    rm_cfg = RewardConfig(
        model=cfg.model, data=str(train_data), eval_prompts=cfg.eval_prompts, world_eval=bool(cfg.eval_prompts), tau=cfg.tau
    )
    rm_cfg = override(rm_cfg, settings.get("reward", {}), "settings: reward")
    rm_cfg = replace(rm_cfg, train=replace(rm_cfg.train, out=str(here / "rm"), seed=cfg.seed))
    run_stage(f"round {r}: reward model", reward, rm_cfg, [str(train_data), cfg.model], timings)

    ref = cfg.model if cfg.reference == "sft" else start
    extra = {"ref": "" if ref == start else ref}
    if cfg.method == "rl":
        pcfg = override(
            RLConfig(model=start, reward=str(here / "rm"), prompts=cfg.prompts), {**settings.get("rl", {}), **extra}, "settings: rl"
        )
        inputs = [cfg.prompts, start, str(here / "rm")]
    else:
        pcfg = override(DPOConfig(model=start, data=str(train_data)), {**settings.get("dpo", {}), **extra}, "settings: dpo")
        inputs = [str(train_data), start]
    pcfg = replace(pcfg, train=replace(pcfg.train, out=str(here / "policy"), seed=cfg.seed + r - 1))
    run_stage(
        f"round {r}: policy ({cfg.method})", rl if cfg.method == "rl" else dpo, pcfg, inputs + ([ref] if extra["ref"] else []), timings
    )
    rm_eval = json.loads((here / "rm" / "eval.json").read_text())
    keep = ("gold_pair_accuracy", "gold_pair_accuracy_ci95", "accuracy", "bayes_optimal_accuracy", "held_out_accuracy")
    return {
        "round": r,
        "labels": len(tasks) if label is None else len(_rows(here / "labels.jsonl")),
        "trained_on": len(_rows(train_data)),
        "pairs_bayes_accuracy": pairs_bayes_accuracy(tasks, cfg.tau),
        "rm": {k: rm_eval[k] for k in keep if k in rm_eval},
    }


def evaluate_round(cfg: IterateConfig, settings: dict, round_dir: Path) -> dict:
    """The round's policy on the held-out prompts: gold (lists world), length, EOS, KL to pi_SFT."""
    gen = override(SampleConfig(model="", prompts=""), settings.get("sample", {}), "settings: sample").gen
    gen = replace(gen, seed=cfg.seed + 1)

    def score(out: Path) -> None:
        model, tok = load_policy(round_dir / "policy")
        ref = load_policy(cfg.model)[0].eval()
        prompts = load_prompts(cfg.eval_prompts, tok)[:EVAL_PROMPTS]
        with torch.no_grad():
            samples = sample(model.eval(), tok, prompts, gen)
            result = {**evaluate_samples(samples), **kl_to_reference(samples, ref, tok, gen.temperature or 1.0)}
        write_atomic(out, json.dumps(result, indent=2) + "\n")

    path = file_stage(
        round_dir / "eval.json", [str(round_dir / "policy"), cfg.model, cfg.eval_prompts], [EVAL_PROMPTS, to_dict(gen)], score
    )
    return json.loads(path.read_text())


def load_settings(path: str) -> dict:
    """The stages' settings: the demo's (``experiments/demo.yaml``: 24 RL iterations a round, the
    setting ``configs/iterate.yaml`` measured), with the file's (``--settings``) laid over them."""
    import yaml

    demo = yaml.safe_load((Path(__file__).parent / "experiments" / "demo.yaml").read_text())["pipeline"]
    settings = {k: v for k, v in demo.items() if k in STAGES}
    if not path:
        return settings
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such settings file")
    try:
        own = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None
    return check_settings(merge(settings, check_settings(own, path)), path)


def check(cfg: IterateConfig) -> None:
    """Refuse a loop that cannot run, before anything is written."""
    for name, value, least in (
        ("--rounds", cfg.rounds, 1),
        ("--per-round", cfg.per_round, 1),
        ("--candidates", cfg.candidates, 1),
        ("--k", cfg.k, 2),
    ):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if cfg.selection == "ensemble" and cfg.ensemble < 2:
        raise ValueError(f"--selection ensemble needs --ensemble 2 or more, got {cfg.ensemble}")
    for path in (cfg.prompts, cfg.eval_prompts):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such prompts file")
    if not (Path(cfg.model) / "config.json").exists():
        raise FileNotFoundError(f"{cfg.model}: no model here (pi_SFT: a save_pretrained directory)")
    if not any(True for _ in read_rows(cfg.prompts)):
        raise DataError(cfg.prompts, 1, "the prompts file holds no rows")
