"""``preftune rl`` and ``preftune best-of-n``: RLHF against a reward model with a KL leash to pi_SFT.

One iteration = one rollout batch: sample ``k`` completions for each of ``prompts_per_iter``
prompts with the current policy (KV cache, dropout off), score them (reward model or the world's
gold reward, minus ``eos_penalty`` for a completion that never emits EOS), compute the KL to the
frozen pi_SFT per token, turn that into advantages, then take optimiser steps in the one loop
(:func:`preftune.loop.train`), where a "loop epoch" is one rollout iteration.

Algorithms (``--algo``), each a pure loss from :mod:`preftune.losses`:

- ``raft``: keep the top ``keep`` of each prompt's ``k`` samples by shaped reward, SFT on them.
- ``reinforce``: sequence reward ``R = score - β·KL``, advantage ``R - b`` with ``b`` a moving
  average of past batch means.
- ``rloo``: the same ``R``; each sample's baseline is the mean ``R`` of its prompt's other k-1.
- ``ppo``: per-token reward ``-β·kl_t`` plus the score at the last token; a value model started
  from the reward model; GAE (γ, λ); whitened advantages; clipped ratio and clipped value loss;
  ``update_epochs`` passes of minibatches per rollout; optional pretraining-loss mix (PPO-ptx).

Each rollout (tensors, statistics, baseline and β) is saved to ``out/rollouts/iter-NNNNN.pt``
before it is trained on, so a killed run resumes from its checkpoint on exactly the same data.
Per-iteration statistics go to ``out/iterations.jsonl``; per-step training metrics to
``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import __version__, losses
from .config import GenerateConfig, TokenConfig, TrainConfig, doc, save_config
from .data import Batch, collate, encode_text, load_prompts, load_texts, write_jsonl
from .evaluate import evaluate_samples
from .logprobs import completion_logps
from .loop import StepLoss, latest_checkpoint, train
from .models import RewardModel, build_reward_model, load_policy, load_reward_model, save_model
from .rollout import Sample, sample
from .stages import set_threads
from .world import lists

ALGOS = ("raft", "reinforce", "rloo", "ppo")


@dataclass(frozen=True)
class RLConfig:
    model: str = doc("", "pi_SFT: the policy to start from and the frozen KL reference")
    reward: str = doc("", "reward model directory (from `preftune reward`), or 'gold' for the world's gold reward")
    prompts: str = doc("", "training prompts, {'prompt'} rows")
    algo: str = doc("rloo", "optimiser", choices=ALGOS)
    iterations: int = doc(40, "rollout batches to collect and train on")
    prompts_per_iter: int = doc(32, "prompts per rollout batch")
    k: int = doc(4, "completions per prompt (RLOO's k, RAFT's m)")
    keep: int = doc(1, "raft: completions kept per prompt (the top by reward)")
    beta: float = doc(0.1, "KL penalty coefficient β (0 = no leash)")
    kl_estimator: str = doc("k1", "per-token KL estimate in the reward: k1 = log π/π_ref, k3 = (r-1) - log r", choices=("k1", "k3"))
    target_kl: float = doc(0.0, "adaptive KL controller: the sequence KL to steer to (0 = fixed β)")
    kl_horizon: int = doc(10000, "adaptive KL controller horizon, in sequences")
    eos_penalty: float = doc(1.0, "subtracted from the score of a completion that never emits EOS")
    whiten_rewards: bool = doc(False, "whiten the reward model's scores over each rollout batch (before the KL penalty)")
    baseline_decay: float = doc(0.9, "reinforce: moving-average baseline b <- decay·b + (1-decay)·mean R")
    update_epochs: int = doc(0, "passes over each rollout batch (0 = the algorithm's default: 2 for ppo, 1 otherwise)")
    clip: float = doc(0.2, "ppo: policy ratio clip ε")
    value_clip: float = doc(0.2, "ppo: value clip around the rollout's values")
    value_coef: float = doc(0.1, "ppo: weight of the value loss")
    gamma: float = doc(1.0, "ppo: discount")
    lam: float = doc(0.95, "ppo: GAE λ")
    ptx_data: str = doc("", "ppo-ptx: pretraining texts, {'text'} rows, mixed into the loss")
    ptx_coef: float = doc(0.0, "ppo-ptx: weight of the pretraining NLL")
    # lr 1e-4: at 3e-4 REINFORCE's KL ran away (14.6 nats, gold below pi_SFT) in the demo; at 1e-4
    # every algorithm lifted gold on the demo's reward model (README, "RLHF").
    # train before gen: --batch-size and --seed are the trainer's; sampling's are --gen-batch-size, --gen-seed
    train: TrainConfig = TrainConfig(out="runs/rl", lr=1e-4, batch_size=64, warmup=0.0, schedule="constant", save_every=20, log_every=1)
    gen: GenerateConfig = GenerateConfig(max_new_tokens=32, temperature=1.0)
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)


def default_update_epochs(cfg: RLConfig) -> int:
    return cfg.update_epochs or (2 if cfg.algo == "ppo" else 1)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || π) = log n - (n-1)/n nats (Stiennon et al. 2020; exact for distinct rewards)."""
    return math.log(n) - (n - 1) / n


def adaptive_beta(beta: float, kl: float, target: float, n_sequences: int, horizon: int) -> float:
    """Ziegler et al.'s proportional controller: β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)."""
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return beta * (1.0 + error * n_sequences / horizon)


# ------------------------------------------------------------------------------------- scoring


class Scorer:
    """The reward: a trained reward model, or the lists world's gold reward (``'gold'``)."""

    def __init__(self, spec: str):
        if not spec:
            raise ValueError("--reward is required: a reward model directory or 'gold'")
        self.gold = spec == "gold"
        self.rm: RewardModel | None = None
        if not self.gold:
            self.rm, _ = load_reward_model(spec)
            self.rm.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, samples: list[Sample], batch: Batch) -> torch.Tensor:
        if self.gold:
            return torch.tensor([lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples])
        return self.rm(batch.input_ids, batch.attention_mask)


def gold_or_none(samples: list[Sample]) -> list[float] | None:
    """Gold rewards when every prompt is a lists-world prompt, else None."""
    try:
        return [lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples]
    except (ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------- the method


class ActorCritic(torch.nn.Module):
    """PPO's trained pair, one module so the loop checkpoints both: the policy and a value model."""

    def __init__(self, policy: torch.nn.Module, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value


class RLHF:
    """The :class:`preftune.loop.Method` of every RL algorithm; loop epoch e = rollout iteration e."""

    def __init__(self, cfg: RLConfig, policy, tokenizer, reference, scorer: Scorer, prompts: list[str], ptx: list | None = None):
        self.cfg, self.policy, self.tok, self.ref, self.scorer = cfg, policy, tokenizer, reference, scorer
        self.prompts, self.ptx = prompts, ptx or []
        self.out = Path(cfg.train.out)
        self.dir = self.out / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.epochs = default_update_epochs(cfg)
        self.temperature = cfg.gen.temperature or 1.0
        self.pad = tokenizer.pad_token_id
        self._cached: tuple[int, dict, list] | None = None
        self._state: tuple[int, dict] | None = None  # (iteration, β and baseline after it)
        self._rows: dict[int, dict] = {}
        if cfg.train.resume and (self.out / "iterations.jsonl").exists():  # keep the rows of rollouts that survive
            for line in (self.out / "iterations.jsonl").read_text().splitlines():
                row = json.loads(line)
                if self._file(row["iteration"]).exists():
                    self._rows[row["iteration"]] = row
        self._last_end: float | None = None

    # -- rollouts ---------------------------------------------------------------------------

    def _prompts_for(self, iteration: int) -> list[str]:
        """``prompts_per_iter`` prompts, walking seeded permutations of the prompt set."""
        n, per = len(self.prompts), self.cfg.prompts_per_iter
        out = []
        for j in range(iteration * per, (iteration + 1) * per):
            order = list(range(n))
            random.Random(f"{self.cfg.train.seed}-prompts-{j // n}").shuffle(order)
            out.append(self.prompts[order[j % n]])
        return out

    def _file(self, iteration: int) -> Path:
        return self.dir / f"iter-{iteration:05d}.pt"

    def _state_before(self, iteration: int) -> dict:
        """β and baseline after the previous iteration: in memory, or from its file after a resume."""
        if iteration == 0:
            return {"beta": self.cfg.beta, "baseline": None}
        if self._state is not None and self._state[0] == iteration - 1:
            return self._state[1]
        return torch.load(self._file(iteration - 1), weights_only=False)["state"]

    @torch.no_grad()
    def collect(self, iteration: int) -> dict:
        """Sample, score and compute advantages for one iteration; saved before it is used."""
        cfg = self.cfg
        state = self._state_before(iteration)
        beta = state["beta"]
        t0 = time.perf_counter()
        gen = replace(cfg.gen, seed=cfg.gen.seed * 100003 + iteration)
        samples = sample(self.policy, self.tok, self._prompts_for(iteration), gen, n=cfg.k, max_prompt_length=cfg.tokens.max_prompt_length)
        t1 = time.perf_counter()
        batch = collate([s.encoded() for s in samples], self.pad)
        mask = batch.completion_mask[:, 1:]
        old = torch.zeros(mask.shape)
        for i, s in enumerate(samples):  # the sampling log-probs, placed where the training forward puts them
            old[i, mask[i]] = torch.tensor(s.token_logps)
        ref = completion_logps(self.ref, batch, self.temperature).token_logps
        score = self.scorer(samples, batch).float()
        ended = torch.tensor([s.ended for s in samples])
        score = score - cfg.eos_penalty * (~ended).float()
        k1, k3 = losses.kl_k1(old, ref) * mask, losses.kl_k3(old, ref) * mask
        kl_tok = k1 if cfg.kl_estimator == "k1" else k3
        used = losses.whiten(score) if cfg.whiten_rewards else score
        seq_reward = used - beta * kl_tok.sum(-1)  # (N,)

        data = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask, "old": old}
        stats: dict[str, float] = {}
        new_state = {"beta": beta, "baseline": state["baseline"]}
        if cfg.algo == "raft":
            grouped = seq_reward.view(-1, cfg.k)
            top = grouped.topk(min(cfg.keep, cfg.k), dim=-1).indices + torch.arange(grouped.shape[0])[:, None] * cfg.k
            keep = top.flatten().sort().values
            data = {key: v[keep] for key, v in data.items()}
            stats["kept_score"] = float(score[keep].mean())
        elif cfg.algo == "reinforce":
            b = float(seq_reward.mean()) if state["baseline"] is None else state["baseline"]
            data["adv"] = seq_reward - b
            new_state["baseline"] = cfg.baseline_decay * b + (1 - cfg.baseline_decay) * float(seq_reward.mean())
            stats["baseline"] = b
        elif cfg.algo == "rloo":
            grouped = seq_reward.view(-1, cfg.k)
            data["adv"] = (grouped - losses.leave_one_out_baseline(grouped)).flatten()
        else:  # ppo
            values = self.value.token_scores(batch.input_ids, batch.attention_mask)[:, :-1] * mask
            rewards = -beta * kl_tok
            last = mask.long().cumsum(-1).argmax(-1)  # index of each row's last completion token
            rewards[torch.arange(len(samples)), last] += used
            adv, returns = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
            data.update(adv=losses.whiten(adv, mask), returns=returns, values=values)
            var = returns[mask].var()
            stats["explained_variance"] = float(1 - (returns - values)[mask].var() / var) if var > 0 else float("nan")
            stats["value_mean"] = float(values[mask].mean())

        seq_kl = k1.sum(-1)
        if cfg.target_kl > 0:
            new_state["beta"] = adaptive_beta(beta, float(seq_kl.mean()), cfg.target_kl, len(samples), cfg.kl_horizon)
        gold = gold_or_none(samples)
        t2 = time.perf_counter()
        stats.update(
            iteration=iteration,
            beta=beta,
            score=float(score.mean()),  # the proxy (reward model) or gold, with the EOS penalty
            reward=float(seq_reward.mean()),  # score - β·KL (whitened if asked)
            kl=float(seq_kl.mean()),  # k1, summed per sequence: Monte Carlo KL(π || π_SFT)
            kl_k3=float(k3.sum(-1).mean()),
            entropy=float(-old.sum(-1).mean()),  # Monte Carlo sequence entropy, -E[log π(y)]
            length=float(mask.sum(-1).float().mean()),
            eos_rate=float(ended.float().mean()),
            sample_s=round(t1 - t0, 3),
            score_s=round(t2 - t1, 3),
        )
        if gold is not None:
            stats["gold"] = statistics.fmean(gold)
        blob = {"data": data, "stats": stats, "state": new_state}
        tmp = self._file(iteration).with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self._file(iteration))
        return blob

    # -- the Method protocol ----------------------------------------------------------------

    def batches(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[2]
        now = time.perf_counter()
        if self._last_end is not None and epoch - 1 in self._rows:
            self._rows[epoch - 1]["train_s"] = round(now - self._last_end, 3)
        path = self._file(epoch)
        blob = torch.load(path, weights_only=False) if path.exists() else self.collect(epoch)
        self._rows[epoch] = dict(blob["stats"])
        self._state = (epoch, blob["state"])
        self._write_rows()
        n = blob["data"]["input_ids"].shape[0]
        micro = []
        for e in range(self.epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch * 31 + e))
            micro += [(epoch, order[i : i + self.cfg.train.batch_size]) for i in range(0, n, self.cfg.train.batch_size)]
        self._cached = (epoch, blob["data"], micro)
        self._last_end = time.perf_counter()
        return micro

    def _write_rows(self) -> None:
        write_jsonl(self.out / "iterations.jsonl", [self._rows[i] for i in sorted(self._rows)])

    def _micro(self, epoch: int, idx: torch.Tensor) -> dict:
        if self._cached is None or self._cached[0] != epoch:
            self.batches(epoch)
        data = self._cached[1]
        rows = {k: v[idx] for k, v in data.items()}
        width = int(rows["attention_mask"].sum(-1).max())  # right padding: drop all-pad columns
        return {
            k: (v[:, :width] if k in ("input_ids", "attention_mask", "completion_mask") else v[:, : width - 1] if v.ndim == 2 else v)
            for k, v in rows.items()
        }

    def loss(self, model, item: tuple[int, torch.Tensor]) -> StepLoss:
        epoch, idx = item
        d = self._micro(epoch, idx)
        policy = model.policy if isinstance(model, ActorCritic) else model
        batch = Batch(d["input_ids"], d["attention_mask"], d["completion_mask"])
        lp = completion_logps(policy, batch, self.temperature, keep_logits=True)
        mask = lp.mask
        with torch.no_grad():
            logp_all = torch.log_softmax(lp.logits.float() / self.temperature, -1)
            entropy = float(-(logp_all.exp() * logp_all).sum(-1)[mask].mean())
            approx_kl = float(losses.kl_k3(lp.token_logps, d["old"])[mask].mean())  # k3 of π_new against π_old
        metrics = {"entropy": entropy, "approx_kl": approx_kl}
        n_tok = mask.sum()
        if self.cfg.algo == "raft":
            loss, count = losses.nll(lp.token_logps, mask)
        elif self.cfg.algo in ("reinforce", "rloo"):
            loss, count = losses.policy_gradient(lp.logps, d["adv"]).sum(), torch.tensor(float(len(idx)))
        else:
            pg, clipped = losses.ppo_clip(lp.token_logps, d["old"], d["adv"], self.cfg.clip)
            values = model.value.token_scores(batch.input_ids, batch.attention_mask)[:, :-1]
            vloss = losses.clipped_value_loss(values, d["values"], d["returns"], self.cfg.value_clip)
            loss = ((pg + self.cfg.value_coef * vloss) * mask).sum()
            count = n_tok
            metrics.update(
                clipfrac=float(clipped[mask].float().mean()),
                value_loss=float(vloss.detach()[mask].mean()),
                policy_loss=float(pg.detach()[mask].mean()),
            )
        if self.ptx and self.cfg.ptx_coef > 0:
            rng = random.Random(f"{self.cfg.train.seed}-ptx-{epoch}-{int(idx[0])}")
            ptx_batch = collate(rng.sample(self.ptx, min(len(idx), len(self.ptx))), self.pad)
            ptx_lp = completion_logps(policy, ptx_batch)
            s, n = losses.nll(ptx_lp.token_logps, ptx_lp.mask)
            loss = loss + self.cfg.ptx_coef * (s / n) * float(count)  # the loop divides by count
            metrics["ptx_nll"] = float(s.detach() / n)
        return StepLoss(loss, count, metrics)

    def evaluate(self, model) -> dict[str, float]:
        return {}


# --------------------------------------------------------------------------------------- command


def rl(cfg: RLConfig) -> Path:
    set_threads()
    if cfg.algo not in ALGOS:
        raise ValueError(f"--algo must be one of {ALGOS}, got {cfg.algo!r}")
    if cfg.algo == "rloo" and cfg.k < 2:
        raise ValueError("--algo rloo needs --k 2 or more (the baseline is the other samples' mean)")
    if cfg.algo == "ppo" and cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise ValueError("--ptx-coef needs --ptx-data")
    out = Path(cfg.train.out)
    policy, tokenizer = load_policy(cfg.model)
    reference, _ = load_policy(cfg.model)
    reference.requires_grad_(False).eval()
    scorer = Scorer(cfg.reward)
    prompts = load_prompts(cfg.prompts)
    ptx = [encode_text(tokenizer, t, cfg.tokens.max_length) for t in load_texts(cfg.ptx_data)] if cfg.ptx_data else None
    save_config(cfg, out / "run_config.json", command="rl", preftune=__version__)

    n_seq = cfg.prompts_per_iter * (min(cfg.keep, cfg.k) if cfg.algo == "raft" else cfg.k)
    steps_per_iter = default_update_epochs(cfg) * math.ceil(math.ceil(n_seq / cfg.train.batch_size) / cfg.train.grad_accum)
    save_every = math.ceil(max(1, cfg.train.save_every) / steps_per_iter) * steps_per_iter  # checkpoints at iteration ends
    train_cfg = replace(cfg.train, max_steps=cfg.iterations * steps_per_iter, save_every=save_every)

    ckpt = latest_checkpoint(out)
    if cfg.train.resume and ckpt is not None:  # rollouts past the checkpoint came from weights we no longer have
        done = json.loads((ckpt / "state.json").read_text())["epoch"]
        for f in (out / "rollouts").glob("iter-*.pt"):
            if int(f.stem.split("-")[1]) >= done:
                f.unlink()
    elif not cfg.train.resume:
        for f in (out / "rollouts").glob("iter-*.pt") if (out / "rollouts").exists() else []:
            f.unlink()

    model = policy
    method = RLHF(cfg, policy, tokenizer, reference, scorer, prompts, ptx)
    if cfg.algo == "ppo":  # the value model starts from the reward model (from pi_SFT with a fresh head under --reward gold)
        value = build_reward_model(cfg.model, cfg.train.seed)[0] if scorer.gold else load_reward_model(cfg.reward)[0]
        model = ActorCritic(policy, value.train())
        method.value = value
    leash = f"β {cfg.beta} ({cfg.kl_estimator})" + (f", adaptive to KL {cfg.target_kl}" if cfg.target_kl else "")
    print(
        f"{cfg.algo}: {cfg.iterations} iterations × {cfg.prompts_per_iter} prompts × {cfg.k} samples, {steps_per_iter} steps each, "
        f"reward {'gold' if scorer.gold else cfg.reward}, {leash} -> {out}"
    )
    t0 = time.perf_counter()
    train(model, method, train_cfg)
    method.batches(cfg.iterations)  # the final policy's own rollout: its score, gold and KL close the curve
    save_model(policy, tokenizer, out)
    rows = [method._rows[i] for i in sorted(method._rows)]
    gen_s = sum(r["sample_s"] + r["score_s"] for r in rows)
    total = time.perf_counter() - t0
    summary = {"iterations": len(rows) - 1, "seconds": round(total, 1), "rollout_s": round(gen_s, 1), "train_s": round(total - gen_s, 1)}
    summary.update({k: rows[-1][k] for k in ("score", "gold", "kl", "length", "eos_rate") if k in rows[-1]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    first, last = rows[0], rows[-1]
    gold = f", gold {first['gold']:+.3f} -> {last['gold']:+.3f}" if "gold" in last else ""
    print(
        f"score {first['score']:+.3f} -> {last['score']:+.3f}{gold}, KL {last['kl']:.2f}; rollouts {gen_s:.0f} s, training {total - gen_s:.0f} s"
    )
    return out


# ------------------------------------------------------------------------------------ best-of-n


@dataclass(frozen=True)
class BestOfNCommand:
    model: str = doc("", "policy to sample from (pi_SFT)")
    reward: str = doc("", "reward model directory, or 'gold'")
    prompts: str = doc("", "prompts, {'prompt'} rows")
    n: int = doc(16, "samples per prompt; the best by reward is returned")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    out: str = doc("", "write the chosen {'prompt','completion','ended','score'} rows here")
    json: bool = doc(False, "print one JSON object instead of the summary")
    gen: GenerateConfig = GenerateConfig()


def score_samples(scorer: Scorer, samples: list[Sample], pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """Scores (N,) of samples, batched."""
    chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    return torch.cat([scorer(c, collate([s.encoded() for s in c], pad_id)) for c in chunks])


def pick_best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices of the highest score in each consecutive group of ``n`` (ties: the first)."""
    return scores.view(-1, n).argmax(-1) + torch.arange(scores.numel() // n) * n


def best_of_n(cfg: BestOfNCommand) -> dict:
    """Sample n per prompt, keep the best by reward; the KL to the sampler is log n - (n-1)/n."""
    set_threads()
    if cfg.n < 1:
        raise ValueError("--n must be at least 1")
    model, tokenizer = load_policy(cfg.model)
    scorer = Scorer(cfg.reward)
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[: cfg.limit] if cfg.limit else prompts
    t0 = time.perf_counter()
    samples = sample(model, tokenizer, prompts, cfg.gen, n=cfg.n, progress=not cfg.json)
    scores = score_samples(scorer, samples, tokenizer.pad_token_id)
    best = pick_best(scores, cfg.n).tolist()
    chosen = [samples[i] for i in best]
    result = {"score": float(scores[best].mean()), "score_all": float(scores.mean()), "kl": best_of_n_kl(cfg.n), "best_of": cfg.n}
    if gold_or_none(chosen) is not None:  # lists-world prompts: the gold metrics too
        result.update(evaluate_samples(chosen))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if cfg.out:
        write_jsonl(
            cfg.out,
            [{"prompt": s.prompt, "completion": s.completion, "ended": s.ended, "score": float(scores[i])} for s, i in zip(chosen, best)],
        )
    if cfg.json:
        print(json.dumps(result))
    else:
        gold = f", gold {result['gold']:+.3f} ± {result['gold_ci95']:.3f}" if "gold" in result else ""
        print(f"best-of-{cfg.n}: score {result['score']:+.3f} (mean of all {result['score_all']:+.3f}){gold}, KL {result['kl']:.3f} nats")
    return result
