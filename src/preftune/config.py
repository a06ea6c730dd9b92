"""Frozen configuration dataclasses, one line of documentation per field; defaults run on a CPU.

The command line is generated from these (``preftune sft --help`` shows the same lines), and
every run saves its resolved config as ``run_config.json`` next to its outputs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def doc(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its one-line documentation."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """The one optimisation loop's settings."""

    out: str = doc("runs/out", "output directory: final model, checkpoints/, metrics.jsonl, run_config.json")
    epochs: float = doc(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = doc(0, "optimiser steps to take; 0 means derive from epochs")
    batch_size: int = doc(32, "examples per micro-batch")
    grad_accum: int = doc(1, "micro-batches per optimiser step")
    lr: float = doc(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay (not applied to biases and norms)")
    warmup: float = doc(0.05, "linear warm-up, as a fraction of all steps")
    schedule: str = doc("cosine", "decay after warm-up", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = doc(1.0, "clip the global gradient norm to this (0 = no clipping)")
    eval_every: int = doc(0, "evaluate every N steps (0 = only at the end)")
    save_every: int = doc(50, "write a resumable checkpoint every N steps (0 = only at the end)")
    log_every: int = doc(10, "write a metrics.jsonl row every N steps")
    patience: int = doc(0, "early stopping: stop after N evaluations without improvement and keep the best (0 = off)")
    seed: int = doc(0, "seed for initialisation and data order")
    resume: bool = doc(False, "continue from the last complete checkpoint in out/checkpoints")
    progress: bool = doc(True, "show a progress bar")


@dataclass(frozen=True)
class TokenConfig:
    max_length: int = doc(128, "longest prompt + completion in tokens (truncation policy: preftune.data)")
    max_prompt_length: int = doc(96, "prompts longer than this are cut from the left")


@dataclass(frozen=True)
class PretrainConfig:
    data: str = doc("", "pretraining corpus, rows {'text'} (JSONL, JSON or Parquet)")
    tokenizer: str = doc("", "directory of an existing tokenizer; empty = train a byte-level BPE on the corpus")
    vocab_size: int = doc(1024, "vocabulary size when training a tokenizer")
    size: str = doc("tiny", "model size preset", choices=("micro", "tiny", "tiny-deep", "small"))
    arch: str = doc("llama", "model shape", choices=("llama", "gpt2"))
    tokens: TokenConfig = TokenConfig()
    train: TrainConfig = TrainConfig(out="runs/base", epochs=1.0, lr=3e-3, batch_size=64)


@dataclass(frozen=True)
class SFTConfig:
    model: str = doc("", "directory of the model to fine-tune (save_pretrained format)")
    data: str = doc("", "demonstrations: {'prompt','completion'} or {'messages'} rows")
    eval_data: str = doc("", "held-out demonstrations for the eval loss (optional)")
    lora: bool = doc(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = doc(8, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA scaling numerator")
    tokens: TokenConfig = TokenConfig()
    train: TrainConfig = TrainConfig(out="runs/sft", epochs=2.0, lr=1e-3)


@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int = doc(32, "tokens to sample per completion at most")
    temperature: float = doc(1.0, "sampling temperature (0 = greedy)")
    top_k: int = doc(0, "sample among the k most likely tokens (0 = all)")
    top_p: float = doc(1.0, "nucleus sampling mass (1 = all)")
    batch_size: int = doc(128, "prompts per generation batch")
    seed: int = doc(0, "sampling seed")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path, **extra: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**to_dict(cfg), **extra}, indent=2, sort_keys=True) + "\n")
