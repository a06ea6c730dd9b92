"""RL throughput of preftune on the shared workload, with the settings of its TRL scripts.

    python bench/bench_rl.py --algo rloo|grpo|ppo [--iterations 15]

- ``rloo`` / ``grpo`` (bench_rloo.py): 8 prompts × 4 samples per step, 48 new tokens, temperature 1,
  reward = the count of "great" in the completion, one optimiser step per rollout batch; β 0.05 for
  RLOO (a KL penalty against a frozen reference), 0 for GRPO (TRL's defaults; like TRL, no reference
  then: ``--no-track-kl``); lr 1e-6.
- ``ppo`` (bench_ppo.py, TRL 1.12): 32 prompts × 1 sample per update, 48 new tokens, 4 PPO epochs of one
  minibatch, β 0.05, lr 3e-6; reward and value model = the GPT-2 backbone with a random scalar head.

Common: fp32, 2 threads, no EOS penalty, dropout off; the first 2 iterations are untimed. Prints one
JSON line: rollouts per second, generation and the rest (scoring, reference, targets, update) in
seconds over the timed iterations, peak RSS of this process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from preftune.config import RLConfig, SamplingConfig, TokenConfig, TrainConfig
from preftune.data import load_prompts
from preftune.loop import steps_per_epoch, train
from preftune.methods.algorithms import build_algorithm
from preftune.methods.rl import RLHF, Scorer
from preftune.models import build_reward_model, load_policy, n_params, save_model

WARMUP = 2
SETTINGS = {  # algo: (prompts per iteration, samples per prompt, β, lr, update epochs)
    "rloo": (8, 4, 0.05, 1e-6, 1),
    "grpo": (8, 4, 0.0, 1e-6, 1),
    "ppo": (32, 1, 0.05, 3e-6, 4),
}


class CountGreat(Scorer):
    """The workload's reward: how often "great" occurs in the completion."""

    def __init__(self):
        self.gold, self.rm = False, None

    def __call__(self, samples, batch) -> torch.Tensor:
        return torch.tensor([float(s.completion.lower().count("great")) for s in samples])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=sorted(SETTINGS), required=True)
    ap.add_argument("--assets", required=True, help="the workload's assets (make_assets.py --out), tokenizer copied beside the model")
    ap.add_argument("--iterations", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(a.assets)
    prompts_per_iter, k, beta, lr, epochs = SETTINGS[a.algo]
    rows = prompts_per_iter * k
    with tempfile.TemporaryDirectory() as tmp:
        reward = "bench"
        if a.algo == "ppo":  # a random-head GPT-2 reward model, which PPO's value model starts from
            rm, tok = build_reward_model(root / "gpt2-tiny")
            save_model(rm.model, tok, Path(tmp) / "rm")
            reward = str(Path(tmp) / "rm")
        cfg = RLConfig(
            model=str(root / "gpt2-tiny"),
            reward=reward,
            prompts=str(root / "prompts.jsonl"),
            algo=a.algo,
            iterations=a.iterations,
            prompts_per_iter=prompts_per_iter,
            k=k,
            beta=beta,
            eos_penalty=0.0,
            track_kl=beta > 0,  # TRL's GRPO at β = 0 loads no reference and runs no reference pass; neither do we
            update_epochs=epochs,
            train=TrainConfig(
                out=tmp, lr=lr, batch_size=rows, warmup=0.0, schedule="constant", save_every=0, progress=False, dropout=False
            ),
            gen=SamplingConfig(max_new_tokens=48, temperature=1.0),
            tokens=TokenConfig(max_length=128, max_prompt_length=64),
        )
        policy, tokenizer = load_policy(cfg.model)
        reference = load_policy(cfg.model)[0].requires_grad_(False).eval() if cfg.track_kl else None
        scorer = Scorer(reward) if a.algo == "ppo" else CountGreat()
        algorithm = build_algorithm(cfg)
        method = RLHF(cfg, algorithm, policy, tokenizer, reference, scorer, load_prompts(cfg.prompts))
        per_iteration = steps_per_epoch(method, cfg.train)
        stamps: dict[int, float] = {}
        train(
            algorithm.trained(policy),
            method,
            replace(cfg.train, epochs=cfg.iterations, max_steps=0),
            on_step=lambda s: stamps.__setitem__(s, time.perf_counter()),
        )
        done = method.iterations
    timed = range(WARMUP, a.iterations)
    wall = stamps[a.iterations * per_iteration] - stamps[WARMUP * per_iteration]
    generate = sum(done[i]["sample_s"] for i in timed)
    # Model FLOPs per rollout token: 2·P to generate it, 2·P for the reference, 6·P per update epoch;
    # PPO adds the reward model (2·P), the value model at rollout time (2·P) and its updates (6·P each).
    P = n_params(policy)
    per_token = 2 * P + 2 * P * cfg.track_kl + 6 * P * epochs + (2 * P + 2 * P + 6 * P * epochs if a.algo == "ppo" else 0)
    prompt_tokens = statistics.fmean(min(len(tokenizer(q)["input_ids"]), 64) for q in load_prompts(cfg.prompts))
    tokens = sum(rows * (prompt_tokens + done[i]["length"]) for i in timed)
    print(
        json.dumps(
            {
                "bench": a.algo,
                "rollouts_per_s": len(timed) * rows / wall,
                "wall_s_timed": wall,
                "generate_s_timed": generate,
                "rest_s_timed": wall - generate,
                "timed_iterations": len(timed),
                "rollouts_per_iteration": rows,
                "params_policy": P,
                "model_gflops_per_s": per_token * tokens / wall / 1e9,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "final_score": done[a.iterations - 1]["score"],
            }
        )
    )


if __name__ == "__main__":
    main()
