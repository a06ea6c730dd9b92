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
