"""``preftune reward`` and ``preftune score``: train (and evaluate) a reward model; score rows with one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import distributed
from ..atomic import write_atomic
from ..config import RewardConfig, ScoreConfig
from ..data import Comparison, Ranking, load_sft, read_rows
from ..evaluate import evaluate_reward_model, format_reward_report
from ..loop import train
from ..methods.reward import RewardTraining, score_texts, to_units
from ..models import RewardModel, add_lora, build_reward_model, load_reward_model, save_model
from .common import comparisons, emit_rows, global_batch_size, one_run_per_directory, prepare, record_config


@one_run_per_directory
def reward(cfg: RewardConfig) -> dict:
    """Train a reward model, centre it on reference samples, save it, and evaluate it."""
    prepare(cfg)
    out = Path(cfg.train.out)
    rm, tokenizer = build_reward_model(cfg.model, seed=cfg.train.seed, pool=cfg.pool)
    if cfg.lora:
        rm = RewardModel(add_lora(rm.model, cfg.lora_r, cfg.lora_alpha, seed=cfg.train.seed, task="SEQ_CLS"))
    records, held_records = comparisons(cfg.data, cfg.eval_data, 0.1, cfg.train.seed, tokenizer)
    if cfg.world_eval and not held_records:
        raise ValueError(f"{cfg.data}: too few comparisons to hold any out for the evaluation; give --eval-data, or --no-world-eval")
    record_config(cfg, "reward")  # after the data is read: a bad file leaves the directory as it was

    def units(rs):
        return to_units(rs, tokenizer, cfg.tokens.max_length, cfg.tokens.max_prompt_length, cfg.use_strength)

    method = RewardTraining(
        units(records),
        units(held_records),
        tokenizer.pad_token_id,
        global_batch_size(cfg.train),
        cfg.train.seed,
        cfg.margin,
        cfg.ranking_loss,
    )
    print(f"reward: {len(records):,} training and {len(held_records):,} held-out comparisons -> {out}")
    train(rm, method, cfg.train)
    if not distributed.is_main():  # centring, saving and evaluation: one process
        return {}
    # Centre: reference-policy samples (the compared completions) score 0 on average.
    refs = sorted({(r.prompt, c) for r in records for c in _completions(r)})[:2000]
    raw = score_texts(rm, tokenizer, refs, cfg.tokens) + rm.offset
    rm.config.preftune_reward_offset = float(raw.mean())
    print(f"centred: offset {rm.offset:+.4f} (mean raw score of {len(refs)} reference samples)")
    result = {"held_out_accuracy": method.evaluate(rm.eval()).get("accuracy")}  # None without held-out comparisons
    if cfg.world_eval:
        with torch.no_grad():
            result = evaluate_reward_model(rm, tokenizer, held_records, cfg.tau, cfg.model, cfg.eval_prompts, cfg.tokens)
        print(format_reward_report(result))
    # eval.json before the model: a finished model (its config.json, moved in last) has its evaluation beside it
    write_atomic(out / "eval.json", json.dumps(result, indent=2) + "\n")
    save_model(rm.model, tokenizer, out)
    return result


def _completions(r: Comparison | Ranking) -> tuple[str, ...]:
    return r.completions if isinstance(r, Ranking) else (r.chosen, r.rejected)


def score(cfg: ScoreConfig) -> list[float]:
    prepare(cfg)
    rm, tokenizer = load_reward_model(cfg.reward)
    rows = [row for _, row in read_rows(cfg.data)]
    mine = distributed.shard(
        [(r.prompt, r.completion) for r in load_sft(cfg.data, tokenizer, empty_completions=True)]
    )  # all of them in one process
    scores = distributed.gather(score_texts(rm, tokenizer, mine).tolist())
    if distributed.is_main():
        emit_rows([{**row, "score": s} for row, s in zip(rows, scores)], cfg.out, "scores")
    return scores
