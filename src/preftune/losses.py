"""Pure tensor maths for every method. No model, config or I/O in here.

Conventions: ``logps`` are summed over completion tokens, shape ``(B,)``; ``token_logps`` and
masks are ``(B, T)``, masks boolean with True meaning "counts". Token-level losses return a
*sum* and a count, so the training loop can normalise over a whole accumulated batch (the
per-micro-batch mean is the classic gradient-accumulation bug).
"""

from __future__ import annotations

import math

import torch


def nll(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of the masked tokens: ``(-sum_t mask·log p, number of masked tokens)``.

    token_logps: (B, T); mask: (B, T) bool. SFT's loss is the first divided by the second, taken
    over all tokens of the accumulated batch (each token weighs the same).
    """
    return -(token_logps * mask).sum(), mask.sum()


def bradley_terry(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float = 0.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood per pair (InstructGPT eq. 1; Llama 2's margin).

    ``loss_i = -w_i · log sigmoid(r(x, y_w) - r(x, y_l) - m_i)``

    chosen_rewards, rejected_rewards: (B,); margin: scalar or (B,); weight: (B,) or None
    (e.g. the preference strength from the 8-point scale). Returns (B,).
    """
    loss = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards - margin)
    return loss if weight is None else loss * weight


def ranking_pairs(ranking: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """All K·(K-1)/2 (better, worse) index pairs of a ranking given best first."""
    return [(ranking[i], ranking[j]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))]


def plackett_luce(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of a full ranking under Plackett–Luce.

    ``-log P(order) = sum_i [ logsumexp_{j >= i} s_{order_j} - s_{order_i} ]``

    scores: (K,); ranking: (K,) indices, best first. Returns a scalar. For K = 2 it equals
    :func:`bradley_terry` of the two.
    """
    s = scores[ranking]  # (K,) in ranked order
    tail_lse = torch.logcumsumexp(s.flip(0), 0).flip(0)  # (K,) logsumexp of s[i:]
    return (tail_lse - s)[:-1].sum()


# ------------------------------------------------------------------- direct preference optimisation
# Δ = [log π(y_w) - log π_ref(y_w)] - [log π(y_l) - log π_ref(y_l)], shape (B,). Each loss returns (B,).


def preference_delta(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor
) -> torch.Tensor:
    """Δ: the policy-vs-reference log-ratio of the chosen minus that of the rejected. All (B,)."""
    return (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)


def dpo(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): ``-log sigmoid(beta · Δ)``."""
    return -torch.nn.functional.logsigmoid(beta * delta)


def cdpo(delta: torch.Tensor, beta: float, epsilon: float) -> torch.Tensor:
    """Conservative DPO: labels flipped with probability ε,
    ``-(1-ε)·log sigmoid(beta·Δ) - ε·log sigmoid(-beta·Δ)``. ε = 0 is DPO."""
    return -(1 - epsilon) * torch.nn.functional.logsigmoid(beta * delta) - epsilon * torch.nn.functional.logsigmoid(-beta * delta)


def soft_dpo(delta: torch.Tensor, beta: float, target: torch.Tensor) -> torch.Tensor:
    """DPO against a soft label: the cross-entropy between the target probability ``p`` that
    y_w is better and the model's ``sigmoid(beta·Δ)``:
    ``-p·log sigmoid(beta·Δ) - (1-p)·log sigmoid(-beta·Δ)``. p = 1 is DPO; p is set per pair from
    the 8-point strength, ``p = 0.5 + 0.5·strength``."""
    return -target * torch.nn.functional.logsigmoid(beta * delta) - (1 - target) * torch.nn.functional.logsigmoid(-beta * delta)


def ipo(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): ``(Δ - 1/(2·beta))²``, minimised at Δ = 1/(2·beta)."""
    return (delta - 1.0 / (2.0 * beta)) ** 2


def hinge(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """Hinge / SLiC: ``max(0, 1 - beta·Δ)``; zero once beta·Δ ≥ 1."""
    return torch.relu(1.0 - beta * delta)


def simpo(delta: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): ``-log sigmoid(beta·Δ̄ - gamma)`` with Δ̄ the difference of
    the *mean* per-token log-probs of y_w and y_l (no reference model); gamma is a target margin."""
    return -torch.nn.functional.logsigmoid(beta * delta - gamma)


def unlikelihood(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unlikelihood (Welleck et al. 2019) of each sequence's masked tokens: ``-sum_t log(1 - p_t)``.

    token_logps: (B, T) log p of the tokens to push down; mask: (B, T) bool. Returns (B,).
    """
    p = token_logps.exp().clamp(max=1.0 - 1e-6)  # log(1 - p) is -inf at p = 1
    return -(torch.log1p(-p) * mask).sum(-1)


# ------------------------------------------------------------------------ reinforcement learning
# Rewards, KL estimates and advantages for RLHF (InstructGPT step 3). Token tensors are (B, T)
# aligned with ``LogProbs.token_logps``: position t holds the log-prob of completion token t+1.


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log π(y) - log π_ref(y): unbiased for KL(π || π_ref) when y ~ π; can be negative."""
    return logps - ref_logps


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = π_ref(y)/π(y): unbiased for KL(π || π_ref) when y ~ π
    (since E_π[r] = 1) and never negative (e^x ≥ 1 + x); lower variance than k1 when π ≈ π_ref."""
    log_r = ref_logps - logps
    return torch.expm1(log_r) - log_r


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Sequence rewards ``R = score - β·Σ_t kl_t`` (InstructGPT eq. 2). scores (B,); kl (B, T) zero off the mask."""
    return scores - beta * kl.sum(-1)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """PPO's per-token rewards: ``-β·kl_t`` at every completion token, plus the score at the last one.

    scores: (B,); kl: (B, T); mask: (B, T) bool with each row's completion contiguous. Returns (B, T),
    zero off the mask. The score arrives only when the sequence is complete (Ziegler et al. 2019).
    """
    rewards = -beta * kl * mask
    last = mask.long().cumsum(-1).argmax(-1)  # (B,) index of each row's last completion token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy ``-Σ_v p_v log p_v`` of each position's next-token distribution. (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return -(logp.exp() * logp).sum(-1)


def top_k_per_group(rewards: torch.Tensor, k: int, keep: int) -> torch.Tensor:
    """RAFT's selection: flat indices, ascending, of the ``keep`` highest rewards in each consecutive
    group of ``k`` (prompt-major order). rewards (P·k,) -> (P·min(keep, k),)."""
    grouped = rewards.view(-1, k)
    top = grouped.topk(min(keep, k), dim=-1).indices + torch.arange(grouped.shape[0], device=rewards.device)[:, None] * k
    return top.flatten().sort().values


def pick_best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Best-of-n: flat index of the highest score in each consecutive group of ``n`` (ties: the first)."""
    return scores.view(-1, n).argmax(-1) + torch.arange(scores.numel() // n, device=scores.device) * n


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || π) = log n - (n-1)/n nats (Stiennon et al. 2020; exact for distinct rewards)."""
    return math.log(n) - (n - 1) / n


def adaptive_beta(beta: float, kl: float, target: float, n_sequences: int, horizon: int) -> float:
    """Ziegler et al.'s proportional controller: β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)."""
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return beta * (1.0 + error * n_sequences / horizon)


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO's baseline: for rewards (P, K) of K samples per prompt, each sample's baseline is the
    mean reward of the *other* K-1 samples of its prompt, ``(sum_j R_j - R_i) / (K - 1)``."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


def group_advantages(rewards: torch.Tensor, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, eq. 3): within each prompt's group of K samples,
    ``(R_i - mean) / (std + eps)``, std with Bessel's correction; ``scale_std=False`` keeps only
    ``R_i - mean`` (Dr. GRPO, Liu et al. 2025). rewards (P, K) -> (P, K)."""
    if rewards.shape[-1] < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    centred = rewards - rewards.mean(-1, keepdim=True)
    return centred / (rewards.std(-1, keepdim=True) + eps) if scale_std else centred


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (or all of x); ``shift_mean=False`` only rescales."""
    values = x if mask is None else x[mask]
    mean, std = values.mean(), values.std() if values.numel() > 1 else torch.tensor(1.0, device=x.device)
    out = (x - mean) / (std + eps) if shift_mean else x / (std + eps)
    return out if mask is None else out * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's masked (completion) tokens.

    ``δ_t = r_t + γ V_{t+1} - V_t`` (V after the last token is 0), ``A_t = δ_t + γλ A_{t+1}``;
    returns ``(advantages, returns = A + V)``, both (B, T) and zero off the mask. The masked tokens
    of a row must be contiguous (they are: prompt, completion, then padding).
    """
    m = mask.float()
    values = values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(T - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        next_adv, next_value = adv[:, t], values[:, t]
    return adv, (adv + values) * m


def policy_gradient(logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE / RLOO per sequence (Williams 1992): ``-A · log π(y)``, with A held constant. (B,) -> (B,)."""
    return -advantages.detach() * logps


def ppo_clip(
    token_logps: torch.Tensor, old_token_logps: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: ``max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε))``, ρ = π/π_old.

    Beyond the clip range in the direction the advantage favours, the clipped term is the larger
    and constant, so the gradient is zero. Returns (loss (B, T), clipped (B, T) bool).
    """
    ratio = torch.exp(token_logps - old_token_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over the masked tokens: 1 for a perfect value model, 0 for a
    constant one, negative for one worse than its mean. NaN when the returns do not vary."""
    var = returns[mask].var()
    return float(1 - (returns - values)[mask].var() / var) if var > 0 else float("nan")


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """``½ max((V - R)², (clip(V, V_old ± ε) - R)²)`` per token (B, T)."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
