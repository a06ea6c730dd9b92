"""Write a tiny Llama model and its tokenizer as a GGUF file, for tests.

Tests that exercise GGUF loading write their own few-hundred-KB file with :func:`write_gguf`, so CI never
needs the real (98 MB) model. The file is F32 and laid out the way llama.cpp's ``convert_hf_to_gguf.py``
writes a Llama checkpoint, so ``from_pretrained(dir, gguf_file=name)`` reads back the same logits, the
same tokenization and the same config.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# Per-layer tensors: GGUF name -> Hugging Face module, under ``model.layers.N.``.
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation: per head, rotary halves ``[x0..x(d/2), y0..]`` become interleaved pairs.

    transformers' ``LlamaTensorProcessor._reverse_permute_weights`` undoes exactly this on load.
    """
    out_dim = weight.shape[0]
    return weight.reshape(n_head, 2, out_dim // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_vocab(tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their llama.cpp token types, and the BPE merges as ``"a b"`` strings."""
    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # the model's embedding is wider than the vocabulary, as llama.cpp pads it
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]  # tokenizers >= 0.20 stores pairs
    return tokens, types, merges


def write_gguf(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and ``tokenizer`` (byte-level BPE) to ``path`` as F32 GGUF."""
    path = Path(path)
    cfg = model.config
    n_head, n_kv_head = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("preftune-tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv_head)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)

    tokens, types, merges = _tokenizer_vocab(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    # "gpt-2" is llama.cpp's name for the plain GPT-2 split regex, which is what ByteLevel(use_regex=True) uses.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)  # the original tokenizer adds nothing around the text
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    # add_tensor records the numpy shape and writes it reversed, as GGUF wants: pass HF's (out, in) as is.
    state = {name: t.detach().to("cpu", copy=True).float().numpy() for name, t in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for layer in range(cfg.num_hidden_layers):
        for gguf_name, hf_name in _LAYER_TENSORS.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute(weight, n_head)
            elif gguf_name == "attn_k":
                weight = _permute(weight, n_kv_head)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not cfg.tie_word_embeddings:  # no `output` tensor is how the loader knows the embeddings are tied
        writer.add_tensor("output.weight", state["lm_head.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
