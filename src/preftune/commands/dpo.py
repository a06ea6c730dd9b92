"""``preftune dpo``: direct preference optimisation (and relatives) against a frozen pi_SFT."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch

from .. import distributed
from ..alarms import Alarms, dpo_rules
from ..atomic import save_atomic
from ..config import DPOConfig, TokenConfig, to_dict
from ..data import Comparison, Ranking, encode
from ..loop import train
from ..methods.dpo import DirectPreference, Pair, PairData, SampleMonitor, Unlikelihood, preference_loss, reference_logps
from ..models import AdaptersOff, add_lora, load_policy, load_reference, save_model
from .common import comparisons, global_batch_size, one_run_per_directory, prepare, record_config


def to_pairs(records, tokenizer, tokens: TokenConfig) -> list[Pair]:
    """Tokenised pairs; a ranking gives every (better, worse) pair of its completions."""
    pairs = []
    for r in records:
        if isinstance(r, Ranking):
            c, e = r.completions, r.ended_flags()
            items = [((c[w], e[w]), (c[l], e[l]), 1.0) for i, w in enumerate(r.ranking) for l in r.ranking[i + 1 :]]
        else:
            assert isinstance(r, Comparison)
            items = [((r.chosen, r.ended[0]), (r.rejected, r.ended[1]), 1.0 if r.strength is None else r.strength)]
        for chosen, rejected, strength in items:  # a completion that never ended is encoded without an EOS
            enc = [encode(tokenizer, r.prompt, t, tokens.max_length, tokens.max_prompt_length, add_eos=e) for t, e in (chosen, rejected)]
            pairs.append(Pair(enc[0], enc[1], strength))
    return pairs


def cache_dir() -> Path:
    """Where computed-once results live (``PREFTUNE_CACHE``, else ``~/.cache/preftune``); every entry
    is keyed on content, so runs share it and nothing in it goes stale."""
    return Path(os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune")


def weights_digest(model) -> str:
    """sha256 of a model's parameters and buffers, names and bytes: the model, not where it came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(memoryview(t.detach().cpu().contiguous().view(torch.uint8).numpy()))
    return h.hexdigest()


def cached_reference(model, pairs: list[Pair], pad_id: int, cfg: DPOConfig, length_normalise: bool) -> list[Pair]:
    """Reference log-probs, computed once per reference weights, pairs and settings: DPO runs from the
    same model on the same data (the demo's dpo, ipo and β sweep) share them, and a model retrained
    at the same path misses the cache."""
    key = hashlib.sha256(
        json.dumps(
            [weights_digest(model), length_normalise, to_dict(cfg.tokens), [(p.chosen.input_ids, p.rejected.input_ids) for p in pairs]]
        ).encode()
    ).hexdigest()
    path = cache_dir() / "reference" / f"{key[:32]}.pt"
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError):  # damaged from outside (it is written atomically): recompute
            blob = {}
        if blob.get("key") == key:
            return [Pair(p.chosen, p.rejected, p.strength, float(c), float(r)) for p, c, r in zip(pairs, blob["chosen"], blob["rejected"])]
    done = reference_logps(model, pairs, pad_id, length_normalise)
    if not distributed.is_main():  # every process computes the same; one writes
        return done
    save_atomic(
        {"key": key, "chosen": torch.tensor([p.ref_chosen for p in done]), "rejected": torch.tensor([p.ref_rejected for p in done])}, path
    )
    return done


@one_run_per_directory
def dpo(cfg: DPOConfig) -> Path:
    prepare(cfg)
    out = Path(cfg.train.out)
    model, tokenizer = load_policy(cfg.model)
    records, held_records = comparisons(cfg.data, cfg.eval_data, 0.05, cfg.train.seed, tokenizer)
    given = load_reference(cfg.ref, tokenizer) if cfg.ref and cfg.loss != "unlikelihood" else None
    record_config(cfg, "dpo")  # after the data is read: a bad file leaves the directory as it was
    train_pairs, held_pairs = to_pairs(records, tokenizer, cfg.tokens), to_pairs(held_records, tokenizer, cfg.tokens)
    pad, leash = tokenizer.pad_token_id, "no reference"
    if cfg.loss == "unlikelihood":  # the baseline: no function of Δ, no reference
        method = Unlikelihood(PairData(train_pairs, held_pairs, pad, global_batch_size(cfg.train), cfg.train.seed))
    else:
        loss = preference_loss(cfg)
        if loss.reference:  # --ref, else the model as loaded (pi_SFT); with LoRA, the same base before adapters
            ref = given or model
            train_pairs = cached_reference(ref, train_pairs, pad, cfg, loss.length_normalise)
            held_pairs = reference_logps(ref, held_pairs, pad, loss.length_normalise)
            leash = f"beta {cfg.beta}" + (f", reference {cfg.ref}" if given is not None else "")
    watch = cfg.monitor_prompts > 0 and cfg.loss != "unlikelihood"
    frozen = given or (copy.deepcopy(model).requires_grad_(False) if watch and not cfg.lora else None)  # the sample monitor's KL reference
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, seed=cfg.train.seed)
    if cfg.loss != "unlikelihood":
        data = PairData(train_pairs, held_pairs, pad, global_batch_size(cfg.train), cfg.train.seed)
        sampler = None
        if watch:  # held-out prompts, each once, in the order the split gave them
            prompts = list(dict.fromkeys(r.prompt for r in held_records or records))[: cfg.monitor_prompts]
            reference = AdaptersOff(model) if cfg.lora and given is None else frozen
            sampler = SampleMonitor(reference, tokenizer, prompts, cfg.gen, cfg.tokens.max_prompt_length)
        method = DirectPreference(data, loss, cfg.beta, cfg.nll_coef, sampler, Alarms(dpo_rules(cfg.alarm)))
        method.start(model)
    print(f"{cfg.loss}: {len(train_pairs):,} training and {len(held_pairs):,} held-out pairs, {leash} -> {out}")
    train(model, method, cfg.train)
    if distributed.is_main():
        save_model(model, tokenizer, out)
    return out
