"""The one place that runs a causal LM over a padded batch and turns logits into log-probs.

Everything that needs log-probs of completion tokens — SFT, DPO, RL rollouts and evaluation —
comes through :func:`completion_logps`, so the logit shift, the position ids under padding, the
temperature and the masking are decided once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Batch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are, so inputs can follow them."""
    return next(model.parameters()).device


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, T, V)`` of a causal LM for a batch padded on either side."""
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids(attention_mask), use_cache=False)
    return out.logits


def gather_token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[targets]`` without materialising the full log-softmax.

    logits: (B, T, V) already aligned with targets (B, T). Returns (B, T).
    """
    if temperature != 1.0:
        logits = logits / temperature
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


@dataclass
class LogProbs:
    """Log-probs of the completion tokens of a batch."""

    logps: torch.Tensor  # (B,) summed over completion tokens
    token_logps: torch.Tensor  # (B, T-1) zero where mask is False; position t predicts token t+1
    mask: torch.Tensor  # (B, T-1) bool, True on completion tokens
    logits: torch.Tensor | None = None  # (B, T-1, V) when asked for (RL's entropy metric)

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.mask.sum(-1)  # (B,)


def token_logps_from_logits(logits: torch.Tensor, batch: Batch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift, gather and mask: logits (B, T, V) -> token_logps (B, T-1), mask (B, T-1)."""
    targets = batch.input_ids[:, 1:]  # token t+1 is predicted at position t
    mask = batch.completion_mask[:, 1:]
    token_logps = gather_token_logps(logits[:, :-1], targets, temperature)
    return token_logps.masked_fill(~mask, 0.0), mask


def completion_logps(model, batch: Batch, temperature: float = 1.0, keep_logits: bool = False) -> LogProbs:
    """Per-token and per-sequence log-probs of ``batch``'s completion tokens under ``model`` (on its device)."""
    batch = batch.to(model_device(model))
    logits = forward_logits(model, batch.input_ids, batch.attention_mask)
    token_logps, mask = token_logps_from_logits(logits, batch, temperature)
    return LogProbs(token_logps.sum(-1), token_logps, mask, logits[:, :-1] if keep_logits else None)
