"""The pipeline's stages as plain functions of a config: what each command (and the demo) runs."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import __version__
from .config import GenerateConfig, PretrainConfig, SFTConfig, doc, save_config
from .data import encode, encode_text, load_prompts, load_sft, load_texts, write_jsonl
from .evaluate import demonstrator_samples, evaluate_demonstrator, evaluate_samples, format_table, kl_to_reference, win_rate
from .loop import train
from .methods.sft import SFT
from .models import add_lora, build_model, load_policy, load_tokenizer, n_params, save_model, train_tokenizer
from .rollout import sample


def set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("PREFTUNE_THREADS", os.cpu_count() or 1)))


def held_out_split(items: list, fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(f"holdout-{seed}").shuffle(order)
    k = max(1, int(len(items) * fraction)) if len(items) >= 20 else 0
    held = set(order[:k])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _report_truncation(encoded, what: str) -> None:
    n = sum(e.truncated for e in encoded)
    if n:
        print(f"note: {n} of {len(encoded)} {what} were truncated (policy: preftune.data module doc)")


def pretrain(cfg: PretrainConfig) -> Path:
    """Train a tokenizer (unless given) and a tiny causal LM from scratch on a text corpus."""
    set_threads()
    out = Path(cfg.train.out)
    texts = load_texts(cfg.data)
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_tokenizer(texts, cfg.vocab_size)
    model = build_model(tokenizer, cfg.size, cfg.arch, seed=cfg.train.seed)
    save_config(cfg, out / "run_config.json", command="pretrain", preftune=__version__)
    print(f"pretrain: {n_params(model):,} parameters, {len(texts):,} documents -> {out}")
    encoded = [encode_text(tokenizer, t, cfg.tokens.max_length) for t in texts]
    _report_truncation(encoded, "documents")
    train_set, held = held_out_split(encoded, seed=cfg.train.seed)
    train(model, SFT(train_set, tokenizer.pad_token_id, cfg.train.batch_size, cfg.train.seed, held), cfg.train)
    save_model(model, tokenizer, out)
    return out


def sft(cfg: SFTConfig) -> Path:
    """Supervised fine-tuning on demonstrations; the loss is on completion tokens only."""
    set_threads()
    out = Path(cfg.train.out)
    model, tokenizer = load_policy(cfg.model)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    save_config(cfg, out / "run_config.json", command="sft", preftune=__version__)

    def enc(rows):
        return [encode(tokenizer, r.prompt, r.completion, cfg.tokens.max_length, cfg.tokens.max_prompt_length) for r in rows]

    train_set = enc(load_sft(cfg.data))
    held = enc(load_sft(cfg.eval_data)) if cfg.eval_data else []
    if not held:
        train_set, held = held_out_split(train_set, seed=cfg.train.seed)
    _report_truncation(train_set, "demonstrations")
    print(f"sft: {n_params(model, trainable_only=True):,} trainable parameters, {len(train_set):,} demonstrations -> {out}")
    train(model, SFT(train_set, tokenizer.pad_token_id, cfg.train.batch_size, cfg.train.seed, held), cfg.train)
    save_model(model, tokenizer, out)
    return out


@dataclass(frozen=True)
class GenerateCommand:
    model: str = doc("", "policy directory")
    prompts: str = doc("", "file of {'prompt'} rows")
    out: str = doc("", "write {'prompt','completion','ended'} JSONL here (default: print)")
    n: int = doc(1, "completions per prompt")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    gen: GenerateConfig = GenerateConfig()


def generate(cfg: GenerateCommand) -> list[dict]:
    set_threads()
    model, tokenizer = load_policy(cfg.model)
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[: cfg.limit] if cfg.limit else prompts
    samples = sample(model, tokenizer, prompts, cfg.gen, n=cfg.n, progress=True)
    rows = [{"prompt": s.prompt, "completion": s.completion, "ended": s.ended} for s in samples]
    if cfg.out:
        write_jsonl(cfg.out, rows)
        print(f"wrote {len(rows)} completions to {cfg.out}")
    else:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    return rows


@dataclass(frozen=True)
class EvalCommand:
    model: tuple[str, ...] = doc((), "policy directories to evaluate (repeat the flag or list several)", nargs="+")
    prompts: str = doc("", "held-out prompts of the lists world, {'prompt'} rows")
    reference: str = doc("", "reference policy (pi_SFT): adds KL to it and the gold-judged win rate against it")
    limit: int = doc(0, "use only the first N prompts (0 = all)")
    demonstrator: bool = doc(True, "also score the noisy demonstrator on the same prompts")
    json: bool = doc(False, "print one JSON object instead of the table")
    gen: GenerateConfig = GenerateConfig()


def evaluate(cfg: EvalCommand) -> dict:
    """Gold reward (95% CI), length, EOS rate, well-formedness and distinct-n of each policy; with
    ``--reference``, also KL to the reference and the win rate against it."""
    set_threads()
    prompts = load_prompts(cfg.prompts)
    prompts = prompts[: cfg.limit] if cfg.limit else prompts
    results: dict[str, dict] = {}
    tokenizer = None
    ref = ref_samples = None
    if cfg.reference:
        ref, ref_tokenizer = load_policy(cfg.reference)
        ref_samples = sample(ref, ref_tokenizer, prompts, replace(cfg.gen, seed=cfg.gen.seed + 1))
    for path in cfg.model:
        model, tokenizer = load_policy(path)
        t0 = time.perf_counter()
        samples = sample(model, tokenizer, prompts, cfg.gen, progress=not cfg.json)
        results[path] = {**evaluate_samples(samples), "sample_s": round(time.perf_counter() - t0, 2)}
        if ref is not None:
            results[path].update(kl_to_reference(samples, ref, tokenizer, cfg.gen.temperature or 1.0))
            results[path].update(win_rate(samples, ref_samples))
    if cfg.demonstrator and tokenizer is not None:
        results["demonstrator"] = evaluate_demonstrator(prompts, tokenizer, cfg.gen.seed)
        if ref_samples is not None:
            results["demonstrator"].update(win_rate(demonstrator_samples(prompts, cfg.gen.seed), ref_samples))
    report = {"prompts": cfg.prompts, "n_prompts": len(prompts), "reference": cfg.reference or None, "policies": results}
    print(json.dumps(report) if cfg.json else format_table(results))
    return report
