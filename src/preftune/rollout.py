"""Batched sampling with a KV cache: left-padded prompts, temperature / top-k / top-p, stop at EOS.

A completion ends at its first EOS (the EOS is kept in ``completion_ids`` and the text is cut
before it); a completion that never emits EOS within ``max_new_tokens`` has ``ended = False``.
Dropout is off while sampling. The returned per-token log-probs are those of the *sampling*
distribution (temperature applied, before top-k/top-p filtering), computed by the same
``gather_token_logps`` the training forward uses.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from . import distributed, faults
from .config import SamplingConfig
from .data import Encoded, collate, encode
from .logprobs import gather_token_logps, model_device, position_ids


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


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k / nucleus with -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


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
    """``n`` completions for each prompt (prompt-major order: all of prompt 0's, then prompt 1's, ...)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    todo = [p for p in prompts for _ in range(n)]
    out: list[Sample] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sampling", unit="seq", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 5.0)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start : start + cfg.batch_size]
        enc = [encode(tokenizer, p, "", max_prompt_length + 1, max_prompt_length, add_eos=False) for p in chunk]
        batch = collate(enc, tokenizer.pad_token_id, padding_side="left").to(device)
        out.extend(_sample_batch(model, tokenizer, chunk, [e.input_ids for e in enc], batch.input_ids, batch.attention_mask, cfg, gen, eos))
        faults.point("generate")
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return out


def sample_shared(
    model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig(), n: int = 1, progress: bool = False
) -> list[Sample]:
    """:func:`sample` with the work shared by every process under torchrun: each samples a contiguous
    share of the prompts (its seed offset by its rank; rank 0's is ``cfg.seed``), and every process
    returns all samples in prompt order. In one process, exactly ``sample``."""
    mine = distributed.shard(list(prompts))
    seeded = replace(cfg, seed=cfg.seed + 7919 * distributed.rank())
    return distributed.gather(sample(model, tokenizer, mine, seeded, n=n, progress=progress and distributed.is_main()))


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sample_batch(model, tokenizer, prompts, prompt_ids, input_ids, attention_mask, cfg: SamplingConfig, gen, eos: int) -> list[Sample]:
    B = input_ids.shape[0]
    cache_kw = _cache_kwarg(model)
    pos = position_ids(attention_mask)
    res = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = getattr(res, cache_kw), res.logits[:, -1]  # (B, V)
    next_pos = pos[:, -1:] + 1  # (B, 1)
    mask = attention_mask.long()
    tokens, logps = [], []
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for _ in range(cfg.max_new_tokens):
        logits = logits.float()
        if cfg.temperature == 0:
            tok = logits.argmax(-1)
            lp = gather_token_logps(logits[:, None], tok[:, None])[:, 0]
        else:
            scaled = logits / cfg.temperature
            probs = _filter_logits(scaled, cfg.top_k, cfg.top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
            lp = gather_token_logps(scaled[:, None], tok[:, None])[:, 0]
        tok = tok.masked_fill(done, eos)  # finished rows keep emitting EOS; ignored below
        tokens.append(tok)
        logps.append(lp.masked_fill(done, 0.0))
        done = done | (tok == eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **{cache_kw: cache})
        cache, logits = getattr(res, cache_kw), res.logits[:, -1]
        next_pos = next_pos + 1
    ids = torch.stack(tokens, 1).tolist()  # (B, T_new)
    lps = torch.stack(logps, 1)
    samples = []
    for i in range(B):
        row = ids[i]
        ended = eos in row
        cut = row.index(eos) + 1 if ended else len(row)
        text_ids = row[: cut - 1] if ended else row
        text = tokenizer.decode(text_ids, skip_special_tokens=False)
        token_lps = lps[i, :cut]
        samples.append(
            Sample(prompts[i], text, tuple(row[:cut]), ended, float(token_lps.sum()), tuple(prompt_ids[i]), tuple(token_lps.tolist()))
        )
    return samples


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
