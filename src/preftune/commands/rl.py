"""``preftune rl`` and ``preftune best-of-n``: optimise against a reward model with a KL leash to pi_SFT."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import distributed, losses
from ..alarms import Alarms, rl_rules
from ..atomic import write_atomic, write_jsonl
from ..checkpoint import checkpoint_state
from ..config import BestOfNConfig, RLConfig
from ..data import encode_text, load_prompts, load_texts
from ..evaluate import evaluate_samples
from ..loop import steps_per_epoch, train
from ..methods.algorithms import build_algorithm
from ..methods.rl import RLHF, Scorer, gold_or_none
from ..models import AdaptersOff, add_lora, load_policy, load_reference, load_reward_model, save_model
from ..rollout import sample_shared
from .common import one_run_per_directory, prepare, prompts_from, record_config


def policy_and_reference(cfg: RLConfig):
    """The policy to train (LoRA-wrapped with ``--lora``), its tokenizer, and the frozen KL reference:
    ``--ref`` when given, else pi_SFT loaded a second time (in ``--frozen-precision``), or under
    ``--lora`` the policy with its adapters off (no second copy); None with ``--no-track-kl``."""
    policy, tokenizer = load_policy(cfg.model)
    frozen = torch.bfloat16 if cfg.frozen_precision == "bf16" else torch.float32
    reference = load_reference(cfg.ref, tokenizer, frozen) if cfg.ref and cfg.track_kl else None
    if cfg.lora:
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, seed=cfg.train.seed)
        return policy, tokenizer, (reference or AdaptersOff(policy)) if cfg.track_kl else None
    if not cfg.track_kl:
        return policy, tokenizer, None
    return policy, tokenizer, reference or load_policy(cfg.model, dtype=frozen)[0].requires_grad_(False).eval()


@one_run_per_directory
def rl(cfg: RLConfig) -> Path:
    """RL from pi_SFT against ``cfg.reward``; a loop epoch is one rollout iteration."""
    prepare(cfg)
    if cfg.train.fsdp and distributed.world_size() > 1 and cfg.algo == "ppo":
        raise ValueError(
            "--train.fsdp: ppo's value model is not sharded with its policy yet; run ppo under DDP, or raft/reinforce/rloo/grpo"
        )
    if cfg.prompts_per_iter < distributed.world_size():
        raise ValueError(f"--prompts-per-iter {cfg.prompts_per_iter} is fewer than the {distributed.world_size()} processes sharing them")
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise ValueError("--ptx-coef needs --ptx-data")
    if not cfg.track_kl and (cfg.beta != 0 or cfg.target_kl > 0):
        raise ValueError(f"--no-track-kl needs --beta 0 and no --target-kl: a KL leash needs the reference (got β {cfg.beta})")
    out = Path(cfg.train.out)
    policy, tokenizer, reference = policy_and_reference(cfg)
    frozen = torch.bfloat16 if cfg.frozen_precision == "bf16" else torch.float32
    scorer = Scorer(cfg.reward, frozen)
    judges = [load_reward_model(d, frozen)[0].requires_grad_(False) for d in cfg.monitor_rewards]
    algorithm = build_algorithm(cfg)
    ptx = [encode_text(tokenizer, t, cfg.tokens.max_length) for t in load_texts(cfg.ptx_data)] if cfg.ptx_data else None
    prompts = load_prompts(cfg.prompts, tokenizer)
    record_config(cfg, "rl")  # after the data is read: a bad file leaves the directory as it was

    resumed = checkpoint_state(out) if cfg.train.resume else None
    start = resumed["epoch"] if resumed else 0  # rollouts from here on came from weights we no longer have
    method = RLHF(
        cfg,
        algorithm,
        policy,
        tokenizer,
        reference,
        scorer,
        prompts,
        ptx=ptx,
        start=start,
        judges=judges,
        alarms=Alarms(rl_rules(cfg.alarm)),
    )
    per_iteration = steps_per_epoch(method, cfg.train)
    save_every = math.ceil(max(1, cfg.train.save_every) / per_iteration) * per_iteration  # checkpoints at iteration ends
    leash = f"β {cfg.beta} ({cfg.kl_estimator})" + (f", adaptive to KL {cfg.target_kl}" if cfg.target_kl else "")
    print(
        f"{cfg.algo}: {cfg.iterations} iterations × {cfg.prompts_per_iter} prompts × {cfg.k} samples, {per_iteration} steps each, "
        f"reward {'gold' if scorer.gold else cfg.reward}, {leash if cfg.track_kl else 'no reference (KL not tracked)'} -> {out}"
    )
    t0 = time.perf_counter()
    train(
        algorithm.trained(policy),
        method,
        replace(cfg.train, epochs=cfg.iterations, max_steps=0, save_every=save_every),
    )
    method.bind(None)  # the loop has put the trained weights back into the policy (whole, in every process)
    method.final_rollout()
    method.tracker.close()
    if distributed.is_main():
        save_model(policy, tokenizer, out)
        _summarise(method.iterations, time.perf_counter() - t0, out)
    return out


def _summarise(rows: list[dict], seconds: float, out: Path) -> None:
    """``summary.json`` (rollout against training time, the final rollout's statistics) and one line."""
    rollout_s = sum(r["sample_s"] + r["score_s"] for r in rows)
    summary = {
        "iterations": len(rows) - 1,
        "seconds": round(seconds, 1),
        "rollout_s": round(rollout_s, 1),
        "train_s": round(seconds - rollout_s, 1),
    }
    summary.update({k: rows[-1][k] for k in ("score", "gold", "kl", "length", "eos_rate") if k in rows[-1]})
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    first, last = rows[0], rows[-1]
    gold = f", gold {first['gold']:+.3f} -> {last['gold']:+.3f}" if "gold" in last else ""
    kl = "not tracked" if last["kl"] is None else f"{last['kl']:.2f}"
    print(
        f"score {first['score']:+.3f} -> {last['score']:+.3f}{gold}, KL {kl}; rollouts {rollout_s:.0f} s, training {seconds - rollout_s:.0f} s"
    )


def best_of_n(cfg: BestOfNConfig) -> dict:
    """Sample n per prompt, keep the best by reward; the KL to the sampler is log n - (n-1)/n."""
    prepare(cfg)
    if cfg.n < 1:
        raise ValueError("--n must be at least 1")
    model, tokenizer = load_policy(cfg.model)
    scorer = Scorer(cfg.reward)
    t0 = time.perf_counter()
    samples = sample_shared(model, tokenizer, prompts_from(cfg.prompts, cfg.limit, tokenizer), cfg.gen, n=cfg.n, progress=not cfg.json)
    mine = distributed.shard(samples)  # under torchrun each process scores a share
    scores = torch.tensor(distributed.gather(scorer.score_all(mine, tokenizer.pad_token_id).tolist() if mine else []))
    best = losses.pick_best(scores, cfg.n).tolist()
    chosen = [samples[i] for i in best]
    result = {"score": float(scores[best].mean()), "score_all": float(scores.mean()), "kl": losses.best_of_n_kl(cfg.n), "best_of": cfg.n}
    if gold_or_none(chosen) is not None:  # lists-world prompts: the gold metrics too
        result.update(evaluate_samples(chosen))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if cfg.out and distributed.is_main():
        rows = [{"prompt": s.prompt, "completion": s.completion, "ended": s.ended, "score": float(scores[i])} for s, i in zip(chosen, best)]
        write_jsonl(cfg.out, rows)  # no message: with --json, stdout holds the JSON object alone
    if cfg.json:
        print(json.dumps(result))
    else:
        gold = f", gold {result['gold']:+.3f} ± {result['gold_ci95']:.3f}" if "gold" in result else ""
        print(f"best-of-{cfg.n}: score {result['score']:+.3f} (mean of all {result['score_all']:+.3f}){gold}, KL {result['kl']:.3f} nats")
    return result
