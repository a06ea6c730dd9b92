"""The memory estimate (preftune.memory) against hand counts and against the peak memory of real runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from preftune.atomic import write_jsonl
from preftune.memory import Shape, estimate, shape_of
from preftune.models import save_model

LLAMA = dict(model_type="llama", hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1536)


def test_shape_counts_the_parameters_of_a_config():
    # Llama, tied embeddings: V·h + L·(4h² + 3·h·m + 2h) + h
    shape = shape_of({**LLAMA, "vocab_size": 1000, "tie_word_embeddings": True})
    h, m, L, V = 512, 1536, 6, 1000
    assert shape.params == V * h + L * (4 * h * h + 3 * h * m + 2 * h) + h
    assert shape.backbone == shape.params + h  # tied: the head is the embedding; plus the scalar head
    untied = shape_of({**LLAMA, "vocab_size": 1000, "tie_word_embeddings": False})
    assert untied.params == shape.params + V * h and untied.backbone == shape.backbone
    assert shape.gated and not shape_of({"model_type": "gpt2", "vocab_size": 1000, "n_embd": 64, "n_layer": 2, "n_head": 4}).gated


def test_estimate_components_by_hand():
    s = Shape(params=1000, backbone=900, vocab=50, hidden=8, layers=2, heads=2, mlp=24, gated=True)
    sft = estimate(s, "sft", batch_size=2, seq_len=10)
    assert (sft["weights"], sft["gradients"], sft["adamw"], sft["transients"], sft["frozen models"]) == (4000, 4000, 8000, 8000, 0)
    layer = 16 * 8 + 4 * 24 + 2 * 2 * 10  # values per token and layer, attention probabilities included
    assert sft["activations"] == 20 * 2 * layer * 4  # tokens × layers × values × fp32
    assert sft["logits"] == 3 * 20 * 50 * 4
    assert sft["total"] == sum(v for k, v in sft.items() if k != "total")
    fsdp = estimate(s, "sft", 2, 10, processes=4, fsdp=True)
    assert (fsdp["weights"], fsdp["adamw"]) == (1000, 2000) and fsdp["activations"] == sft["activations"]
    assert estimate(s, "sft", 2, 10, processes=4)["weights"] == 4000  # DDP shards nothing
    assert estimate(s, "dpo", 2, 10)["activations"] == 2 * sft["activations"]  # chosen and rejected
    rm = estimate(s, "reward", 2, 10)
    assert rm["weights"] == 3600 and rm["logits"] == 0 and rm["activations"] == 2 * sft["activations"]
    ppo = estimate(s, "ppo", 2, 10, frozen_bf16=True)
    assert ppo["weights"] == 4 * (1000 + 900) and ppo["frozen models"] == 2 * (1000 + 900)
    assert estimate(s, "sft", 2, 10, gradient_checkpointing=True)["activations"] == 20 * (2 * 8 + layer) * 4
    assert estimate(s, "sft", 2, 10, flash_attention=True)["activations"] == 20 * 2 * (layer - 40) * 4
    bf16 = estimate(s, "sft", 2, 10, precision="bf16")
    assert bf16["activations"] == sft["activations"] // 2 and bf16["transients"] == 8000 + 2000
    rl = estimate(s, "rl", 2, 10, processes=4, fsdp=True)  # rl shards, and gathers the policy whole for rollouts
    assert (rl["weights"], rl["adamw"], rl["rollout gather"]) == (1000, 2000, 3000) and estimate(s, "rl", 2, 10)["rollout gather"] == 0
    assert estimate(s, "ppo", 2, 10, processes=4, fsdp=True)["weights"] == 4 * (1000 + 900)  # ppo: DDP only


@pytest.fixture(scope="module")
def measured_setup(tmp_path_factory, tokenizer):
    """A 20M-parameter Llama and rows long enough that every sequence is cut to the same length."""
    d = tmp_path_factory.mktemp("memory")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=LLAMA["hidden_size"],
        num_hidden_layers=LLAMA["num_hidden_layers"],
        num_attention_heads=LLAMA["num_attention_heads"],
        intermediate_size=LLAMA["intermediate_size"],
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_model(transformers.LlamaForCausalLM(config), tokenizer, d / "model")
    words = "apple pear plum kiwi lemon mango grape cherry "
    prompt, a, b = "Human: name fruits. " + words * 20, " " + words * 20, " " + words[::-1] * 20
    write_jsonl(d / "sft.jsonl", [{"prompt": prompt, "completion": a}] * 24)
    write_jsonl(d / "pairs.jsonl", [{"prompt": prompt, "chosen": a, "rejected": b}] * 24)
    return d, shape_of(config.to_dict())


@pytest.mark.slow
@pytest.mark.parametrize("trainer,flags", [("sft", []), ("dpo", []), ("reward", []), ("sft", ["--train.gradient-checkpointing"])])
def test_estimate_bounds_the_measured_peak_of_a_run(measured_setup, tmp_path, trainer, flags):
    d, shape = measured_setup
    batch, seq = 8, 192
    probe = str(Path(__file__).parent / "memory_probe.py")
    # Packing off: these rows repeat one prompt, which packing would compute once (the estimate is for
    # distinct sequences, an upper bound when they share starts).
    res = subprocess.run(
        [sys.executable, probe, trainer, str(d / "model"), str(d), str(tmp_path / "out"), str(batch), str(seq), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFTUNE_PACKING": "0"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads(res.stdout.strip().splitlines()[-1])
    used = run["peak"] - run["baseline"]
    est = estimate(shape, trainer, batch, seq, gradient_checkpointing=bool(flags))["total"]
    print(f"{trainer} {flags}: measured {used / 2**20:.0f} MiB, estimated {est / 2**20:.0f} MiB")
    assert 0.75 * est <= used <= 1.25 * est


def test_the_readme_tables_are_the_command_output():
    script = Path(__file__).resolve().parent.parent / "scripts/render_readme.py"
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
