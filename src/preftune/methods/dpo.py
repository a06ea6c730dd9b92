"""Direct preference optimisation and its relatives, plus the unlikelihood baseline.

Each loss is a function of Δ (see :mod:`preftune.losses`), chosen once, by name, in
:data:`LOSSES`. Chosen and rejected completions of a micro-batch go through one forward pass.
Reference log-probs are computed once, before training, by :func:`reference_logps` and stored on
the pairs, so no second model sits in memory while training; a reference-free loss (SimPO) skips
them and Δ is the difference of the policy's own log-probs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .. import distributed, losses
from ..alarms import Alarms
from ..config import DPOConfig, SamplingConfig
from ..data import Encoded, batch_count, collate, shuffled_batches
from ..logprobs import LogProbs, completion_logps
from ..loop import StepLoss
from ..models import AdaptersOff
from ..rollout import sample
from .rl import gold_or_none


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


def last_token_logps(lp: LogProbs) -> torch.Tensor:
    """(B,) the log-prob of each row's last completion token (a finished completion's EOS)."""
    last = lp.mask.shape[1] - 1 - lp.mask.flip(-1).int().argmax(-1)  # the last True of each row
    return lp.token_logps.gather(1, last[:, None]).squeeze(1)


class SampleMonitor:
    """What the policy itself writes, measured at every evaluation: ``n`` held-out prompts sampled
    once each (temperature ``gen.temperature``, a fixed seed, so evaluations differ only by the
    weights). ``sample/kl`` is the Monte Carlo KL to the reference, log π(y) - log π_ref(y) summed
    over a completion and averaged; ``sample/length`` the mean completion length in tokens;
    ``sample/eos_rate`` the share that end; on the lists world's prompts ``sample/gold`` too (never read
    by an alarm: it is what they are validated against). Sampled, not greedy: one pass gives all three, as the
    final evaluation samples them. The reference is pi_SFT: under LoRA the policy with its adapters
    off, otherwise a frozen copy made before training (the weights once more in memory)."""

    def __init__(self, reference, tokenizer, prompts: Sequence, gen: SamplingConfig, max_prompt_length: int):
        self.reference, self.tokenizer, self.prompts = reference, tokenizer, list(prompts)
        self.gen, self.max_prompt_length = gen, max_prompt_length

    def bind(self, module) -> None:
        """Under FSDP the loop trains a sharded copy: a LoRA reference follows it."""
        if isinstance(self.reference, AdaptersOff):
            self.reference = AdaptersOff(module)

    @torch.no_grad()
    def __call__(self, policy) -> dict[str, float]:
        with distributed.gathered(policy) if distributed.world_size() > 1 else contextlib.nullcontext(policy) as whole:
            samples = sample(whole, self.tokenizer, self.prompts, self.gen, n=1, max_prompt_length=self.max_prompt_length)
            batch = collate([s.encoded() for s in samples], self.tokenizer.pad_token_id)
            ref = completion_logps(self.reference, batch, self.gen.temperature or 1.0).logps.float().cpu()
        logps = torch.tensor([float(sum(s.token_logps)) for s in samples])
        out = {
            "sample/kl": float((logps - ref).mean()),
            "sample/length": sum(len(s.token_logps) for s in samples) / len(samples),
            "sample/eos_rate": sum(s.ended for s in samples) / len(samples),
        }
        gold = gold_or_none(samples)  # lists-world prompts: what the alarms are validated against
        return out if gold is None else out | {"sample/gold": sum(gold) / len(gold)}


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
    """DPO-family training: a :class:`PreferenceLoss` of Δ on pairs whose reference log-probs are cached.

    ``nll_coef`` > 0 adds that times the token-mean NLL of each chosen completion to its pair's loss
    (RPO, arXiv 2404.19733): the chosen completions' likelihood is held up while the margin grows.
    Every evaluation measures, on the held-out pairs, the log-ratios to the reference of chosen and
    rejected and their margin (``logratio/*``, ``margin``; all 0 at pi_SFT) and, with a
    :class:`SampleMonitor`, what the policy writes; ``alarms`` read both (:func:`preftune.alarms.dpo_rules`).
    """

    monitor = ("accuracy", "max")

    def __init__(
        self,
        data: PairData,
        loss: PreferenceLoss,
        beta: float,
        nll_coef: float = 0.0,
        sampler: SampleMonitor | None = None,
        alarms: Alarms | None = None,
    ):
        self.data, self.preference_loss, self.beta, self.nll_coef = data, loss, beta, nll_coef
        self.n_batches, self.batches = data.n_batches, data.batches
        self.sampler, self.alarms = sampler, alarms
        self.at_start: dict[str, float] = {}

    def start(self, model) -> dict[str, float]:
        """The monitors at pi_SFT (``model`` before training), the alarms' starting values."""
        at_start = (
            {"eval/logratio/chosen": 0.0, "eval/logratio/rejected": 0.0, "eval/margin": 0.0} if self.preference_loss.reference else {}
        )
        if self.sampler is not None:
            was_training = model.training
            model.eval()
            at_start |= {f"eval/{k}": v for k, v in self.sampler(model).items()}
            model.train(was_training)
        if self.alarms is not None:
            self.alarms.observe_start(at_start)
        self.at_start = at_start  # the loop logs it as step 0
        return at_start

    def bind(self, module) -> None:
        if self.sampler is not None:
            self.sampler.bind(module)

    def _terms(self, model, pairs):
        lp, c, r = _forward(model, pairs, self.data.pad_id, self.preference_loss.length_normalise)
        use_ref = self.preference_loss.reference  # a reference-free loss: Δ from the policy alone
        ref_c = torch.tensor([p.ref_chosen if use_ref else 0.0 for p in pairs], device=c.device)
        ref_r = torch.tensor([p.ref_rejected if use_ref else 0.0 for p in pairs], device=c.device)
        delta = losses.preference_delta(c, r, ref_c, ref_r)
        return lp, c, r, ref_c, ref_r, delta

    def loss(self, model, pairs: list[Pair]) -> StepLoss:
        lp, c, r, ref_c, ref_r, delta = self._terms(model, pairs)
        loss = self.preference_loss.fn(delta, torch.tensor([p.strength for p in pairs], device=delta.device))
        B = len(pairs)
        nll = -lp.logps[:B] / lp.n_tokens[:B].clamp(min=1)  # (B,) token-mean NLL of y_w
        if self.nll_coef > 0:
            loss = loss + self.nll_coef * nll
        reward_c, reward_r = self.beta * (c - ref_c).detach(), self.beta * (r - ref_r).detach()  # the implicit rewards
        metrics = {
            "rewards/chosen": reward_c.mean().item(),
            "rewards/rejected": reward_r.mean().item(),
            "rewards/margin": (reward_c - reward_r).mean().item(),
            "rewards/accuracy": (reward_c > reward_r).float().mean().item(),
            "logps/chosen": c.mean().item(),
            "logps/rejected": r.mean().item(),
            "logps/ref_chosen": ref_c.mean().item(),
            "logps/ref_rejected": ref_r.mean().item(),
            "logps/eos_chosen": last_token_logps(lp)[:B].mean().item(),  # chosen completions end with EOS
            "nll/chosen": nll.mean().item(),
        }
        return StepLoss(loss.sum(), len(pairs), metrics)

    def evaluate(self, model) -> dict[str, float]:
        sums = {"logratio/chosen": 0.0, "logratio/rejected": 0.0}

        def won_and_loss(pairs):
            _, c, r, ref_c, ref_r, delta = self._terms(model, pairs)
            sums["logratio/chosen"] += float((c - ref_c).detach().sum())
            sums["logratio/rejected"] += float((r - ref_r).detach().sum())
            return delta > 0, self.preference_loss.fn(delta, torch.tensor([p.strength for p in pairs], device=delta.device))

        out = self.data.evaluate(won_and_loss)
        if out and self.preference_loss.reference:  # a reference-free loss (SimPO) has no log-ratios
            n = len(self.data.held_out)
            out |= {k: v / n for k, v in sums.items()}
            out["margin"] = out["logratio/chosen"] - out["logratio/rejected"]
        if self.sampler is not None:
            out |= self.sampler(model)
        return out


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
