"""Tokenisation and collation: token ids of prompt + completion, padded batches, shuffled batches.

Tokenisation and truncation policy (the one place it is decided)
----------------------------------------------------------------
* The prompt and the completion are tokenised *separately* and the ids joined, so the
  completion tokens are exactly what the model must produce: no BPE merge across the boundary.
  The prompt gets the tokenizer's own special tokens (a BOS where it wants one); the
  completion gets none, then EOS is appended. A boolean completion mask, not the pad id,
  marks what carries loss, so EOS is learned even when a tokenizer's pad equals its eos.
* Too long: the prompt is first cut from the *left* to ``max_prompt_length`` tokens (the end
  of a prompt, "Assistant:", matters most); then the completion is cut from the *right* so the
  total fits ``max_length``. A cut completion has lost its EOS — it really was truncated.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + completion; ``n_prompt`` ids belong to the prompt."""

    input_ids: tuple[int, ...]
    n_prompt: int
    truncated: bool = False


def encode(tokenizer, prompt: str, completion: str, max_length: int, max_prompt_length: int | None = None, add_eos: bool = True) -> Encoded:
    """Tokenise prompt and completion separately and join them (policy in the module doc)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    max_prompt = max_length - 1 if max_prompt_length is None else min(max_prompt_length, max_length - 1)
    truncated = False
    if len(prompt_ids) + len(completion_ids) > max_length:
        truncated = True
        if len(prompt_ids) > max_prompt:  # cut from the left, keeping what the tokenizer puts first (a BOS)
            head = tokenizer("", add_special_tokens=True)["input_ids"] if prompt_ids else []
            head = head if prompt_ids[: len(head)] == head and len(head) < max_prompt else []
            prompt_ids = head + prompt_ids[len(prompt_ids) - max_prompt + len(head) :]
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return Encoded(tuple(prompt_ids) + tuple(completion_ids), len(prompt_ids), truncated)


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """A pretraining document: EOS as a separator in front (so the first token is predicted), all
    tokens carry loss, EOS at the end."""
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(tuple(ids[:max_length]), 1, len(ids) > max_length)


@dataclass
class Batch:
    """A padded batch. Masks are boolean; True means "counts"."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    completion_mask: torch.Tensor  # (B, T) bool, True on completion tokens (the ones with loss)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


def collate(examples: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad to the longest example, on the right (training) or the left (generation)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    completion = torch.zeros((B, T), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        start = 0 if padding_side == "right" else T - n
        input_ids[i, start : start + n] = torch.tensor(e.input_ids)
        attention[i, start : start + n] = True
        completion[i, start + e.n_prompt : start + n] = True
    return Batch(input_ids, attention, completion)


def batch_count(n_items: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`shuffled_batches` makes of ``n_items``."""
    return n_items // batch_size if drop_last else -(-n_items // batch_size)


def shuffled_batches(items: Sequence, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[list]:
    """Deterministic shuffled batches for one epoch: the order depends only on (seed, epoch)."""
    order = list(range(len(items)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    return [[items[j] for j in order[i : i + batch_size]] for i in range(0, stop, batch_size)]
