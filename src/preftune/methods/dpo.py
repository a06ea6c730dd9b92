"""Direct preference optimisation and its relatives, plus the unlikelihood baseline.

The loss is chosen once, at construction, as a function of Δ (see :mod:`preftune.losses`).
Chosen and rejected completions of a micro-batch go through one forward pass. Reference
log-probs are computed once, before training, by :func:`reference_logps` and stored on the
pairs, so no second model sits in memory while training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .. import losses
from ..data import Encoded, collate, shuffled_batches
from ..logprobs import LogProbs, completion_logps
from ..loop import StepLoss

LOSSES = ("dpo", "cdpo", "ipo", "hinge", "soft", "unlikelihood")


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded
    strength: float = 1.0  # 8-point strength in [0, 1]; 1 when not given
    ref_chosen: float = 0.0  # log π_ref(y_w | x), filled by reference_logps
    ref_rejected: float = 0.0


def _forward(model, pairs: Sequence[Pair], pad_id: int, length_normalise: bool) -> tuple[LogProbs, torch.Tensor, torch.Tensor]:
    """One forward pass over [chosen..., rejected...]; returns log-probs and the (B,) chosen / rejected logps."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    lp = completion_logps(model, batch)
    logps = lp.logps / lp.n_tokens.clamp(min=1) if length_normalise else lp.logps
    B = len(pairs)
    return lp, logps[:B], logps[B:]


@torch.no_grad()
def reference_logps(model, pairs: Sequence[Pair], pad_id: int, length_normalise: bool, batch_size: int = 64) -> list[Pair]:
    """Fill in ``ref_chosen`` / ``ref_rejected`` with the (frozen) reference model's log-probs."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        _, c, r = _forward(model, chunk, pad_id, length_normalise)
        out += [replace(p, ref_chosen=float(a), ref_rejected=float(b)) for p, a, b in zip(chunk, c, r)]
    model.train(was_training)
    return out


def delta_loss(name: str, beta: float, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-pair loss ``f(Δ, strength) -> (B,)`` of a method name (chosen once, here)."""
    if name == "dpo":
        return lambda delta, strength: losses.dpo(delta, beta)
    if name == "cdpo":
        return lambda delta, strength: losses.cdpo(delta, beta, label_smoothing)
    if name == "ipo":
        return lambda delta, strength: losses.ipo(delta, beta)
    if name == "hinge":
        return lambda delta, strength: losses.hinge(delta, beta)
    if name == "soft":
        return lambda delta, strength: losses.soft_dpo(delta, beta, 0.5 + 0.5 * strength)
    raise ValueError(f"unknown preference loss {name!r}; choose from {LOSSES}")


class DirectPreference:
    """DPO-family training on pairs whose reference log-probs are already cached."""

    monitor = ("accuracy", "max")

    def __init__(
        self,
        train: Sequence[Pair],
        held_out: Sequence[Pair],
        pad_id: int,
        batch_size: int,
        seed: int,
        loss: Callable,
        beta: float,
        length_normalise: bool = False,
    ):
        self.train, self.held_out = list(train), list(held_out)
        self.pad_id, self.batch_size, self.seed = pad_id, batch_size, seed
        self.delta_loss, self.beta, self.length_normalise = loss, beta, length_normalise

    def batches(self, epoch: int) -> list[list[Pair]]:
        return shuffled_batches(self.train, self.batch_size, self.seed, epoch)

    def _terms(self, model, pairs):
        _, c, r = _forward(model, pairs, self.pad_id, self.length_normalise)
        ref_c = torch.tensor([p.ref_chosen for p in pairs])
        ref_r = torch.tensor([p.ref_rejected for p in pairs])
        delta = losses.preference_delta(c, r, ref_c, ref_r)
        return c, r, ref_c, ref_r, delta

    def loss(self, model, pairs: list[Pair]) -> StepLoss:
        c, r, ref_c, ref_r, delta = self._terms(model, pairs)
        loss = self.delta_loss(delta, torch.tensor([p.strength for p in pairs])).sum()
        reward_c, reward_r = self.beta * (c - ref_c).detach(), self.beta * (r - ref_r).detach()
        metrics = {
            "rewards/chosen": reward_c.mean().item(),
            "rewards/rejected": reward_r.mean().item(),
            "rewards/margin": (reward_c - reward_r).mean().item(),
            "rewards/accuracy": (reward_c > reward_r).float().mean().item(),
            "logps/chosen": c.mean().item(),
            "logps/rejected": r.mean().item(),
        }
        return StepLoss(loss, len(pairs), metrics)

    def evaluate(self, model) -> dict[str, float]:
        if not self.held_out:
            return {}
        correct, total, n = 0, 0.0, 0
        for i in range(0, len(self.held_out), 2 * self.batch_size):
            pairs = self.held_out[i : i + 2 * self.batch_size]
            *_, delta = self._terms(model, pairs)
            correct += (delta > 0).sum().item()
            total += self.delta_loss(delta, torch.tensor([p.strength for p in pairs])).sum().item()
            n += len(pairs)
        return {"accuracy": correct / n, "loss": total / n}


class Unlikelihood(DirectPreference):
    """The baseline with no reference: likelihood on y_w plus unlikelihood ``-log(1 - p)`` on y_l's
    tokens, each a token mean per pair. Unconstrained, it drifts (and degenerates)."""

    def __init__(self, train: Sequence[Pair], held_out: Sequence[Pair], pad_id: int, batch_size: int, seed: int):
        super().__init__(train, held_out, pad_id, batch_size, seed, loss=lambda delta, strength: losses.dpo(delta, 1.0), beta=1.0)

    def loss(self, model, pairs: list[Pair]) -> StepLoss:
        lp, c, r = _forward(model, pairs, self.pad_id, length_normalise=False)
        B = len(pairs)
        n = lp.n_tokens.clamp(min=1)
        nll = -(lp.token_logps[:B].sum(-1) / n[:B])  # (B,) token-mean NLL of y_w
        ul = losses.unlikelihood(lp.token_logps[B:], lp.mask[B:]) / n[B:]  # (B,) token-mean unlikelihood of y_l
        metrics = {
            "logps/chosen": c.mean().item(),
            "logps/rejected": r.mean().item(),
            "nll/chosen": nll.mean().item(),
            "ul/rejected": ul.mean().item(),
        }
        return StepLoss((nll + ul).sum(), B, metrics)
