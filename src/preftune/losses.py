"""Pure tensor maths for every method. No model, config or I/O in here.

Conventions: ``logps`` are summed over completion tokens, shape ``(B,)``; ``token_logps`` and
masks are ``(B, T)``, masks boolean with True meaning "counts". Token-level losses return a
*sum* and a count, so the training loop can normalise over a whole accumulated batch (the
per-micro-batch mean is the classic gradient-accumulation bug).
"""

from __future__ import annotations

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


def unlikelihood(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unlikelihood (Welleck et al. 2019) of each sequence's masked tokens: ``-sum_t log(1 - p_t)``.

    token_logps: (B, T) log p of the tokens to push down; mask: (B, T) bool. Returns (B,).
    """
    p = token_logps.exp().clamp(max=1.0 - 1e-6)  # log(1 - p) is -inf at p = 1
    return -(torch.log1p(-p) * mask).sum(-1)
