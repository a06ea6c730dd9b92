"""Reward-model training: Bradley–Terry on pairs, and on every pair of a K-way ranking.

A *unit* is one comparison record: a pair, or a ranking of K completions. All completions of a
micro-batch go through one forward pass; a ranking's K·(K-1)/2 pairs stay in the same batch
and are averaged, so a ranking weighs as much as a pair (InstructGPT, section 3.5) — or, with
``ranking_loss="plackett-luce"``, the ranking's full Plackett–Luce likelihood is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import losses
from ..config import TokenConfig
from ..data import Comparison, Encoded, Ranking, batch_count, collate, encode, shuffled_batches
from ..loop import StepLoss


@dataclass(frozen=True)
class Unit:
    """One comparison record, tokenised: completions and the (better, worse) pairs among them."""

    encoded: tuple[Encoded, ...]
    pairs: tuple[tuple[int, int], ...]
    ranking: tuple[int, ...]  # best first
    weight: float = 1.0  # preference strength (1 when not given or not used)


def to_units(records: Sequence[Comparison | Ranking], tokenizer, max_length: int, max_prompt_length: int, use_strength: bool) -> list[Unit]:
    units = []
    for r in records:
        if isinstance(r, Ranking):
            texts, ranking, weight, ended = r.completions, r.ranking, 1.0, r.ended_flags()
        else:
            texts, ranking, ended = (r.chosen, r.rejected), (0, 1), r.ended
            weight = r.strength if (use_strength and r.strength is not None) else 1.0
        # a completion that never ended is scored as it was sampled: without an EOS
        enc = tuple(encode(tokenizer, r.prompt, t, max_length, max_prompt_length, add_eos=e) for t, e in zip(texts, ended))
        units.append(Unit(enc, tuple(losses.ranking_pairs(ranking)), tuple(ranking), weight))
    return units


class RewardTraining:
    """Bradley–Terry (optionally strength-weighted, with a margin) or Plackett–Luce."""

    monitor = ("accuracy", "max")

    def __init__(
        self,
        train: Sequence[Unit],
        held_out: Sequence[Unit],
        pad_id: int,
        batch_size: int,
        seed: int,
        margin: float = 0.0,
        ranking_loss: str = "pairs",
    ):
        if ranking_loss not in ("pairs", "plackett-luce"):
            raise ValueError(f"ranking_loss must be 'pairs' or 'plackett-luce', got {ranking_loss!r}")
        self.train, self.held_out = list(train), list(held_out)
        self.pad_id, self.batch_size, self.seed = pad_id, batch_size, seed
        self.margin, self.ranking_loss = margin, ranking_loss

    def n_batches(self) -> int:
        return batch_count(len(self.train), self.batch_size)

    def batches(self, epoch: int) -> list[list[Unit]]:
        return shuffled_batches(self.train, self.batch_size, self.seed, epoch)

    def scores(self, model, units: Sequence[Unit]) -> tuple[torch.Tensor, list[int]]:
        """Scores of every completion of ``units`` in one forward pass; ``starts[i]`` indexes unit i's first."""
        flat = [e for u in units for e in u.encoded]
        batch = collate(flat, self.pad_id)
        starts, n = [], 0
        for u in units:
            starts.append(n)
            n += len(u.encoded)
        return model(batch.input_ids, batch.attention_mask, batch.completion_mask), starts  # (N,)

    def _pair_terms(self, model, units):
        scores, starts = self.scores(model, units)
        w_idx, l_idx, weights = [], [], []
        for u, s in zip(units, starts):
            for w, l in u.pairs:
                w_idx.append(s + w)
                l_idx.append(s + l)
                weights.append(u.weight / len(u.pairs))  # a unit's pairs share one unit of weight
        w_idx, l_idx = torch.tensor(w_idx, device=scores.device), torch.tensor(l_idx, device=scores.device)
        return scores, starts, scores[w_idx], scores[l_idx], torch.tensor(weights, device=scores.device)

    def loss(self, model, units: list[Unit]) -> StepLoss:
        scores, starts, chosen, rejected, weights = self._pair_terms(model, units)
        if self.ranking_loss == "plackett-luce":
            total = sum(
                losses.plackett_luce(scores[s : s + len(u.encoded)], torch.tensor(u.ranking, device=scores.device))
                for u, s in zip(units, starts)
            )
        else:
            total = losses.bradley_terry(chosen, rejected, self.margin, weights).sum()
        margin = chosen - rejected
        metrics = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item(), "score_std": scores.std().item()}
        return StepLoss(total, len(units), metrics)

    def evaluate(self, model) -> dict[str, float]:
        if not self.held_out:
            return {}
        correct = n = 0
        loss = 0.0
        for i in range(0, len(self.held_out), 4 * self.batch_size):
            _, _, chosen, rejected, _ = self._pair_terms(model, self.held_out[i : i + 4 * self.batch_size])
            correct += (chosen > rejected).sum().item()
            n += len(chosen)
            loss += losses.bradley_terry(chosen, rejected).sum().item()
        return {"accuracy": correct / n, "loss": loss / n}


@torch.no_grad()
def score_texts(
    rm,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    tokens: TokenConfig = TokenConfig(),
    ended: Sequence[bool] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Reward-model scores (N,) of (prompt, completion) pairs; each completion is scored with its EOS
    unless ``ended`` says it never emitted one."""
    rm.eval()
    ended = [True] * len(pairs) if ended is None else ended
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = zip(pairs[i : i + batch_size], ended[i : i + batch_size])
        enc = [encode(tokenizer, p, c, tokens.max_length, tokens.max_prompt_length, add_eos=e) for (p, c), e in chunk]
        batch = collate(enc, tokenizer.pad_token_id)
        out.append(rm(batch.input_ids, batch.attention_mask, batch.completion_mask))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def score_samples(rm, samples, pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """Reward-model scores (N,) of sampled completions (:class:`preftune.rollout.Sample`), as sampled:
    their own ids, with an EOS only where one was emitted."""
    out = []
    for i in range(0, len(samples), batch_size):
        batch = collate([s.encoded() for s in samples[i : i + batch_size]], pad_id)
        out.append(rm(batch.input_ids, batch.attention_mask, batch.completion_mask))
    return torch.cat(out) if out else torch.zeros(0)
