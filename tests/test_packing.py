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
    p = Packing.plan(torch.arange(24).view(4, 6), mask, hidden_size=1024)
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
    assert Packing.plan(torch.arange(40).view(4, 10), torch.ones(4, 10, dtype=torch.bool), hidden_size=64) is None  # no padding at all
    assert Packing.plan(torch.arange(8).view(1, 8), _mask([5], 8, [False]), hidden_size=64) is None  # one row


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
    assert logprobs.packing_for(_model("opt"), _batch().input_ids, _batch().attention_mask) is None


def _assert_packed_equals_padded(model, batch: Batch, monkeypatch) -> None:
    """Log-probs, entropies and gradients of the packed forward equal the padded forward's."""
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


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("arch", sorted(logprobs.PACKABLE))
def test_packed_equals_padded(arch, left, monkeypatch):
    model, batch = _model(arch), _batch(left=left)
    assert logprobs.packing_for(model, batch.input_ids, batch.attention_mask) is not None  # this batch does pack
    _assert_packed_equals_padded(model, batch, monkeypatch)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_reward_model_equals_padded(arch, monkeypatch):
    name, sizes = CONFIGS[arch]
    config = getattr(transformers, name)(vocab_size=50, pad_token_id=1, bos_token_id=0, eos_token_id=0, num_labels=1, **sizes)
    torch.manual_seed(0)
    rm = RewardModel(transformers.AutoModelForSequenceClassification.from_config(config).eval())
    batch = _batch()
    assert logprobs.packing_for(rm.model, batch.input_ids, batch.attention_mask) is not None
    scores, values = rm(batch.input_ids, batch.attention_mask), rm.token_scores(batch.input_ids, batch.attention_mask)
    monkeypatch.setattr(logprobs, "PACKABLE", frozenset())
    torch.testing.assert_close(scores, rm(batch.input_ids, batch.attention_mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        values[batch.attention_mask], rm.token_scores(batch.input_ids, batch.attention_mask)[batch.attention_mask], atol=1e-5, rtol=1e-5
    )


def test_shared_prefix_layout_by_hand():
    """[1 2 3 4 5 6] and [1 2 3 4 7 8] share 1 2 3 4: packed once, then 5 6 and 7 8, which see the
    prefix and themselves only; [9 9 9] packs after them on its own."""
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [9, 9, 9, 0, 0, 0], [1, 2, 3, 4, 7, 8]])
    mask = _mask([6, 3, 6], 6, [False] * 3)
    p = Packing.plan(ids, mask, hidden_size=1024)
    assert (p.rows, p.width) == (1, 11)
    assert p.pack(ids).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 4, 5, 0, 1, 2]]
    seen = p.attention_mask[0, 0]
    assert seen[7].nonzero().flatten().tolist() == [0, 1, 2, 3, 6, 7]  # token 8: the prefix, then 7 and itself
    assert seen[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert seen[10].nonzero().flatten().tolist() == [8, 9, 10]
    assert torch.equal(p.unpack(p.pack(ids)), ids * mask)  # both sequences read the shared 1 2 3 4


def _shared_batch(left: bool, vocab: int = 50) -> Batch:
    """Prompts with two or three completions each (DPO pairs, rankings, RL groups), shuffled; one
    completion repeated verbatim, one empty."""
    g = torch.Generator().manual_seed(3)
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    seqs = []
    for _ in range(4):
        prompt = torch.randint(2, vocab, (rnd(5, 11),), generator=g).tolist()
        for _ in range(rnd(2, 4)):
            seqs.append((prompt, torch.randint(2, vocab, (rnd(1, 9),), generator=g).tolist()))
    seqs += [seqs[0], (seqs[1][0], [])]
    order = torch.randperm(len(seqs), generator=g).tolist()
    seqs = [seqs[i] for i in order]
    T = max(len(p) + len(c) for p, c in seqs)
    ids = torch.ones(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    completion = torch.zeros_like(mask)
    for i, (p, c) in enumerate(seqs):
        s = T - len(p) - len(c) if left else 0
        ids[i, s : s + len(p) + len(c)] = torch.tensor(p + c)
        mask[i, s : s + len(p) + len(c)] = True
        completion[i, s + len(p) : s + len(p) + len(c)] = True
    return Batch(ids, mask, completion)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prefixes_equal_the_padded_forward(arch, left, monkeypatch):
    """Sequences sharing their starts compute them once; log-probs, entropies and gradients still
    equal the padded forward's."""
    model, batch = _model(arch), _shared_batch(left)
    packing = logprobs.packing_for(model, batch.input_ids, batch.attention_mask)
    assert packing is not None and packing.attention_mask is not None
    assert packing.rows * packing.width < int(batch.attention_mask.sum())  # fewer tokens than the sequences hold
    _assert_packed_equals_padded(model, batch, monkeypatch)


def test_shared_prefixes_in_the_reward_model(monkeypatch):
    name, sizes = CONFIGS["llama"]
    config = getattr(transformers, name)(vocab_size=50, pad_token_id=1, bos_token_id=0, eos_token_id=0, num_labels=1, **sizes)
    torch.manual_seed(0)
    rm = RewardModel(transformers.AutoModelForSequenceClassification.from_config(config).eval())
    batch = _shared_batch(left=False)
    assert logprobs.packing_for(rm.model, batch.input_ids, batch.attention_mask).attention_mask is not None
    scores, values = rm(batch.input_ids, batch.attention_mask), rm.token_scores(batch.input_ids, batch.attention_mask)
    monkeypatch.setattr(logprobs, "PACKABLE", frozenset())
    torch.testing.assert_close(scores, rm(batch.input_ids, batch.attention_mask), atol=1e-5, rtol=1e-5)
    real = batch.attention_mask
    torch.testing.assert_close(values[real], rm.token_scores(batch.input_ids, batch.attention_mask)[real], atol=1e-5, rtol=1e-5)
