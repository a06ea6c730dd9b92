"""Direct preference optimisation and its relatives, plus the unlikelihood baseline.

Each loss is a function of Δ (see :mod:`preftune.losses`), chosen once, by name, in
:data:`LOSSES`. Chosen and rejected completions of a micro-batch go through one forward pass.
Reference log-probs are computed once, before training, by :func:`reference_logps` and stored on
the pairs, so no second model sits in memory while training; a reference-free loss (SimPO) skips
them and Δ is the difference of the policy's own log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .. import losses
from ..config import DPOConfig
from ..data import Encoded, batch_count, collate, shuffled_batches
from ..logprobs import LogProbs, completion_logps
from ..loop import StepLoss


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded
    strength: float = 1.0  # 8-point strength in [0, 1]; 1 when not given
    ref_chosen: float = 0.0  # log π_ref(y_w | x), filled by reference_logps
    ref_rejected: float = 0.0


@dataclass(frozen=True)
class PreferenceLoss:
    """A per-pair loss ``fn(Δ, strength) -> (B,)``, whether Δ subtracts the reference's log-ratios,
    and whether log-probs are per-token means instead of sums."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reference: bool = True
    length_normalise: bool = False


# The one place a preference loss is chosen by name. The unlikelihood baseline is no function of Δ:
# it is its own method, :class:`Unlikelihood`.
LOSSES: dict[str, Callable[[DPOConfig], PreferenceLoss]] = {
    "dpo": lambda c: PreferenceLoss(lambda d, s: losses.dpo(d, c.beta), True, c.length_normalise),
    "cdpo": lambda c: PreferenceLoss(lambda d, s: losses.cdpo(d, c.beta, c.label_smoothing), True, c.length_normalise),
    "ipo": lambda c: PreferenceLoss(lambda d, s: losses.ipo(d, c.beta), True, c.length_normalise),
    "hinge": lambda c: PreferenceLoss(lambda d, s: losses.hinge(d, c.beta), True, c.length_normalise),
    "soft": lambda c: PreferenceLoss(lambda d, s: losses.soft_dpo(d, c.beta, 0.5 + 0.5 * s), True, c.length_normalise),
    "simpo": lambda c: PreferenceLoss(lambda d, s: losses.simpo(d, c.beta, c.simpo_gamma), reference=False, length_normalise=True),
}


def preference_loss(cfg: DPOConfig) -> PreferenceLoss:
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown preference loss {cfg.loss!r}; choose from {tuple(LOSSES)} or 'unlikelihood'")
    return LOSSES[cfg.loss](cfg)


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


@dataclass(frozen=True)
class PairData:
    """The pairs a preference method trains and evaluates on, and how they are batched."""

    train: Sequence[Pair]
    held_out: Sequence[Pair]
    pad_id: int
    batch_size: int
    seed: int

    def n_batches(self) -> int:
        return batch_count(len(self.train), self.batch_size)

    def batches(self, epoch: int) -> list[list[Pair]]:
        return shuffled_batches(self.train, self.batch_size, self.seed, epoch)

    def evaluate(self, won_and_loss: Callable[[Sequence[Pair]], tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Held-out accuracy and mean loss, from ``won_and_loss(pairs) -> ((B,) bool, (B,) loss)`` over chunks."""
        correct, total, n, size = 0, 0.0, 0, 2 * self.batch_size
        for i in range(0, len(self.held_out), size):
            won, loss = won_and_loss(self.held_out[i : i + size])
            correct, total, n = correct + won.sum().item(), total + loss.sum().item(), n + len(won)
        return {"accuracy": correct / n, "loss": total / n} if n else {}


class DirectPreference:
    """DPO-family training: a :class:`PreferenceLoss` of Δ on pairs whose reference log-probs are cached."""

    monitor = ("accuracy", "max")

    def __init__(self, data: PairData, loss: PreferenceLoss, beta: float):
        self.data, self.preference_loss, self.beta = data, loss, beta
        self.n_batches, self.batches = data.n_batches, data.batches

    def _terms(self, model, pairs):
        _, c, r = _forward(model, pairs, self.data.pad_id, self.preference_loss.length_normalise)
        use_ref = self.preference_loss.reference  # a reference-free loss: Δ from the policy alone
        ref_c = torch.tensor([p.ref_chosen if use_ref else 0.0 for p in pairs], device=c.device)
        ref_r = torch.tensor([p.ref_rejected if use_ref else 0.0 for p in pairs], device=c.device)
        delta = losses.preference_delta(c, r, ref_c, ref_r)
        return c, r, ref_c, ref_r, delta

    def loss(self, model, pairs: list[Pair]) -> StepLoss:
        c, r, ref_c, ref_r, delta = self._terms(model, pairs)
        loss = self.preference_loss.fn(delta, torch.tensor([p.strength for p in pairs], device=delta.device)).sum()
        reward_c, reward_r = self.beta * (c - ref_c).detach(), self.beta * (r - ref_r).detach()  # the implicit rewards
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
        def won_and_loss(pairs):
            *_, delta = self._terms(model, pairs)
            return delta > 0, self.preference_loss.fn(delta, torch.tensor([p.strength for p in pairs], device=delta.device))

        return self.data.evaluate(won_and_loss)


class Unlikelihood:
    """The baseline with no reference: likelihood on y_w plus unlikelihood ``-log(1 - p)`` on y_l's
    tokens, each a token mean per pair. Unconstrained, it drifts (and degenerates)."""

    monitor = ("accuracy", "max")

    def __init__(self, data: PairData):
        self.data = data
        self.n_batches, self.batches = data.n_batches, data.batches

    def _terms(self, model, pairs):
        lp, c, r = _forward(model, pairs, self.data.pad_id, length_normalise=False)
        B = len(pairs)
        n = lp.n_tokens.clamp(min=1)
        nll = -(lp.token_logps[:B].sum(-1) / n[:B])  # (B,) token-mean NLL of y_w
        ul = losses.unlikelihood(lp.token_logps[B:], lp.mask[B:]) / n[B:]  # (B,) token-mean unlikelihood of y_l
        return c, r, nll, ul

    def loss(self, model, pairs: list[Pair]) -> StepLoss:
        c, r, nll, ul = self._terms(model, pairs)
        metrics = {
            "logps/chosen": c.mean().item(),
            "logps/rejected": r.mean().item(),
            "nll/chosen": nll.mean().item(),
            "ul/rejected": ul.mean().item(),
        }
        return StepLoss((nll + ul).sum(), len(pairs), metrics)

    def evaluate(self, model) -> dict[str, float]:
        """Held-out share of pairs where log π(y_w) > log π(y_l), and the loss."""

        def won_and_loss(pairs):
            c, r, nll, ul = self._terms(model, pairs)
            return c > r, nll + ul

        return self.data.evaluate(won_and_loss)
