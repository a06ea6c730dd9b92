"""The one place that runs a causal LM over a padded batch and turns logits into log-probs.

Everything that needs log-probs of completion tokens — SFT, DPO, RL rollouts and evaluation —
comes through :func:`completion_logps`, so the logit shift, the position ids under padding, the
temperature and the masking are decided once.

Padding is not computed on, and a prefix that several sequences share is computed once: when it
pays, a padded batch (B, T) runs as a packed one (R, W) — sequences laid end to end in fewer rows,
each restarting its position ids, those that start alike sharing their common start
(:class:`Packing`). Outputs come back in the padded layout, equal to the padded forward's up to
float rounding.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


ATTENTION_FIT = 12  # Packing.plan's cost: a token's attention weighs W / (ATTENTION_FIT · hidden) of its other work
MIN_SHARED = 4  # tokens: sequences starting with at least this many equal tokens share them
SHARING_MARGIN = 0.9  # ... when that packs at most 90% of plain packing's cost (measured: wide units of
# short shared starts, as SFT's "Human: Help me out." makes, ran slower than plain packing)


@dataclass(frozen=True)
class Packing:
    """Where each real token of a padded batch (B, T) sits in a packed one (R, W).

    Sequences that start with the same tokens (DPO's chosen and rejected, a ranking's K completions,
    an RL prompt's k samples) form a *unit*: the shared prefix once, then each sequence's own
    suffix, which attends to the prefix and to itself only (``attention_mask``, a 4D mask; None
    when nothing is shared, and the restarting position ids alone separate the sequences). Units
    are laid end to end in R rows of width W.

    ``dst`` maps every padded position to its packed position (``R·W`` for padding; a shared
    prefix position is the destination of every sequence that starts with it); ``src`` maps every
    packed position to one padded position holding its token (``B·T`` for the rows' tails).
    """

    shape: tuple[int, int]  # (B, T)
    rows: int  # R
    width: int  # W
    src: torch.Tensor  # (R·W,) long
    dst: torch.Tensor  # (B·T,) long
    position_ids: torch.Tensor  # (R, W): each token's position in its own sequence; 0, 1, ... in a row's tail
    attention_mask: torch.Tensor | None = None  # (R, 1, W, W) bool, True = may attend, when prefixes are shared

    @staticmethod
    def plan(input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden_size: int, share: bool = True) -> Packing | None:
        """A packing of this batch (real tokens contiguous in each row, padding on either side), or
        None when it would not pay. Cost is rows × width × (1 + W / 12·hidden): a token's attention
        grows with the row width W (the 12 fitted on this CPU: bench and demo batches, where plain
        packing saved 7-16% of a training step's time). A unit of shared start is at most twice the
        longest sequence, so units pack like sequences."""
        B, T = attention_mask.shape
        mask = attention_mask.bool()
        lengths = mask.sum(-1)
        lens = lengths.tolist()
        if B < 2 or sum(lens) == 0:
            return None
        starts = mask.long().argmax(-1)  # first real token of each row
        cost = lambda rows, width: rows * width * (1 + width / (ATTENTION_FIT * hidden_size))  # noqa: E731
        best = _layout([([i], n) for i, n in enumerate(lens)], lens, B, cost)
        if share:  # shared starts, if they beat plain packing by SHARING_MARGIN (their mask is not free)
            units = _units(input_ids, starts.tolist(), lens, cap=2 * max(lens))
            if len(units) < B and (shared := _layout(units, lens, B, cost)) is not None:
                if best is None or shared[0] < SHARING_MARGIN * best[0]:
                    best = shared
        if best is None or best[0] >= cost(B, T):
            return None
        _, R, W, place, units, loads = best
        # Per sequence: where its unit starts (flat), its prefix length, where its suffix starts in the unit, its branch.
        base, prefix, suffix_at, branch, unit_of = [0] * B, [0] * B, [0] * B, [0] * B, [0] * B
        for u, (members, p) in enumerate(units):
            r, off = place[u]
            at = p
            for b, i in enumerate(members):
                base[i], prefix[i], suffix_at[i], branch[i], unit_of[i] = r * W + off, p, at, b + 1, u
                at += lens[i] - p
        device = attention_mask.device
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        seq = torch.repeat_interleave(torch.arange(B, device=device), lengths)  # (N,) each real token's sequence
        within = torch.arange(len(seq), device=device) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        shared = within < t(prefix)[seq]
        padded = seq * T + starts[seq] + within
        packed = t(base)[seq] + torch.where(shared, within, t(suffix_at)[seq] + within - t(prefix)[seq])
        dst = torch.full((B * T,), R * W, dtype=torch.long, device=device)
        dst[padded] = packed
        src = torch.full((R * W,), B * T, dtype=torch.long, device=device)
        src[packed] = padded  # a shared position: any of its sequences (they hold the same token)
        pos = torch.zeros(R * W, dtype=torch.long, device=device)
        pos[packed] = within
        loads = t(loads)
        col = torch.arange(W, device=device)[None, :]
        tail = col >= loads[:, None]  # (R, W) a row's unused end: its own sequence 0, 1, ...
        pos = torch.where(tail, col - loads[:, None], pos.view(R, W))
        attend = None
        if any(len(members) > 1 for members, _ in units):
            unit = torch.full((R * W,), -1, dtype=torch.long, device=device)
            unit[packed] = t(unit_of)[seq]
            unit = torch.where(tail.flatten(), -2 - torch.arange(R, device=device).repeat_interleave(W), unit).view(R, W)
            br = torch.zeros(R * W, dtype=torch.long, device=device)
            br[packed] = torch.where(shared, 0, t(branch)[seq])
            br = br.view(R, W)
            causal = col.view(1, 1, W) <= col.view(1, W, 1)  # key k <= query q
            same = unit[:, :, None] == unit[:, None, :]
            visible = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
            attend = (same & causal & visible)[:, None]
        return Packing((B, T), R, W, src, dst, pos, attend)

    def pack(self, x: torch.Tensor, fill=0) -> torch.Tensor:
        """(B, T, ...) -> (R, W, ...); the rows' tails hold ``fill``."""
        flat = x.reshape(self.shape[0] * self.shape[1], *x.shape[2:])
        flat = torch.cat([flat, flat.new_full((1, *x.shape[2:]), fill)])
        return flat[self.src].view(self.rows, self.width, *x.shape[2:])

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(R, W, ...) -> (B, T, ...); zero on padding (a shared position goes to every sequence it starts)."""
        flat = y.reshape(self.rows * self.width, *y.shape[2:])
        flat = torch.cat([flat, flat.new_zeros((1, *y.shape[2:]))])
        return flat[self.dst].view(*self.shape, *y.shape[2:])


def _layout(units: list[tuple[list[int], int]], lens: list[int], B: int, cost):
    """The cheapest of a few row counts for these units, largest first into the emptiest row:
    (cost, rows, width, each unit's (row, offset), units, each row's tokens), or None if no row count
    below B fits."""
    sizes = [p + sum(lens[i] - p for i in members) for members, p in units]
    total, longest = sum(sizes), max(sizes)
    order = sorted(range(len(units)), key=lambda u: -sizes[u])
    best = None
    for rows in sorted({max(1, math.ceil(total / (f * longest))) for f in (1.0, 1.5, 2.0, 3.0, 4.0)}):
        if rows >= B:
            continue
        heap = [(0, r) for r in range(rows)]
        place = [(0, 0)] * len(units)
        for u in order:
            load, r = heapq.heappop(heap)
            place[u] = (r, load)
            heapq.heappush(heap, (load + sizes[u], r))
        width = max(load for load, _ in heap)
        if best is None or cost(rows, width) < best[0]:
            loads = [0] * rows
            for load, r in heap:
                loads[r] = load
            best = (cost(rows, width), rows, width, place, units, loads)
    return best


def _units(input_ids: torch.Tensor, starts: list[int], lens: list[int], cap: int) -> list[tuple[list[int], int]]:
    """Sequences grouped by a shared start: (members, shared prefix length). A sequence joins the
    unit before it in sorted order when it starts with that unit's whole prefix (at least
    ``MIN_SHARED`` tokens) and the unit stays within ``cap`` tokens; a unit of one has its whole
    sequence as its prefix."""
    rows = input_ids.tolist()
    seqs = [rows[i][s : s + n] for i, (s, n) in enumerate(zip(starts, lens))]
    units: list[tuple[list[int], int]] = []
    for i in sorted(range(len(seqs)), key=lambda i: seqs[i]):
        if units:
            members, p = units[-1]
            first = seqs[members[0]]
            if len(members) == 1:  # a unit of one: share as much as the two have in common
                p = next((j for j, (a, b) in enumerate(zip(first, seqs[i])) if a != b), min(len(first), len(seqs[i])))
            size = p + sum(lens[j] - p for j in members) + lens[i] - p
            if p >= MIN_SHARED and seqs[i][:p] == first[:p] and len(seqs[i]) >= p and size <= cap:
                units[-1] = (members + [i], p)
                continue
        units.append(([i], lens[i]))
    return units


def packing_for(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packing | None:
    """The packing of a batch for ``model``, or None (an architecture not known to pack, no gain, or
    ``PREFTUNE_PACKING=0``: padded batches, whose rounding does not depend on what else is in them).
    Prefixes are shared under SDPA attention (which takes the 4D mask); under any other, sequences
    are only laid end to end."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKABLE or os.environ.get("PREFTUNE_PACKING") == "0":
        return None
    return Packing.plan(input_ids, attention_mask, config.hidden_size, share=getattr(config, "_attn_implementation", None) == "sdpa")


def run_model(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: Packing | None, **kwargs):
    """``model``'s output for a padded batch: packed when ``packing`` is given, padded otherwise."""
    if packing is None:
        return model(
            input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids(attention_mask), use_cache=False, **kwargs
        )
    return model(
        input_ids=packing.pack(input_ids),
        attention_mask=packing.attention_mask,
        position_ids=packing.position_ids,
        use_cache=False,
        **kwargs,
    )


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


def completion_logps(model, batch: Batch, temperature: float = 1.0, entropy: bool = False) -> LogProbs:
    """Per-token and per-sequence log-probs of ``batch``'s completion tokens under ``model`` (on its device).

    The output layer runs only at the positions that predict a completion token (each once, a shared
    prefix's last position included), so no logits are made for prompts or padding: with a large
    vocabulary (SmolLM2's 49,152) the output layer and its log-normaliser are a good part of a step.
    """
    batch = batch.to(model_device(model))
    packing = packing_for(model, batch.input_ids, batch.attention_mask)
    mask = batch.completion_mask[:, 1:]  # (B, T-1): position t predicts token t+1
    B, T = batch.input_ids.shape
    if packing is None:
        layout = torch.arange(B * T, device=mask.device).view(B, T)[:, :-1]
    else:
        layout = packing.dst.view(packing.shape)[:, :-1]
    keep, inverse = torch.unique(layout[mask], return_inverse=True)  # the layout positions to compute, once each
    with _output_rows(model, keep) as selected:
        logits = run_model(model, batch.input_ids, batch.attention_mask, packing).logits
    logits = logits.reshape(-1, logits.shape[-1])
    if not selected:  # no output layer to hook: all positions were computed; read the kept ones
        logits = logits[keep]
    if temperature != 1.0:
        logits = logits / temperature
    logits = logits.float()
    picked = logits[inverse, batch.input_ids[:, 1:][mask]] - logits.logsumexp(-1)[inverse]
    token_logps = torch.zeros(mask.shape, dtype=picked.dtype, device=mask.device).index_put((mask,), picked)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = torch.zeros(mask.shape, device=mask.device).index_put((mask,), losses.token_entropy(logits)[inverse])
    return LogProbs(token_logps.sum(-1), token_logps, mask, ent)


@contextmanager
def _output_rows(model, keep: torch.Tensor) -> Iterator[bool]:
    """Within it, ``model``'s output layer computes only the flattened positions ``keep`` of its input
    (logits (1, len(keep), V)); yields False when the model has no output layer to hook."""
    inner = getattr(model, "module", model)  # DDP's wrapped model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        yield False
        return

    def select(_module, args):
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1])[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield True
    finally:
        handle.remove()
