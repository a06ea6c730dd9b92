"""``preftune pretrain`` and ``preftune sft``: next-token training of a base LM and of pi_SFT."""

from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..config import PretrainConfig, SFTConfig
from ..data import encode, encode_text, load_sft, load_texts
from ..loop import train
from ..methods.sft import SFT
from ..models import add_lora, build_model, load_policy, load_tokenizer, n_params, save_model, train_tokenizer
from .common import global_batch_size, held_out_split, one_run_per_directory, prepare, record_config, report_truncation


@one_run_per_directory
def pretrain(cfg: PretrainConfig) -> Path:
    """Train a tokenizer (unless given) and a tiny causal LM from scratch on a text corpus."""
    prepare(cfg)
    out = Path(cfg.train.out)
    texts = load_texts(cfg.data)
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_tokenizer(texts, cfg.vocab_size)
    model = build_model(tokenizer, cfg.size, cfg.arch, seed=cfg.train.seed)
    record_config(cfg, "pretrain")
    print(f"pretrain: {n_params(model):,} parameters, {len(texts):,} documents -> {out}")
    encoded = [encode_text(tokenizer, t, cfg.tokens.max_length) for t in texts]
    report_truncation(encoded, "documents")
    train_set, held = held_out_split(encoded, seed=cfg.train.seed)
    train(model, SFT(train_set, tokenizer.pad_token_id, global_batch_size(cfg.train), cfg.train.seed, held), cfg.train)
    if distributed.is_main():
        save_model(model, tokenizer, out)
    return out


@one_run_per_directory
def sft(cfg: SFTConfig) -> Path:
    """Supervised fine-tuning on demonstrations; the loss is on completion tokens only."""
    prepare(cfg)
    out = Path(cfg.train.out)
    model, tokenizer = load_policy(cfg.model)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, seed=cfg.train.seed)

    def enc(rows):
        return [encode(tokenizer, r.prompt, r.completion, cfg.tokens.max_length, cfg.tokens.max_prompt_length) for r in rows]

    train_set = enc(load_sft(cfg.data, tokenizer))
    held = enc(load_sft(cfg.eval_data, tokenizer)) if cfg.eval_data else []
    record_config(cfg, "sft")  # after the data is read: a bad file leaves the directory as it was
    if not held:
        train_set, held = held_out_split(train_set, seed=cfg.train.seed)
    report_truncation(train_set, "demonstrations")
    print(f"sft: {n_params(model, trainable_only=True):,} trainable parameters, {len(train_set):,} demonstrations -> {out}")
    train(model, SFT(train_set, tokenizer.pad_token_id, global_batch_size(cfg.train), cfg.train.seed, held), cfg.train)
    if distributed.is_main():
        save_model(model, tokenizer, out)
    return out
