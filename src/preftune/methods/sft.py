"""Supervised fine-tuning (and pretraining): next-token loss on the completion tokens only."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import losses
from ..data import Batch, Encoded, batch_count, collate, shuffled_batches
from ..logprobs import completion_logps
from ..loop import StepLoss


class SFT:
    """Token-mean NLL of completion tokens; prompt tokens carry no loss.

    Pretraining is the same method on documents encoded with ``encode_text`` (every token is a
    completion token).
    """

    def __init__(self, train: Sequence[Encoded], pad_id: int, batch_size: int, seed: int, held_out: Sequence[Encoded] = ()):
        self.train, self.held_out = list(train), list(held_out)
        self.pad_id, self.batch_size, self.seed = pad_id, batch_size, seed

    def n_batches(self) -> int:
        return batch_count(len(self.train), self.batch_size)

    def batches(self, epoch: int) -> list[list[Encoded]]:
        return shuffled_batches(self.train, self.batch_size, self.seed, epoch)

    def _nll(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        lp = completion_logps(model, batch)
        return losses.nll(lp.token_logps, lp.mask)

    def loss(self, model, examples: list[Encoded]) -> StepLoss:
        loss_sum, n_tokens = self._nll(model, collate(examples, self.pad_id))
        return StepLoss(loss_sum, n_tokens, {"tokens": float(n_tokens)})

    def evaluate(self, model) -> dict[str, float]:
        if not self.held_out:
            return {}
        total, count = 0.0, 0.0
        for i in range(0, len(self.held_out), 4 * self.batch_size):
            s, n = self._nll(model, collate(self.held_out[i : i + 4 * self.batch_size], self.pad_id))
            total, count = total + s.item(), count + n.item()
        return {"loss": total / count}
