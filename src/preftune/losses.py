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
