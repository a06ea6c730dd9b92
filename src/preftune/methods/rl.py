"""RLHF as a method of the one loop: a loop epoch is one rollout iteration.

Each iteration (:meth:`RLHF.collect`) runs the stages of InstructGPT's step 3:

1. **generate** ``k`` completions for each of ``prompts_per_iter`` prompts with the current policy
   (KV cache, dropout off), keeping the sampling log-probs as the "old" log-probs;
2. **score** them with the reward model or the world's gold reward, minus ``eos_penalty`` for a
   completion that never emits EOS (whitened over the batch if asked);
3. **compare** with the frozen reference: per-token KL (k1 or k3) and the penalised reward
   ``R = score - β·Σ kl``;
4. **estimate targets** with the algorithm (:mod:`preftune.methods.algorithms`): advantages,
   returns, or the rows to keep;
5. **optimise**: the loop takes ``update_epochs`` passes of micro-batches over the targets.

Each rollout (tensors, statistics, β and baseline) is saved to ``out/rollouts/iter-NNNNN.pt``
before it is trained on, so a killed run resumes from its checkpoint on exactly the same data.
Per-iteration statistics go to ``out/iterations.jsonl`` (:attr:`RLHF.iterations`), and with
``--train.report-to`` to TensorBoard (``out/tensorboard/iterations``) or W&B (:class:`preftune.tracking.Tracker`).
Besides the proxy, KL, entropy, length and EOS rate, each row holds ``sampler_gap``: how far the
trainer's log-probs of sampled tokens are from the sampler's (they should agree to rounding; a gap
means the policy trains on tokens it did not sample, as in trl#4159), and with ``monitor_rewards``
``disagreement``, the spread of several reward models' scores of the same samples. The loop's alarms
read them as ``rollout/*`` (:meth:`RLHF.monitors`, :func:`preftune.alarms.rl_rules`).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import distributed, faults, losses
from ..alarms import Alarms
from ..atomic import save_atomic, write_jsonl
from ..config import RLConfig
from ..data import Batch, Encoded, collate
from ..evaluate import mean_ci
from ..logprobs import completion_logps, model_device
from ..loop import StepLoss
from ..models import AdaptersOff, load_reward_model
from ..rollout import Rollout, Sample, sample
from ..tracking import Tracker
from ..world import lists
from .algorithms import Algorithm
from .reward import score_samples

GAP_ROWS = 16  # samples per rollout whose sampler / trainer log-prob gap is measured (one extra forward over them)
MONITORED = ("score", "kl", "entropy", "length", "eos_rate", "sampler_gap", "disagreement")  # rollout/* for the alarms


class Scorer:
    """The reward: a trained reward model, or the lists world's gold reward (``'gold'``)."""

    def __init__(self, spec: str, dtype: torch.dtype = torch.float32):
        if not spec:
            raise ValueError("--reward is required: a reward model directory or 'gold'")
        self.gold = spec == "gold"
        self.rm = None if self.gold else load_reward_model(spec, dtype)[0].requires_grad_(False)

    @torch.no_grad()
    def __call__(self, samples: list[Sample], batch: Batch) -> torch.Tensor:
        if self.gold:
            return torch.tensor([lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples])
        return self.rm(batch.input_ids, batch.attention_mask, batch.completion_mask)

    def score_all(self, samples: list[Sample], pad_id: int, batch_size: int = 256) -> torch.Tensor:
        """Scores (N,) of any number of samples, in batches."""
        if self.gold:
            return torch.tensor([lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples])
        return score_samples(self.rm, samples, pad_id, batch_size)


def gold_or_none(samples: list[Sample]) -> list[float] | None:
    """Gold rewards when every prompt is a lists-world prompt, else None."""
    try:
        return [lists.gold_reward(s.prompt, s.completion, s.ended) for s in samples]
    except (ValueError, KeyError):
        return None


class RLHF:
    """The :class:`preftune.loop.Method` of every RL algorithm; loop epoch e = rollout iteration e.

    ``start`` is the iteration the loop resumes at (0 for a fresh run): saved rollouts and
    statistics from iteration ``start`` on came from weights that are gone and are dropped.
    """

    def __init__(
        self,
        cfg: RLConfig,
        algorithm: Algorithm,
        policy,
        tokenizer,
        reference,
        scorer: Scorer,
        prompts: list[str],
        *,
        ptx: list[Encoded] | None = None,
        start: int = 0,
        judges: list | None = None,
        alarms: Alarms | None = None,
    ):
        self.cfg, self.algorithm, self.policy, self.tokenizer = cfg, algorithm, policy, tokenizer
        self.reference, self.scorer, self.prompts = reference, scorer, prompts
        self.sharded = None  # under FSDP, the sharded copy the loop trains (:meth:`bind`)
        self.ptx = ptx or []  # PPO-ptx: encoded pretraining texts
        self.judges = judges or []  # reward models that only watch (--monitor-rewards)
        self.alarms = alarms
        self.temperature = cfg.gen.temperature or 1.0
        self.out = Path(cfg.train.out)
        self.rollout_dir = self.out / "rollouts"
        self._rows: dict[int, dict] = {}
        self._current: tuple[int, Rollout, list] | None = None  # (iteration, targets, micro-batches)
        self._carry: tuple[int, dict] | None = None  # (iteration, β and baseline after it)
        self._trained_since: float | None = None
        self.start = start
        self._forget_from(start)
        # --train.report-to: iteration rows as iteration/NAME at step = iteration, in a directory of
        # their own (TensorBoard's purge on resume is by step, and these steps are not the loop's)
        self.tracker = Tracker(self.out, cfg.train.report_to, start if cfg.train.resume else None, sub="iterations")

    def _forget_from(self, start: int) -> None:
        if distributed.is_main():
            self.rollout_dir.mkdir(parents=True, exist_ok=True)
            for f in self.rollout_dir.glob("iter-*.pt"):
                if int(f.stem.split("-")[1]) >= start:
                    f.unlink()
        rows_file = self.out / "iterations.jsonl"
        if start > 0 and rows_file.exists():
            rows = (json.loads(line) for line in rows_file.read_text().splitlines())
            self._rows = {r["iteration"]: r for r in rows if r["iteration"] < start}

    @property
    def iterations(self) -> list[dict]:
        """One row of statistics per collected iteration, in order (what iterations.jsonl holds)."""
        return [self._rows[i] for i in sorted(self._rows)]

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
        return self.rollout_dir / f"iter-{iteration:05d}.pt"

    def _carry_before(self, iteration: int) -> dict:
        """β and the moving baseline after the previous iteration: in memory, or from its file after a resume."""
        if iteration == 0:
            return {"beta": self.cfg.beta, "baseline": None}
        if self._carry is not None and self._carry[0] == iteration - 1:
            return self._carry[1]
        return torch.load(self._file(iteration - 1), weights_only=False)["carry"]

    def bind(self, module) -> None:
        """Sample from ``module``, the sharded copy the loop trains under FSDP (the policy given at
        construction gives up its storage until training ends and gets the weights back then; None
        goes back to it). Each rollout gathers the copy whole once (:func:`preftune.distributed.gathered`);
        a LoRA reference, the policy with its adapters off, follows it."""
        self.sharded = module
        if isinstance(self.reference, AdaptersOff):
            self.reference = AdaptersOff(module if module is not None else self.policy)

    def _local_rollout(self, iteration: int) -> tuple[list[tuple[Sample, float, list[float]]], float]:
        with distributed.gathered(self.sharded) if self.sharded is not None else contextlib.nullcontext(self.policy) as policy:
            return self._sample_and_compare(policy, iteration)

    def _sample_and_compare(self, policy, iteration: int) -> tuple[list[tuple[Sample, float, list[float]]], float]:
        """Stages 1-3 for this process's share of the iteration's prompts (all of them in one process;
        under torchrun a contiguous slice, so a prompt's k samples stay together): each sample with its
        score and the reference's log-probs of its tokens; and the seconds sampling took."""
        t0 = time.perf_counter()
        prompts = self._prompts_for(iteration)
        mine = distributed.shard(prompts)
        gen = replace(self.cfg.gen, seed=self.cfg.gen.seed * 100003 + iteration + 7919 * distributed.rank())
        samples = sample(policy, self.tokenizer, mine, gen, n=self.cfg.k, max_prompt_length=self.cfg.tokens.max_prompt_length)
        sample_s = time.perf_counter() - t0
        batch = collate([s.encoded() for s in samples], self.tokenizer.pad_token_id)
        scores = self.scorer(samples, batch).float().tolist()
        self._gap = self._sampler_gap(policy, samples[:GAP_ROWS])
        if self.reference is None:  # --no-track-kl: the sampler's own log-probs stand in (KL 0; β is 0)
            return [(s, score, list(s.token_logps)) for s, score in zip(samples, scores)], sample_s
        ref = completion_logps(self.reference, batch, self.temperature)
        return [(s, score, ref.token_logps[i, ref.mask[i]].tolist()) for i, (s, score) in enumerate(zip(samples, scores))], sample_s

    def _sampler_gap(self, policy, samples: list[Sample]) -> float:
        """Mean |log π_trainer - log π_sampler| per token over ``samples``: the training forward
        (:func:`preftune.logprobs.completion_logps`) against the decoder's own log-probs of the tokens
        it drew, same weights."""
        if not samples:
            return 0.0
        lp = completion_logps(policy, collate([s.encoded() for s in samples], self.tokenizer.pad_token_id), self.temperature)
        drawn = torch.cat([torch.tensor(s.token_logps) for s in samples])
        return float((lp.token_logps[lp.mask].float().cpu() - drawn).abs().mean())

    @torch.no_grad()
    def collect(self, iteration: int) -> dict:
        """Generate, score, compare with the reference and estimate targets; saved before use.

        Under torchrun every process samples, scores and compares its share of the prompts, then all
        processes gather every share in prompt order and compute the same targets and statistics
        (whitening, baselines, adaptive β) over the whole rollout, as one process would.
        """
        cfg, carry = self.cfg, self._carry_before(iteration)
        t0 = time.perf_counter()
        mine, sample_s = self._local_rollout(iteration)
        rows = distributed.gather(mine)
        samples = [r[0] for r in rows]
        batch = collate([s.encoded() for s in samples], self.tokenizer.pad_token_id)
        mask = batch.completion_mask[:, 1:]
        old_logps, ref_logps = torch.zeros(mask.shape), torch.zeros(mask.shape)
        for i, (s, _, ref) in enumerate(rows):  # placed where the training forward puts each token's log-prob
            old_logps[i, mask[i]] = torch.tensor(s.token_logps)
            ref_logps[i, mask[i]] = torch.tensor(ref)
        ended = torch.tensor([s.ended for s in samples])
        scores = torch.tensor([r[1] for r in rows]) - cfg.eos_penalty * (~ended).float()
        k1, k3 = losses.kl_k1(old_logps, ref_logps) * mask, losses.kl_k3(old_logps, ref_logps) * mask
        kl = k1 if cfg.kl_estimator == "k1" else k3
        trained_scores = losses.whiten(scores) if cfg.whiten_rewards else scores
        rewards = losses.kl_penalised_rewards(trained_scores, kl, carry["beta"])
        rollout = Rollout(
            batch.input_ids, batch.attention_mask, batch.completion_mask, old_logps, ref_logps, kl, trained_scores, rewards, carry["beta"]
        )

        disagreement = None
        if self.judges:  # the proxy's and each watching reward model's scores of the same samples: their spread
            members = [torch.tensor([r[1] for r in rows])] + [
                score_samples(j, samples, self.tokenizer.pad_token_id).cpu() for j in self.judges
            ]
            disagreement = float(torch.stack(members).std(0).mean())

        mean_reward = float(rewards.mean())
        baseline = mean_reward if carry["baseline"] is None else carry["baseline"]
        targets, stats = self.algorithm.targets(rollout.to(model_device(self.policy)), baseline)
        targets = targets.to("cpu")  # saved and kept on the CPU; micro-batches go to the device
        seq_kl = k1.sum(-1)
        beta = carry["beta"]
        if cfg.target_kl > 0:
            beta = losses.adaptive_beta(beta, float(seq_kl.mean()), cfg.target_kl, len(samples), cfg.kl_horizon)
        next_carry = {"beta": beta, "baseline": cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean_reward}
        stats = {
            "iteration": iteration,
            "beta": carry["beta"],
            "score": float(scores.mean()),  # the proxy (reward model) or gold, with the EOS penalty
            "reward": mean_reward,  # score - β·KL (whitened if asked)
            "kl": float(seq_kl.mean()) if self.reference is not None else None,  # k1, summed per sequence: Monte Carlo KL(π || π_SFT)
            "kl_k3": float(k3.sum(-1).mean()) if self.reference is not None else None,
            "entropy": float(-old_logps.sum(-1).mean()),  # Monte Carlo sequence entropy, -E[log π(y)]
            "length": float(mask.sum(-1).float().mean()),
            "eos_rate": float(ended.float().mean()),
            "sampler_gap": distributed.sum_all(self._gap) / distributed.world_size(),  # per token, over each process's first samples
            **({"disagreement": disagreement} if disagreement is not None else {}),
            **stats,
            "sample_s": round(sample_s, 3),  # generation (rank 0's share under torchrun)
            "score_s": round(time.perf_counter() - t0 - sample_s, 3),  # scoring, the reference pass, gathering, targets
        }
        stats["score_ci95"] = mean_ci(scores.tolist())[1] if len(samples) > 1 else None
        gold = gold_or_none(samples)
        if gold is not None:
            stats["gold"], ci = mean_ci(gold)
            stats["gold_ci95"] = ci if len(gold) > 1 else None
        blob = {"targets": targets.to_dict(), "stats": stats, "carry": next_carry}
        if distributed.is_main():
            save_atomic(blob, self._file(iteration))
            faults.point("rollout", iteration)
        return blob

    def _rollout(self, iteration: int) -> Rollout:
        """The iteration's targets: from its file if it was collected before, else collected now."""
        now = time.perf_counter()
        if self._trained_since is not None and iteration - 1 in self._rows:
            self._rows[iteration - 1]["train_s"] = round(now - self._trained_since, 3)
            if iteration - 1 >= self.start:
                self.tracker.log({"train_s": self._rows[iteration - 1]["train_s"]}, iteration - 1, "iteration/")
        # Collected before a resume: from its file; otherwise now, by every process together.
        blob = torch.load(self._file(iteration), weights_only=False) if iteration < self.start else self.collect(iteration)
        self._rows[iteration] = dict(blob["stats"])
        self._carry = (iteration, blob["carry"])
        if distributed.is_main():
            write_jsonl(self.out / "iterations.jsonl", self.iterations)
        if iteration >= self.start:  # rows before it are in the event files already
            self.tracker.log(self._rows[iteration], iteration, "iteration/")
        self._trained_since = time.perf_counter()
        return Rollout(**blob["targets"])

    def final_rollout(self) -> dict:
        """A rollout of the final policy, only measured (its score, gold and KL close the curve); after
        the last iteration trained on (``iterations``, or fewer when an alarm stopped the run)."""
        final = max(self._rows) + 1 if self._rows else 0
        self._rollout(final)
        return self._rows[final]

    def monitors(self) -> dict[str, float]:
        """The current rollout's statistics as ``rollout/*``, for the loop's alarms."""
        if self._current is None:
            return {}
        row = self._rows.get(self._current[0], {})
        return {f"rollout/{k}": row[k] for k in MONITORED if row.get(k) is not None}

    # -- the Method protocol ----------------------------------------------------------------

    def n_batches(self) -> int:
        rows = self.cfg.prompts_per_iter * self.algorithm.rows_per_prompt(self.cfg.k)
        return self.algorithm.update_epochs * -(-rows // (self.cfg.train.batch_size * distributed.world_size()))

    def batches(self, epoch: int) -> list[list[int]]:
        """Micro-batches of row indices into the epoch's rollout (``batch_size`` per process, so
        ``batch_size × processes`` rows each; the loop hands each process its slice). A prompt's rows
        stay together when every process's share holds whole groups (as TRL keeps a prompt's
        generations together): the order shuffles prompts, and the forward computes each prompt once
        for its rows (shared starts, :class:`preftune.logprobs.Packing`)."""
        if self._current is not None and self._current[0] == epoch:
            return self._current[2]
        targets = self._rollout(epoch)
        n, size, micro = len(targets), self.cfg.train.batch_size * distributed.world_size(), []
        group = self.algorithm.rows_per_prompt(self.cfg.k)  # rollout rows are prompt-major: a prompt's rows are consecutive
        whole = group > 1 and n % group == 0 and self.cfg.train.batch_size % group == 0
        for e in range(self.algorithm.update_epochs):
            gen = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch * 31 + e)
            if whole:
                order = [q * group + j for q in torch.randperm(n // group, generator=gen).tolist() for j in range(group)]
            else:
                order = torch.randperm(n, generator=gen).tolist()
            micro += [order[i : i + size] for i in range(0, n, size)]
        self._current = (epoch, targets, micro)
        return micro

    def loss(self, model, idx: list[int]) -> StepLoss:
        assert self._current is not None, "the loop asks for an epoch's batches before their losses"
        epoch = self._current[0]
        rows = self._current[1].rows(torch.tensor(idx)).to(model_device(model))
        lp = completion_logps(model, Batch(rows.input_ids, rows.attention_mask, rows.completion_mask), self.temperature, entropy=True)
        total, count, metrics = self.algorithm.loss(lp, rows)
        with torch.no_grad():
            metrics["entropy"] = float(lp.entropy[lp.mask].mean())
            metrics["approx_kl"] = float(losses.kl_k3(lp.token_logps, rows.old_logps)[lp.mask].mean())  # k3 of π_new against π_old
        if self.ptx and self.cfg.ptx_coef > 0:
            total, metrics["ptx_nll"] = self._with_ptx(model, total, count, f"{epoch}-{int(idx[0])}", len(idx))
        return StepLoss(total, count, metrics)

    def _with_ptx(self, model, total: torch.Tensor, count, key: str, n: int) -> tuple[torch.Tensor, float]:
        """PPO-ptx (InstructGPT eq. 2): add ``ptx_coef`` × the token-mean NLL of pretraining texts."""
        rng = random.Random(f"{self.cfg.train.seed}-ptx-{key}")
        lp = completion_logps(model, collate(rng.sample(self.ptx, min(n, len(self.ptx))), self.tokenizer.pad_token_id))
        nll, n_tokens = losses.nll(lp.token_logps, lp.mask)
        return total + self.cfg.ptx_coef * (nll / n_tokens) * float(count), float(nll.detach() / n_tokens)  # the loop divides by count

    def evaluate(self, model) -> dict[str, float]:
        return {}
