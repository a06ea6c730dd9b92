"""Batched sampling: left-padded prompts, temperature / top-k / top-p, stop at EOS; the typed Rollout of an RL iteration.

A completion ends at its first EOS (the EOS is kept in ``completion_ids`` and the text is cut
before it); a completion that never emits EOS within ``max_new_tokens`` has ``ended = False``.
Dropout is off while sampling. The returned per-token log-probs are those of the *sampling*
distribution (temperature applied, before top-k/top-p filtering): a log-softmax of the same logits
the training forward reads, equal to its log-probs up to float rounding (tested). The decode loop
itself is :mod:`preftune.decode`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from . import decode, distributed, faults
from .config import SamplingConfig
from .data import Encoded, collate, encode
from .logprobs import model_device


@dataclass(frozen=True)
class Sample:
    prompt: str
    completion: str  # decoded text, EOS removed
    completion_ids: tuple[int, ...]  # sampled ids up to and including the first EOS
    ended: bool  # True if the completion emitted EOS
    logp: float  # sum of the sampled tokens' log-probs under the sampling distribution
    prompt_ids: tuple[int, ...] = ()  # the (possibly truncated) prompt ids the sample was conditioned on
    token_logps: tuple[float, ...] = ()  # per sampled token, same distribution as ``logp``

    def encoded(self) -> Encoded:
        """Prompt + sampled ids, ready for ``collate`` / ``completion_logps``."""
        return Encoded(self.prompt_ids + self.completion_ids, len(self.prompt_ids))


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    cfg: SamplingConfig = SamplingConfig(),
    n: int = 1,
    max_prompt_length: int = 96,
    progress: bool = False,
) -> list[Sample]:
    """``n`` completions for each prompt (prompt-major order: all of prompt 0's, then prompt 1's, ...).

    A batch holds ``cfg.batch_size // n`` prompts (at least one), each prompt's ``n`` samples
    decoded from one prefill (:mod:`preftune.decode`). Row ``r`` of a batch draws the ``r``-th of the
    step's uniforms, so a sample depends on the seed, its batch and its place in it, not on when
    other rows ended."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    run = decode.choose(model)
    per_batch = max(1, cfg.batch_size // n)
    out: list[Sample] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts) * n, desc="sampling", unit="seq", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 5.0)
    for start in range(0, len(prompts), per_batch):
        chunk = list(prompts[start : start + per_batch])
        enc = [encode(tokenizer, p, "", max_prompt_length + 1, max_prompt_length, add_eos=False) for p in chunk]
        batch = collate(enc, tokenizer.pad_token_id, padding_side="left").to(device)
        rows = len(chunk) * n
        done = run(model, batch.input_ids, batch.attention_mask, n, cfg.max_new_tokens, eos, decode.sampler(cfg, gen, rows, device))
        out.extend(_samples(tokenizer, [p for p in chunk for _ in range(n)], [e.input_ids for e in enc for _ in range(n)], done, eos))
        faults.point("generate")
        if bar is not None:
            bar.update(rows)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return out


def _samples(tokenizer, prompts: list[str], prompt_ids: list[tuple[int, ...]], done: decode.Decoded, eos: int) -> list[Sample]:
    """A decode's rows as :class:`Sample` s: ids up to and including the first EOS, the text before it."""
    ids = done.tokens[:, : done.steps].tolist()  # (B, steps)
    logps = done.logps[:, : done.steps]
    samples = []
    for i, row in enumerate(ids):
        ended = eos in row
        cut = row.index(eos) + 1 if ended else len(row)
        text = tokenizer.decode(row[: cut - 1] if ended else row, skip_special_tokens=False)
        token_lps = logps[i, :cut]
        samples.append(
            Sample(prompts[i], text, tuple(row[:cut]), ended, float(token_lps.sum()), tuple(prompt_ids[i]), tuple(token_lps.tolist()))
        )
    return samples


def sample_shared(
    model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig(), n: int = 1, progress: bool = False
) -> list[Sample]:
    """:func:`sample` with the work shared by every process under torchrun: each samples a contiguous
    share of the prompts (its seed offset by its rank; rank 0's is ``cfg.seed``), and every process
    returns all samples in prompt order. In one process, exactly ``sample``."""
    mine = distributed.shard(list(prompts))
    seeded = replace(cfg, seed=cfg.seed + 7919 * distributed.rank())
    return distributed.gather(sample(model, tokenizer, mine, seeded, n=n, progress=progress and distributed.is_main()))


@dataclass(frozen=True)
class Rollout:
    """One RL iteration's samples as tensors, scored and compared with the reference.

    Sequence tensors are (N, T), right-padded; token tensors are (N, T-1), aligned with
    :attr:`preftune.logprobs.LogProbs.token_logps` (position t holds token t+1) and zero off
    :attr:`mask`. Algorithms fill in ``advantages`` (N,) or (N, T-1), and PPO ``returns`` and ``values``.
    """

    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T) bool
    completion_mask: torch.Tensor  # (N, T) bool
    old_logps: torch.Tensor  # (N, T-1) the sampling policy's log-probs ("old" in PPO)
    ref_logps: torch.Tensor  # (N, T-1) the frozen reference's
    kl: torch.Tensor  # (N, T-1) the per-token KL estimate (k1 or k3) the rewards are penalised with
    scores: torch.Tensor  # (N,) reward model or gold, minus the EOS penalty, whitened if asked
    rewards: torch.Tensor  # (N,) scores - beta·Σ kl
    beta: float  # the KL coefficient of this rollout
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None  # (N, T-1)
    values: torch.Tensor | None = None  # (N, T-1) the value model's at rollout time

    _SEQUENCE_FIELDS = ("input_ids", "attention_mask", "completion_mask")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """(N, T-1) bool: True on completion tokens, aligned with the token tensors."""
        return self.completion_mask[:, 1:]

    def rows(self, idx: torch.Tensor) -> Rollout:
        """The rows ``idx``, with the columns that are padding in all of them dropped."""
        width = int(self.attention_mask[idx].sum(-1).max())  # right padding: the longest real row

        def pick(name: str, v):
            if not isinstance(v, torch.Tensor):
                return v
            if v.ndim == 1:
                return v[idx]
            return v[idx, :width] if name in self._SEQUENCE_FIELDS else v[idx, : width - 1]

        return Rollout(**{f.name: pick(f.name, getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(**{f.name: v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v for f in fields(self)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
