"""Real Hugging Face architectures, tiny and random, through every trainer: SFT, reward model, DPO and
one RL iteration (PPO: policy and value model), and back with plain transformers."""

import copy

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from preftune.atomic import write_jsonl
from preftune.commands.dpo import dpo
from preftune.commands.reward import reward
from preftune.commands.rl import rl
from preftune.commands.sample import annotate, sample_sets
from preftune.commands.sft import sft
from preftune.config import AnnotateConfig, DPOConfig, RewardConfig, RLConfig, SampleConfig, SamplingConfig, SFTConfig, TrainConfig
from preftune.models import save_model
from preftune.world import lists

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
ARCHITECTURES = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),  # with GPT-2's dropout 0.1
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(SMALL, num_key_value_heads=2, sliding_window=None)),
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL)),
    "opt": ("OPTConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32)),
    "gemma": ("GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=8)),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("archs")
    write_jsonl(d / "sft.jsonl", lists.sft_data(40, seed=2))
    write_jsonl(d / "prompts.jsonl", lists.prompts(8, seed=2))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("arch,kind", [*((a, "pad") for a in ARCHITECTURES), ("gpt2", "no-pad"), ("llama", "bos-chat"), ("llama", "bf16")])
def test_every_trainer_runs_on_the_architecture_and_its_outputs_reload(world, tmp_path, tokenizer, bos_tokenizer, arch, kind):
    """``no-pad``: a tokenizer with no pad token, as GPT-2's (preftune pads with EOS; masks decide what
    counts); ``bos-chat``: one that puts a BOS before every text and has its own chat template; ``bf16``:
    every trainer under bf16 autocast, RL's reference and reward model held in bf16."""
    name, sizes = ARCHITECTURES[arch]
    pad = kind != "no-pad"
    if kind == "no-pad":
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = None
    elif kind == "bos-chat":
        tokenizer = bos_tokenizer
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config = getattr(transformers, name)(vocab_size=len(tokenizer), **sizes, **ids)
    torch.manual_seed(0)
    save_model(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / "base")
    assert (AutoTokenizer.from_pretrained(tmp_path / "base").pad_token is None) is not pad
    precision = "bf16" if kind == "bf16" else "fp32"
    short = dict(max_steps=2, batch_size=4, progress=False, save_every=0, precision=precision)
    sft(SFTConfig(model=str(tmp_path / "base"), data=str(world / "sft.jsonl"), train=TrainConfig(out=str(tmp_path / "sft"), **short)))
    gen = SamplingConfig(max_new_tokens=8)
    sample_sets(SampleConfig(model=str(tmp_path / "sft"), prompts=str(world / "prompts.jsonl"), out=str(tmp_path / "s.jsonl"), gen=gen))
    annotate(AnnotateConfig(samples=str(tmp_path / "s.jsonl"), out=str(tmp_path / "pairs.jsonl"), simulated=True))
    pairs = str(tmp_path / "pairs.jsonl")
    rm_train = TrainConfig(out=str(tmp_path / "rm"), eval_every=0, dropout=False, **short)
    reward(RewardConfig(model=str(tmp_path / "sft"), data=pairs, eval_data=pairs, world_eval=False, train=rm_train))
    dpo(
        DPOConfig(
            model=str(tmp_path / "sft"), data=pairs, eval_data=pairs, train=TrainConfig(out=str(tmp_path / "dpo"), dropout=False, **short)
        )
    )
    rl_train = TrainConfig(out=str(tmp_path / "ppo"), batch_size=8, progress=False, save_every=0, dropout=False, precision=precision)
    rl(
        RLConfig(
            model=str(tmp_path / "sft"), reward=str(tmp_path / "rm"), prompts=str(world / "prompts.jsonl"), algo="ppo", iterations=1,
            prompts_per_iter=4, k=2, gen=gen, train=rl_train, frozen_precision=precision,
        )
    )  # fmt: skip
    for policy in ("sft", "dpo", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / policy)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 autocast keeps fp32 weights
        assert type(AutoModelForCausalLM.from_pretrained(tmp_path / policy)).__name__.lower().startswith(arch.replace("_", ""))
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert rm.config.num_labels == 1 and rm.config.preftune_reward_offset != 0.0
    if kind == "bos-chat":  # the tokenizer travels with every model, template and BOS included
        for out in ("sft", "dpo", "ppo", "rm"):
            saved = AutoTokenizer.from_pretrained(tmp_path / out)
            assert saved.chat_template == tokenizer.chat_template and saved("x")["input_ids"][0] == tokenizer.bos_token_id
        rollout = torch.load(tmp_path / "ppo/rollouts/iter-00000.pt", weights_only=False)["targets"]
        assert (rollout["input_ids"][:, 0] == tokenizer.bos_token_id).all()  # every sampled sequence starts with BOS
