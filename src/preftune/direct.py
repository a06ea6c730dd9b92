"""``preftune dpo``: direct preference optimisation (and relatives) against a frozen pi_SFT."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import TokenConfig, TrainConfig, doc, save_config, to_dict
from .data import Comparison, Ranking, encode, load_comparisons
from .loop import train
from .methods.dpo import LOSSES, DirectPreference, Pair, Unlikelihood, delta_loss, reference_logps
from .models import add_lora, load_policy, save_model
from .stages import held_out_split, set_threads


@dataclass(frozen=True)
class DPOConfig:
    model: str = doc("", "pi_SFT: the policy to start from and the frozen reference")
    data: str = doc("", "comparisons: pairs, HH-RLHF transcripts or rankings (expanded into all pairs)")
    eval_data: str = doc("", "held-out comparisons (default: 5% of --data)")
    loss: str = doc("dpo", "dpo | cdpo | ipo | hinge | soft (8-point strength as target) | unlikelihood (no reference)", choices=LOSSES)
    # 0.5, not the paper's 0.1: on the lists world's ~8-token answers a sweep gave gold 0.70 at
    # beta 0.03, 0.71 at 0.1 and 0.79 at 0.5, where well-formedness also survived (README).
    beta: float = doc(0.5, "inverse temperature of the implicit reward (strength of the KL leash)")
    label_smoothing: float = doc(0.1, "cdpo's ε: the assumed probability that a label is flipped")
    length_normalise: bool = doc(False, "use per-token mean log-probs in Δ instead of sums (IPO's option)")
    lora: bool = doc(False, "train LoRA adapters; the reference is then the base with adapters off")
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    tokens: TokenConfig = TokenConfig(max_length=96, max_prompt_length=64)
    train: TrainConfig = TrainConfig(out="runs/dpo", epochs=3.0, lr=3e-4, batch_size=16, eval_every=50)


def to_pairs(records, tokenizer, tokens: TokenConfig) -> list[Pair]:
    pairs = []
    for r in records:
        if isinstance(r, Ranking):
            items = [(r.completions[w], r.completions[l], 1.0) for i, w in enumerate(r.ranking) for l in r.ranking[i + 1 :]]
        else:
            assert isinstance(r, Comparison)
            items = [(r.chosen, r.rejected, 1.0 if r.strength is None else r.strength)]
        for chosen, rejected, strength in items:
            enc = [encode(tokenizer, r.prompt, t, tokens.max_length, tokens.max_prompt_length) for t in (chosen, rejected)]
            pairs.append(Pair(enc[0], enc[1], strength))
    return pairs


def _cached_reference(model, pairs: list[Pair], pad_id: int, cfg: DPOConfig, path: Path) -> list[Pair]:
    """Reference log-probs, computed once and cached with the run (keyed by model, data and settings)."""
    key = hashlib.sha256(
        json.dumps(
            [cfg.model, cfg.length_normalise, to_dict(cfg.tokens), [(p.chosen.input_ids, p.rejected.input_ids) for p in pairs]]
        ).encode()
    ).hexdigest()
    if path.exists():
        blob = torch.load(path, weights_only=True)
        if blob.get("key") == key:
            return [Pair(p.chosen, p.rejected, p.strength, float(c), float(r)) for p, c, r in zip(pairs, blob["chosen"], blob["rejected"])]
    done = reference_logps(model, pairs, pad_id, cfg.length_normalise)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"key": key, "chosen": torch.tensor([p.ref_chosen for p in done]), "rejected": torch.tensor([p.ref_rejected for p in done])}, tmp
    )
    tmp.replace(path)
    return done


def dpo(cfg: DPOConfig) -> Path:
    set_threads()
    out = Path(cfg.train.out)
    model, tokenizer = load_policy(cfg.model)
    save_config(cfg, out / "run_config.json", command="dpo", preftune=__version__)
    records = load_comparisons(cfg.data)
    held_records = load_comparisons(cfg.eval_data) if cfg.eval_data else []
    if not held_records:
        records, held_records = held_out_split(records, fraction=0.05, seed=cfg.train.seed)
    train_pairs, held_pairs = to_pairs(records, tokenizer, cfg.tokens), to_pairs(held_records, tokenizer, cfg.tokens)
    pad = tokenizer.pad_token_id
    if cfg.loss == "unlikelihood":
        method = Unlikelihood(train_pairs, held_pairs, pad, cfg.train.batch_size, cfg.train.seed)
    else:
        # The reference is the model as loaded (pi_SFT); with LoRA, the same base before adapters.
        train_pairs = _cached_reference(model, train_pairs, pad, cfg, out / "ref_logps.pt")
        held_pairs = reference_logps(model, held_pairs, pad, cfg.length_normalise)
        loss = delta_loss(cfg.loss, cfg.beta, cfg.label_smoothing)
        method = DirectPreference(train_pairs, held_pairs, pad, cfg.train.batch_size, cfg.train.seed, loss, cfg.beta, cfg.length_normalise)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    leash = "no reference" if cfg.loss == "unlikelihood" else f"beta {cfg.beta}"
    print(f"{cfg.loss}: {len(train_pairs):,} training and {len(held_pairs):,} held-out pairs, {leash} -> {out}")
    train(model, method, cfg.train)
    save_model(model, tokenizer, out)
    return out
