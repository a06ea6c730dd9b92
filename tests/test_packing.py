"""Padding-free packing (preftune.logprobs.Packing): the packed forward against the padded one it
replaces, for every architecture preftune packs, and the layout against hand-derived indices."""

import pytest
import torch
import transformers

from preftune import logprobs
from preftune.data import Batch
from preftune.logprobs import Packing, completion_logps
from preftune.models import RewardModel

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(SMALL, num_key_value_heads=2, sliding_window=None)),
    "gemma": ("GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=8)),
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL)),
    "opt": ("OPTConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32)),
}


def _mask(lengths: list[int], T: int, left: list[bool]) -> torch.Tensor:
    m = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, (n, lft) in enumerate(zip(lengths, left)):
        if lft:
            m[i, T - n :] = True
        else:
            m[i, :n] = True
    return m


def test_layout_by_hand():
    """Lengths 6, 2, 3, 1 padded to 6 (row 2 on the left): the longest fills a row alone; 2 + 3 + 1
    share the other. Every real token lands once, positions restart per sequence, and unpack(pack(x))
    is x on real tokens and 0 on padding."""
    mask = _mask([6, 2, 3, 1], 6, [False, False, True, False])
    p = Packing.plan(mask, hidden_size=1024)
    assert p is not None and (p.rows, p.width) == (2, 6)
    x = torch.arange(1, 25).view(4, 6) * mask
    packed = p.pack(x)
    assert sorted(packed.flatten().tolist()) == sorted([0] * 12 + x[mask].tolist())[-12:]
    assert packed[0].tolist() == [1, 2, 3, 4, 5, 6]
    # row 1: the 3-token sequence (left-padded row 2: 16, 17, 18), then 2 tokens (row 1: 7, 8), then 1 (row 3: 19)
    assert packed[1].tolist() == [16, 17, 18, 7, 8, 19]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    assert torch.equal(p.unpack(packed), x)


def test_no_packing_when_it_does_not_pay():
    assert Packing.plan(torch.ones(4, 10, dtype=torch.bool), hidden_size=64) is None  # no padding at all
    assert Packing.plan(_mask([5], 8, [False]), hidden_size=64) is None  # one row


def _model(arch: str, vocab: int = 50):
    name, sizes = CONFIGS[arch]
    config = getattr(transformers, name)(vocab_size=vocab, pad_token_id=1, bos_token_id=0, eos_token_id=0, **sizes)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _batch(vocab: int = 50, left: bool = False) -> Batch:
    lengths = [17, 5, 9, 3, 12, 7, 4, 16]
    mask = _mask(lengths, 17, [left] * len(lengths))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, mask.shape, generator=g).masked_fill(~mask, 1)
    completion = mask.clone()
    for i, n in enumerate(lengths):  # the first third of each sequence is its prompt
        real = mask[i].nonzero()[:, 0]
        completion[i, real[: n // 3]] = False
    return Batch(ids, mask, completion)


def test_every_packed_architecture_is_checked_and_others_run_padded():
    assert logprobs.PACKABLE <= set(CONFIGS)
    assert logprobs.packing_for(_model("opt"), _batch().attention_mask) is None


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("arch", sorted(logprobs.PACKABLE))
def test_packed_equals_padded(arch, left, monkeypatch):
    """Log-probs, entropies and gradients of the packed forward equal the padded forward's."""
    model, batch = _model(arch), _batch(left=left)
    assert logprobs.packing_for(model, batch.attention_mask) is not None  # this batch does pack
    packed = completion_logps(model, batch, entropy=True)
    packed.logps.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    monkeypatch.setattr(logprobs, "PACKABLE", frozenset())
    padded = completion_logps(model, batch, entropy=True)
    padded.logps.sum().backward()
    torch.testing.assert_close(packed.token_logps, padded.token_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.entropy[packed.mask], padded.entropy[padded.mask], atol=1e-5, rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_reward_model_equals_padded(arch, monkeypatch):
    name, sizes = CONFIGS[arch]
    config = getattr(transformers, name)(vocab_size=50, pad_token_id=1, bos_token_id=0, eos_token_id=0, num_labels=1, **sizes)
    torch.manual_seed(0)
    rm = RewardModel(transformers.AutoModelForSequenceClassification.from_config(config).eval())
    batch = _batch()
    assert logprobs.packing_for(rm.model, batch.attention_mask) is not None
    scores, values = rm(batch.input_ids, batch.attention_mask), rm.token_scores(batch.input_ids, batch.attention_mask)
    monkeypatch.setattr(logprobs, "PACKABLE", frozenset())
    torch.testing.assert_close(scores, rm(batch.input_ids, batch.attention_mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        values[batch.attention_mask], rm.token_scores(batch.input_ids, batch.attention_mask)[batch.attention_mask], atol=1e-5, rtol=1e-5
    )
