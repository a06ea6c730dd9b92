"""The groups several commands share: the training loop (``--train.*``), sequence lengths
(``--tokens.*``) and sampling (``--gen.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import doc

# The algorithms of `preftune rl` and the losses of `preftune dpo`; each name is registered once,
# in preftune.methods.algorithms.ALGORITHMS and preftune.methods.dpo.LOSSES (a test keeps them equal).
RL_ALGORITHMS = ("raft", "reinforce", "rloo", "grpo", "ppo")
PREFERENCE_LOSSES = ("dpo", "cdpo", "ipo", "hinge", "soft", "simpo", "unlikelihood")
SELECTIONS = ("random", "on-policy", "uncertainty", "ensemble")  # preftune iterate --selection
REPORT_TO = ("none", "tensorboard", "wandb")  # --train.report-to: run trackers beside metrics.jsonl (preftune.tracking.Tracker)


@dataclass(frozen=True)
class TrainConfig:
    """The one optimisation loop's settings (``--train.*``)."""

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
    report_to: str = doc(
        "none", "also log the metrics to TensorBoard (out/tensorboard) or W&B (offline unless WANDB_MODE; out/wandb)", choices=REPORT_TO
    )
    patience: int = doc(0, "early stopping: stop after N evaluations without improvement and keep the best (0 = off)")
    seed: int = doc(0, "seed for initialisation and data order")
    precision: str = doc(
        "fp32", "bf16: autocast the forward to bfloat16 over fp32 weights (log-probs and losses stay fp32)", choices=("fp32", "bf16")
    )
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward pass (non-reentrant): less memory, more time")
    fsdp: bool = doc(
        False, "under torchrun: FSDP2 (fully_shard per transformer block) instead of DDP; weights, gradients and AdamW states sharded"
    )
    dropout: bool = doc(True, "keep the model's dropout while training (off for DPO, reward and RL: their reference log-probs have none)")
    resume: bool = doc(False, "continue from the last complete checkpoint in out/checkpoints")
    progress: bool = doc(True, "show a progress bar")
    stop_on_alarm: bool = doc(False, "end the run at the first alarm (--alarm.*) with the weights it has then")


@dataclass(frozen=True)
class AlarmConfig:
    """When a run raises an alarm (``--alarm.*``; :mod:`preftune.alarms`); 0 turns a rule off. The
    defaults were chosen on seeds 0 and 1 of ``configs/defaults.yaml`` (the lists world's short
    answers: a longer answer carries more KL) and judged on its other seeds (README, "When DPO collapses")."""

    kl: float = doc(2.0, "KL to the reference above this many nats per sampled completion")
    eos_drop: float = doc(0.2, "the share of samples that end (emit EOS) fell this far below its start")
    length: float = doc(0.5, "the mean sample length left its start x (1 +- this)")
    displacement: float = doc(2.0, "DPO family: log pi(chosen) fell this many nats below pi_ref's while the margin grew")
    disagreement: float = doc(1.0, "RL with --monitor-rewards: the reward models' disagreement rose by this fraction while the proxy rose")


@dataclass(frozen=True)
class TokenConfig:
    """Sequence lengths (``--tokens.*``)."""

    max_length: int = doc(128, "longest prompt + completion in tokens (truncation policy: preftune.data.tokens)")
    max_prompt_length: int = doc(96, "prompts longer than this are cut from the left")


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (``--gen.*``)."""

    max_new_tokens: int = doc(32, "tokens to sample per completion at most")
    temperature: float = doc(1.0, "sampling temperature (0 = greedy)")
    top_k: int = doc(0, "sample among the k most likely tokens (0 = all)")
    top_p: float = doc(1.0, "nucleus sampling mass (1 = all)")
    batch_size: int = doc(128, "sequences per generation batch (a prompt's samples share one batch and one prefill)")
    seed: int = doc(0, "sampling seed")
