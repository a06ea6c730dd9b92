"""The RL algorithms of ``preftune rl``, each one small class chosen once, by name, in :data:`ALGORITHMS`.

An algorithm does two things with a :class:`~preftune.rollout.Rollout`:

- ``targets(rollout, baseline)``: turn it into training targets (advantages, returns, or the
  rows to keep) and a dict of statistics for ``iterations.jsonl``;
- ``loss(lp, batch)``: the summed loss of one micro-batch of those targets given the current
  policy's log-probs, with the count it is normalised by and per-step metrics.

The maths is in :mod:`preftune.losses`; here it is only composed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch

from .. import losses
from ..config import RLConfig
from ..logprobs import LogProbs
from ..models import RewardModel, add_lora, build_reward_model, load_reward_model
from ..rollout import Rollout

Loss = tuple[torch.Tensor, torch.Tensor | float, dict[str, float]]  # (summed loss, count, metrics)


class Algorithm(Protocol):
    update_epochs: int  # passes over each rollout

    def trained(self, policy: torch.nn.Module) -> torch.nn.Module:
        """The module the loop optimises and checkpoints (the policy, or PPO's policy and value model)."""
        ...

    def rows_per_prompt(self, k: int) -> int:
        """How many of a prompt's k samples are trained on."""
        ...

    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]: ...

    def loss(self, lp: LogProbs, batch: Rollout) -> Loss: ...


class _SequenceLevel:
    """Shared by the algorithms that train on whole rollouts once (RAFT, REINFORCE, RLOO, GRPO)."""

    update_epochs = 1

    def trained(self, policy: torch.nn.Module) -> torch.nn.Module:
        return policy

    def rows_per_prompt(self, k: int) -> int:
        return k


class RAFT(_SequenceLevel):
    """Reward-ranked fine-tuning (Dong et al. 2023): keep the top ``keep`` of each prompt's k samples
    by KL-penalised reward and take SFT steps on them (token-mean NLL)."""

    def __init__(self, k: int, keep: int):
        self.k, self.keep = k, keep

    def rows_per_prompt(self, k: int) -> int:
        return min(self.keep, k)

    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]:
        kept = losses.top_k_per_group(rollout.rewards, self.k, self.keep)
        return rollout.rows(kept), {"kept_score": float(rollout.scores[kept].mean())}

    def loss(self, lp: LogProbs, batch: Rollout) -> Loss:
        total, n_tokens = losses.nll(lp.token_logps, lp.mask)
        return total, n_tokens, {}


class REINFORCE(_SequenceLevel):
    """Williams 1992 with a moving-average baseline: ``-(R - b)·log π(y)``."""

    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]:
        return replace(rollout, advantages=rollout.rewards - baseline), {"baseline": baseline}

    def loss(self, lp: LogProbs, batch: Rollout) -> Loss:
        return losses.policy_gradient(lp.logps, batch.advantages).sum(), float(len(batch)), {}


class RLOO(REINFORCE):
    """REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024): each sample's baseline is
    the mean reward of its prompt's other k-1 samples."""

    def __init__(self, k: int):
        if k < 2:
            raise ValueError("--algo rloo needs --k 2 or more (the baseline is the other samples' mean)")
        self.k = k

    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]:
        grouped = rollout.rewards.view(-1, self.k)
        return replace(rollout, advantages=(grouped - losses.leave_one_out_baseline(grouped)).flatten()), {}


class GRPO(_SequenceLevel):
    """Group relative policy optimisation (Shao et al. 2024): advantages normalised within each
    prompt's group of k scores (no value model, no KL in the reward), PPO's clipped ratio per token,
    and the KL to the reference (k3) as a loss term weighted by the rollout's β; per-sequence token
    means, averaged."""

    def __init__(self, k: int, clip: float, scale_std: bool):
        if k < 2:
            raise ValueError("--algo grpo needs --k 2 or more (advantages are relative to the group)")
        self.k, self.clip, self.scale_std = k, clip, scale_std

    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]:
        advantages = losses.group_advantages(rollout.scores.view(-1, self.k), self.scale_std).flatten()
        return replace(rollout, advantages=advantages), {}

    def loss(self, lp: LogProbs, batch: Rollout) -> Loss:
        mask = lp.mask
        surrogate, clipped = losses.ppo_clip(lp.token_logps, batch.old_logps, batch.advantages[:, None], self.clip)
        kl = losses.kl_k3(lp.token_logps, batch.ref_logps)  # (B, T-1), gradient pulls π back to π_ref
        per_sequence = ((surrogate + batch.beta * kl) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        metrics = {"clipfrac": float(clipped[mask].float().mean()), "kl_ref": float(kl.detach()[mask].mean())}
        return per_sequence.sum(), float(len(batch)), metrics


class ActorCritic(torch.nn.Module):
    """PPO's trained pair, one module so the loop optimises and checkpoints both. Called like the
    policy (its forward is the policy's), so log-probs come through the one ``completion_logps``."""

    def __init__(self, policy: torch.nn.Module, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, **kwargs):
        return self.policy(**kwargs)


class PPO:
    """Token-level PPO (Ouyang et al. 2022; Huang et al. 2024, "The N+ implementation details"):
    per-token reward ``-β·kl_t`` plus the score at the last token, a value model, GAE, whitened
    advantages, clipped ratio and clipped value loss, ``update_epochs`` passes per rollout."""

    def __init__(self, value: RewardModel, clip: float, value_clip: float, value_coef: float, gamma: float, lam: float, epochs: int):
        self.value, self.clip, self.value_clip, self.value_coef = value, clip, value_clip, value_coef
        self.gamma, self.lam, self.update_epochs = gamma, lam, epochs

    def trained(self, policy: torch.nn.Module) -> ActorCritic:
        return ActorCritic(policy, self.value)

    def rows_per_prompt(self, k: int) -> int:
        return k

    def _values(self, batch: Rollout) -> torch.Tensor:
        """V of each prefix, aligned with the actions: position t values the state before token t+1."""
        return self.value.token_scores(batch.input_ids, batch.attention_mask)[:, :-1]

    @torch.no_grad()
    def targets(self, rollout: Rollout, baseline: float) -> tuple[Rollout, dict[str, float]]:
        mask = rollout.mask
        values = self._values(rollout) * mask
        rewards = losses.token_rewards(rollout.scores, rollout.kl, mask, rollout.beta)
        advantages, returns = losses.gae(rewards, values, mask, self.gamma, self.lam)
        stats = {"explained_variance": losses.explained_variance(values, returns, mask), "value_mean": float(values[mask].mean())}
        return replace(rollout, advantages=losses.whiten(advantages, mask), returns=returns, values=values), stats

    def loss(self, lp: LogProbs, batch: Rollout) -> Loss:
        mask = lp.mask
        surrogate, clipped = losses.ppo_clip(lp.token_logps, batch.old_logps, batch.advantages, self.clip)
        value_loss = losses.clipped_value_loss(self._values(batch), batch.values, batch.returns, self.value_clip)
        total = ((surrogate + self.value_coef * value_loss) * mask).sum()
        metrics = {
            "clipfrac": float(clipped[mask].float().mean()),
            "value_loss": float(value_loss.detach()[mask].mean()),
            "policy_loss": float(surrogate.detach()[mask].mean()),
        }
        return total, mask.sum(), metrics


def _ppo(cfg: RLConfig) -> PPO:
    """PPO with its value model, started from the reward model (from pi_SFT with a fresh head under ``--reward gold``)."""
    value = build_reward_model(cfg.model, cfg.train.seed)[0] if cfg.reward == "gold" else load_reward_model(cfg.reward)[0]
    if cfg.lora:  # adapters on its transformer, its head trained whole
        value = RewardModel(add_lora(value.model, cfg.lora_r, cfg.lora_alpha, seed=cfg.train.seed + 1, task="SEQ_CLS"))
    return PPO(value.train(), cfg.clip, cfg.value_clip, cfg.value_coef, cfg.gamma, cfg.lam, cfg.update_epochs or 2)


# The one place an algorithm is chosen by name.
ALGORITHMS = {
    "raft": lambda cfg: RAFT(cfg.k, cfg.keep),
    "reinforce": lambda cfg: REINFORCE(),
    "rloo": lambda cfg: RLOO(cfg.k),
    "grpo": lambda cfg: GRPO(cfg.k, cfg.clip, cfg.scale_std),
    "ppo": _ppo,
}


def build_algorithm(cfg: RLConfig) -> Algorithm:
    """The algorithm ``cfg.algo`` with its settings (PPO with its value model)."""
    if cfg.algo not in ALGORITHMS:
        raise ValueError(f"--algo must be one of {tuple(ALGORITHMS)}, got {cfg.algo!r}")
    algorithm = ALGORITHMS[cfg.algo](cfg)
    if cfg.update_epochs:
        algorithm.update_epochs = cfg.update_epochs
    return algorithm
