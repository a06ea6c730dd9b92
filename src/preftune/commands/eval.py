"""``preftune generate`` and ``preftune eval``: sample from policies, and measure them on the lists world."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from .. import distributed
from ..config import EvalConfig, GenerateConfig
from ..evaluate import demonstrator_samples, evaluate_demonstrator, evaluate_samples, format_table, kl_to_reference, win_rate
from ..models import load_policy
from ..rollout import sample_shared
from .common import emit_rows, prepare, prompts_from


def generate(cfg: GenerateConfig) -> list[dict]:
    prepare(cfg)
    model, tokenizer = load_policy(cfg.model)
    samples = sample_shared(model, tokenizer, prompts_from(cfg.prompts, cfg.limit, tokenizer), cfg.gen, n=cfg.n, progress=True)
    rows = [{"prompt": s.prompt, "completion": s.completion, "ended": s.ended} for s in samples]
    if distributed.is_main():
        emit_rows(rows, cfg.out, "completions")
    return rows


def evaluate(cfg: EvalConfig) -> dict:
    """Gold reward (95% CI), length, EOS rate, well-formedness and distinct-n of each policy; with
    ``--reference``, also KL to the reference and the win rate against it."""
    prepare(cfg)
    prompts = prompts_from(cfg.prompts, cfg.limit)  # message lists rendered by each model's own chat template below
    results: dict[str, dict] = {}
    tokenizer = None
    ref = ref_samples = None
    if cfg.reference:
        ref, ref_tokenizer = load_policy(cfg.reference)
        ref_prompts = prompts_from(cfg.prompts, cfg.limit, ref_tokenizer)
        ref_samples = sample_shared(ref, ref_tokenizer, ref_prompts, replace(cfg.gen, seed=cfg.gen.seed + 1))
    for path in cfg.model:
        model, tokenizer = load_policy(path)
        prompts = prompts_from(cfg.prompts, cfg.limit, tokenizer)
        t0 = time.perf_counter()
        samples = sample_shared(model, tokenizer, prompts, cfg.gen, progress=not cfg.json)
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
