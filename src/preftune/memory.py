"""How much memory each trainer needs, per process: weights, gradients, AdamW, frozen models, activations.

A sum of components, so a slight overestimate of the peak (gradients and most activations never
coexist at their largest). Per trainable parameter: 4 bytes of fp32 master weights, 4 of gradients,
8 of AdamW moments (FSDP divides these three by the number of processes, DDP by nothing), and 8 of
transients (the copy a load makes, AdamW's foreach temporaries); bf16 autocast adds its 2-byte
weight copies. Not in the table: under FSDP every process first loads the whole model and copies it
before sharding (8 bytes per parameter, once, before training). ``rl`` under FSDP gathers the
policy whole for each rollout: the other processes' shards of its weights come on top while it
samples; ``ppo`` runs under DDP only. Frozen models (RL's reference and reward model) cost 4 bytes
per parameter, 2 held in bf16, whole in every process; DPO holds no reference model (its log-probs
are computed once, before training).

Activations are what autograd keeps per token and layer, about ``16·hidden + 4·mlp`` values for a
gated MLP (Llama, Qwen2, Mistral, Gemma; ``2·mlp`` otherwise) plus ``2·heads·seq_len`` of attention
probabilities (the math attention that CPUs and padded batches use; none with flash attention), 4
bytes each in fp32, about 2 under autocast. With activation checkpointing a layer keeps only its
input (``hidden`` values) and one layer is recomputed at a time. The logits cost ``tokens × vocab``
fp32 values three times (logits, their gradient, the backward's softmax; RL two more, briefly, for its
entropy metric). DPO and reward models run
two sequences per pair. Tokens are counted as if every sequence were distinct and as long as the
longest: packing skips padding and computes a start that sequences share once (DPO's prompt, an RL
prompt's k samples), so the estimate is an upper bound for such batches.

The coefficients were counted from the Llama layer and checked against the peak resident memory
of real runs on this CPU; ``tests/test_memory.py`` keeps the estimate within 25% of them.
``preftune memory --model DIR`` prints the table for a saved model's ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TRAINERS = ("sft", "reward", "dpo", "rl", "ppo")
GATED = ("llama", "qwen2", "mistral", "gemma", "gemma2", "qwen3", "phi3")


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model."""

    params: int  # all parameters of the causal LM (tied embeddings counted once)
    backbone: int  # a reward or value model's: the LM without its (untied) LM head, plus a scalar head
    vocab: int
    hidden: int
    layers: int
    heads: int
    mlp: int
    gated: bool


def shape_of(config: dict) -> Shape:
    """The shape of a Hugging Face ``config.json`` (as a dict), counting parameters on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    backbone = params - (0 if cfg.tie_word_embeddings else cfg.vocab_size * hidden) + hidden
    return Shape(params, backbone, cfg.vocab_size, hidden, layers, heads, mlp, cfg.model_type in GATED)


def load_shape(model: str | Path) -> Shape:
    """The shape of a saved model's directory (its config.json) or of a config.json file."""
    path = Path(model)
    path = path if path.is_file() else path / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{model}: no config.json (a save_pretrained directory or a config file is expected)")
    try:
        return shape_of(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON config ({e})") from None


def estimate(
    shape: Shape,
    trainer: str,
    batch_size: int,
    seq_len: int,
    *,
    precision: str = "fp32",
    processes: int = 1,
    fsdp: bool = False,
    gradient_checkpointing: bool = False,
    frozen_bf16: bool = False,
    flash_attention: bool = False,
) -> dict[str, int]:
    """Bytes per process for each component of ``trainer`` (``sft`` also stands for ``pretrain``;
    ``rl`` is RAFT, REINFORCE, RLOO and GRPO; ``ppo`` adds the value model), and their ``total``.
    ``batch_size`` is per process: sequences, pairs (DPO, reward) or rollout rows (RL)."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    backbone = shape.backbone
    trained = {"sft": shape.params, "reward": backbone, "dpo": shape.params, "rl": shape.params, "ppo": shape.params + backbone}[trainer]
    shard = processes if fsdp and trainer != "ppo" else 1  # ppo runs under DDP only
    out = {"weights": 4 * trained // shard, "gradients": 4 * trained // shard, "adamw": 8 * trained // shard}
    out["rollout gather"] = 4 * trained - 4 * trained // shard if trainer == "rl" else 0  # the policy whole while it samples
    out["transients"] = (8 + (2 if precision == "bf16" else 0)) * trained // shard
    out["frozen models"] = (2 if frozen_bf16 else 4) * (shape.params + backbone) if trainer in ("rl", "ppo") else 0  # reference + reward

    sequences = batch_size * (2 if trainer in ("dpo", "reward") else 1)
    tokens = sequences * seq_len
    layer = 16 * shape.hidden + (4 if shape.gated else 2) * shape.mlp + (0 if flash_attention else 2 * shape.heads * seq_len)
    kept = shape.layers * shape.hidden + layer if gradient_checkpointing else shape.layers * layer
    forwards = 2 if trainer == "ppo" else 1  # PPO: the policy and the value model
    out["activations"] = forwards * tokens * kept * (2 if precision == "bf16" else 4)
    out["logits"] = {"sft": 3, "reward": 0, "dpo": 3, "rl": 5, "ppo": 5}[trainer] * tokens * shape.vocab * 4
    out["total"] = sum(out.values())
    return out


def table(rows: dict[str, dict[str, int]]) -> str:
    """A markdown table of estimates (trainer -> :func:`estimate`'s dict): one column per component, in GiB."""
    cols = list(next(iter(rows.values())))
    lines = ["| trainer | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for t, r in rows.items():
        lines.append(f"| {t} | " + " | ".join(f"{r[c] / 2**30:.2f}" for c in cols) + " |")
    return "\n".join(lines)
