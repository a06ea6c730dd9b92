"""The decode loop behind every sampler (``sample``, ``generate``, ``eval``, ``best-of-n``, RL rollouts).

What it does that a plain ``generate`` loop does not, (measured together: README, "Speed"):

* **The prompt's keys and values are computed once** and shared by its ``n`` samples: the prefill
  runs on the distinct prompts, and its cache is repeated into the decode rows.
* **A KV cache allocated once** (:class:`BufferLayer`): each step writes its token's keys and
  values in place and attends to a view of the filled part — no ``torch.cat`` growing the cache.
* **Masks and positions built once per batch**: the step's 4D attention mask is a slice of one
  boolean tensor (transformers takes a prepared 4D mask as it is), its position ids a column.
* **One uniform per row per step** (:func:`draw`): the token is read off the cumulative
  distribution, where ``torch.multinomial`` draws an exponential per vocabulary entry.
* **Rows that ended leave the batch**: when a quarter of the rows have emitted EOS, the rest are
  compacted (cache, mask, positions), so the forward no longer computes on them.

Architectures: those whose attention takes a prepared 4D mask through transformers' mask helpers
with ``sdpa`` or ``eager`` attention (:data:`DECODABLE`); any other model is decoded by the plain
loop (:func:`plain_decode`) with a one-line notice.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .logprobs import gather_token_logps, position_ids

# Each checked token for token against the plain loop in tests/test_decode.py.
DECODABLE = frozenset({"gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox"})
COMPACT_AT = 0.75  # compact the batch when at most this share of its rows is still running


@dataclass
class Decoded:
    """What a decode returns: per row, the sampled ids (EOS-filled after the first EOS) and their log-probs."""

    tokens: torch.Tensor  # (B, max_new) long
    logps: torch.Tensor  # (B, max_new) float, zero after a row's first EOS
    steps: int  # decode steps taken (the longest row)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k / nucleus with -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, uniform: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from ``softmax(logits / temperature)`` filtered by top-k / top-p, and its log-prob
    under the unfiltered tempered distribution (the sampling log-prob RL uses).

    Inverse CDF: the token is the first whose cumulative (filtered, unnormalised) probability exceeds
    ``uniform · total``; one uniform in [0, 1) per row, ``uniform`` (B,). A token of zero probability
    is never drawn (its cumulative sum equals its predecessor's). Temperature 0 is greedy (``uniform``
    unused). logits (B, V) -> tokens (B,), logps (B,).
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, gather_token_logps(logits[:, None], tokens[:, None])[:, 0]
    scaled = logits / temperature
    logprobs = scaled.log_softmax(-1)  # (B, V): the tempered distribution, one fused pass
    filtered = top_k > 0 or top_p < 1.0
    weights = filter_logits(scaled, top_k, top_p).softmax(-1) if filtered else logprobs.exp()  # zero outside the filter
    cdf = weights.cumsum(-1)
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def sampler(cfg, gen: torch.Generator, rows: int, device) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The ``pick`` of a batch of ``rows`` rows sampled under ``cfg`` (a ``SamplingConfig``): every step
    draws ``rows`` uniforms from ``gen`` and row ``r`` takes the ``r``-th, whichever rows still run."""

    def pick(logits: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uniform = torch.rand(rows, generator=gen, device=device)[which] if cfg.temperature > 0 else None
        return draw(logits, cfg.temperature, cfg.top_k, cfg.top_p, uniform)

    return pick


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer allocated once, (B, H, L_max, D): a step writes its
    token's in place and attention reads the filled part, a view. A ``DynamicLayer`` to the model."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, repeats: int):
        super().__init__()
        B, H, L, D = keys.shape
        self.buffer_k = keys.new_empty(B * repeats, H, capacity, D)
        self.buffer_v = values.new_empty(B * repeats, values.shape[1], capacity, values.shape[-1])
        self.buffer_k[:, :, :L] = keys.repeat_interleave(repeats, 0)
        self.buffer_v[:, :, :L] = values.repeat_interleave(repeats, 0)
        self.length, self.device, self.is_initialized = L, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.buffer_k[:, :, : self.length], self.buffer_v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self.buffer_k.shape[2]:
            raise RuntimeError(f"the KV buffer holds {self.buffer_k.shape[2]} positions; {self.length + n} were asked for")
        self.buffer_k[:, :, self.length : self.length + n] = key_states
        self.buffer_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buffer_k, self.buffer_v = self.buffer_k[indices], self.buffer_v[indices]
        self._views()


def decodable(model) -> bool:
    config = model.config
    return getattr(config, "model_type", None) in DECODABLE and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept both. A LoRA model's
    wrapper (peft) passes either on: ask the model under it."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _step_mask(mask: torch.Tensor, length: int, dtype: torch.dtype, eager: bool) -> torch.Tensor:
    """The (B, 1, 1, length) mask of one decode step: boolean for sdpa, additive for eager attention."""
    m = mask[:, None, None, :length]
    if not eager:
        return m
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, torch.finfo(dtype).min)


@torch.no_grad()
def decode(model, input_ids, attention_mask, repeats: int, max_new_tokens: int, eos: int, pick) -> Decoded:
    """Sample ``repeats`` continuations of each left-padded prompt row: rows ``i·repeats .. i·repeats +
    repeats - 1`` continue prompt ``i``. ``pick(logits (B, V), rows (B,) long) -> (tokens, logps)``
    chooses each running row's token (``rows``: their indices in the output, for the sampler's
    random stream). A row's tokens after its first EOS are EOS with log-prob 0."""
    P, L = input_ids.shape
    B, device = P * repeats, input_ids.device
    cache_kw = _cache_kwarg(model)
    pos = position_ids(attention_mask)
    res = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=pos, use_cache=True, logits_to_keep=1)
    prefill = getattr(res, cache_kw)
    layers = [BufferLayer(layer.keys, layer.values, L + max_new_tokens, repeats) for layer in prefill.layers]
    cache = Cache(layers=layers)
    logits = res.logits[:, -1].repeat_interleave(repeats, 0)  # (B, V)
    mask = torch.ones(B, L + max_new_tokens, dtype=torch.bool, device=device)  # (B, L + max_new): built once
    mask[:, :L] = attention_mask.bool().repeat_interleave(repeats, 0)
    next_pos = (pos[:, -1:] + 1).repeat_interleave(repeats, 0)  # (B, 1)
    eager = model.config._attn_implementation == "eager"
    dtype = next(model.parameters()).dtype

    tokens = torch.full((B, max_new_tokens), eos, dtype=torch.long, device=device)
    logps = torch.zeros(B, max_new_tokens, device=device)
    rows = torch.arange(B, device=device)  # the output row of each row in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps = 0
    for t in range(max_new_tokens):
        tok, lp = pick(logits, rows)
        tok, lp = tok.masked_fill(done, eos), lp.masked_fill(done, 0.0)  # an ended row not yet compacted away
        tokens[rows, t], logps[rows, t] = tok, lp
        done, steps = done | (tok == eos), t + 1
        n_running = len(rows) - int(done.sum())  # the step's one host sync
        if n_running == 0 or t == max_new_tokens - 1:
            break
        if n_running <= COMPACT_AT * len(rows):  # rows that ended leave the batch
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            rows, tok, done, mask, next_pos = rows[keep], tok[keep], done[keep], mask[keep], next_pos[keep]
        step_mask = _step_mask(mask, L + t + 1, dtype, eager)
        res = model(input_ids=tok[:, None], attention_mask=step_mask, position_ids=next_pos + t, use_cache=True, **{cache_kw: cache})
        logits = res.logits[:, -1]
    return Decoded(tokens, logps, steps)


@torch.no_grad()
def plain_decode(model, input_ids, attention_mask, repeats: int, max_new_tokens: int, eos: int, pick) -> Decoded:
    """The same contract as :func:`decode` for any causal LM: a growing cache, a 2D mask, every row to the end."""
    input_ids, attention_mask = input_ids.repeat_interleave(repeats, 0), attention_mask.repeat_interleave(repeats, 0)
    B, device = input_ids.shape[0], input_ids.device
    cache_kw = _cache_kwarg(model)
    pos = position_ids(attention_mask)
    res = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = getattr(res, cache_kw), res.logits[:, -1]
    mask, next_pos = attention_mask.long(), pos[:, -1:] + 1
    tokens = torch.full((B, max_new_tokens), eos, dtype=torch.long, device=device)
    logps = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rows, steps = torch.arange(B, device=device), 0
    for t in range(max_new_tokens):
        tok, lp = pick(logits, rows)
        tok = tok.masked_fill(done, eos)
        tokens[:, t], logps[:, t] = tok, lp.masked_fill(done, 0.0)
        done, steps = done | (tok == eos), t + 1
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos + t, use_cache=True, **{cache_kw: cache})
        cache, logits = getattr(res, cache_kw), res.logits[:, -1]
    return Decoded(tokens, logps, steps)


_NOTICED: set[str] = set()


def choose(model):
    """:func:`decode` where the architecture allows it, else :func:`plain_decode` (said once per kind of model)."""
    if decodable(model):
        return decode
    kind = f"{getattr(model.config, 'model_type', type(model).__name__)} ({getattr(model.config, '_attn_implementation', '?')} attention)"
    if kind not in _NOTICED:
        _NOTICED.add(kind)
        print(f"notice: {kind} is decoded by the plain loop (growing cache, every row to the end)", file=sys.stderr)
    return plain_decode
