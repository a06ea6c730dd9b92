"""The one place that runs a causal LM over a padded batch and turns logits into log-probs.

Everything that needs log-probs of completion tokens — SFT, DPO, RL rollouts and evaluation —
comes through :func:`completion_logps`, so the logit shift, the position ids under padding, the
temperature and the masking are decided once.

Padding is not computed on: when it pays, a padded batch (B, T) runs as a packed one (R, W) — its
sequences laid end to end in fewer rows, each restarting its position ids, which transformers'
attention masks turn into one causal block per sequence (:class:`Packing`). Outputs come back in
the padded layout, equal to the padded forward's up to float rounding.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from . import losses
from .data import Batch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are, so inputs can follow them."""
    return next(model.parameters()).device


# Architectures whose attention masks follow packed position ids (transformers' create_causal_mask
# with attention_mask=None), checked against the padded forward in tests/test_packing.py.
PACKABLE = frozenset({"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma"})  # not OPT: positions from its mask


@dataclass(frozen=True)
class Packing:
    """Where each real token of a padded batch (B, T) sits in a packed one (R, W).

    ``dst`` maps every padded position to its packed position (``R·W`` for padding: a zero slot);
    ``src`` maps every packed position to its padded one (``B·T`` for the rows' tail: a pad slot).
    """

    shape: tuple[int, int]  # (B, T)
    rows: int  # R
    width: int  # W
    src: torch.Tensor  # (R·W,) long
    dst: torch.Tensor  # (B·T,) long
    position_ids: torch.Tensor  # (R, W): 0, 1, ... within each sequence, and within each row's tail

    @staticmethod
    def plan(attention_mask: torch.Tensor, hidden_size: int) -> Packing | None:
        """A packing of this batch (real tokens contiguous in each row, padding on either side), or
        None when it would not pay. Cost is rows × width × (1 + W / 12·hidden): a token's attention
        grows with the row width W (the 12 fitted on this CPU: bench and demo batches, where packing
        saved 7-16% of a training step's time)."""
        B, T = attention_mask.shape
        mask = attention_mask.bool()
        lengths = mask.sum(-1)
        lens = lengths.tolist()
        total = sum(lens)
        if B < 2 or total == 0:
            return None
        cost = lambda rows, width: rows * width * (1 + width / (12 * hidden_size))  # noqa: E731
        longest = max(lens)
        order = sorted(range(B), key=lambda i: -lens[i])
        best = None
        for rows in sorted({max(1, math.ceil(total / (f * longest))) for f in (1.0, 1.5, 2.0, 3.0, 4.0)}):
            if rows >= B:
                continue
            heap = [(0, r) for r in range(rows)]  # longest first, each to the emptiest row
            row_of, offset = [0] * B, [0] * B
            for i in order:
                load, r = heapq.heappop(heap)
                row_of[i], offset[i] = r, load
                heapq.heappush(heap, (load + lens[i], r))
            width = max(load for load, _ in heap)
            if best is None or cost(rows, width) < best[0]:
                best = (cost(rows, width), rows, width, row_of, offset)
        if best is None or best[0] >= cost(B, T):
            return None
        _, R, W, row_of, offset = best
        device = attention_mask.device
        starts = mask.long().argmax(-1)  # first real token of each row
        seq = torch.repeat_interleave(torch.arange(B, device=device), lengths)  # (N,) each token's sequence
        within = torch.arange(total, device=device) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        padded = seq * T + starts[seq] + within
        packed = torch.tensor(row_of, device=device)[seq] * W + torch.tensor(offset, device=device)[seq] + within
        dst = torch.full((B * T,), R * W, dtype=torch.long, device=device)
        dst[padded] = packed
        src = torch.full((R * W,), B * T, dtype=torch.long, device=device)
        src[packed] = padded
        pos = torch.zeros(R * W, dtype=torch.long, device=device)
        pos[packed] = within
        loads = torch.zeros(R, dtype=torch.long, device=device).index_add_(0, torch.tensor(row_of, device=device), lengths)
        col = torch.arange(W, device=device)[None, :]
        tail = col >= loads[:, None]  # (R, W) a row's unused end: its own sequence 0, 1, ...
        pos = torch.where(tail, col - loads[:, None], pos.view(R, W))
        return Packing((B, T), R, W, src, dst, pos)

    def pack(self, x: torch.Tensor, fill=0) -> torch.Tensor:
        """(B, T, ...) -> (R, W, ...); the rows' tails hold ``fill``."""
        flat = x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])
        flat = torch.cat([flat, flat.new_full((1, *x.shape[2:]), fill)])
        return flat[self.src].view(self.rows, self.width, *x.shape[2:])

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(R, W, ...) -> (B, T, ...); zero on padding."""
        flat = y.reshape(self.rows * self.width, *y.shape[2:])
        flat = torch.cat([flat, flat.new_zeros((1, *y.shape[2:]))])
        return flat[self.dst].view(*self.shape, *y.shape[2:])


def packing_for(model, attention_mask: torch.Tensor) -> Packing | None:
    """The packing of a batch for ``model``, or None (an architecture not known to pack, or no gain)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKABLE:
        return None
    return Packing.plan(attention_mask, config.hidden_size)


def run_model(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: Packing | None, **kwargs):
    """``model``'s output for a padded batch: packed when ``packing`` is given, padded otherwise."""
    if packing is None:
        return model(
            input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids(attention_mask), use_cache=False, **kwargs
        )
    return model(input_ids=packing.pack(input_ids), position_ids=packing.position_ids, use_cache=False, **kwargs)


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, T, V)`` of a causal LM for a batch padded on either side (zero on padding when packed)."""
    packing = packing_for(model, attention_mask)
    logits = run_model(model, input_ids, attention_mask, packing).logits
    return logits if packing is None else packing.unpack(logits)


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
    entropy: torch.Tensor | None = None  # (B, T-1) next-token entropy, no gradient, when asked for (RL's metric)

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.mask.sum(-1)  # (B,)


def token_logps_from_logits(
    logits: torch.Tensor, batch: Batch, temperature: float = 1.0, packing: Packing | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift, gather and mask: logits (B, T, V) — or (R, W, V) laid out by ``packing`` — -> token_logps
    (B, T-1), mask (B, T-1). Log-probs are taken where the logits are; only (B, T) is laid back out."""
    targets = torch.nn.functional.pad(batch.input_ids[:, 1:], (0, 1))  # position t predicts token t+1
    token_logps = gather_token_logps(logits, targets if packing is None else packing.pack(targets), temperature)
    if packing is not None:
        token_logps = packing.unpack(token_logps)
    mask = batch.completion_mask[:, 1:]
    return token_logps[:, :-1].masked_fill(~mask, 0.0), mask


def completion_logps(model, batch: Batch, temperature: float = 1.0, entropy: bool = False) -> LogProbs:
    """Per-token and per-sequence log-probs of ``batch``'s completion tokens under ``model`` (on its device)."""
    batch = batch.to(model_device(model))
    packing = packing_for(model, batch.attention_mask)
    logits = run_model(model, batch.input_ids, batch.attention_mask, packing).logits
    token_logps, mask = token_logps_from_logits(logits, batch, temperature, packing)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = losses.token_entropy(logits, temperature)
            ent = (ent if packing is None else packing.unpack(ent))[:, :-1]
    return LogProbs(token_logps.sum(-1), token_logps, mask, ent)
