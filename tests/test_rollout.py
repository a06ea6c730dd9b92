import torch

from preftune.config import SamplingConfig
from preftune.data import collate
from preftune.decode import filter_logits as _filter_logits
from preftune.logprobs import completion_logps
from preftune.rollout import Rollout, sample

PROMPTS = [
    "Human: Name 2 fruits.\n\nAssistant:",
    "Human: Hi! Can you list four planets?\n\nAssistant:",
    "Human: List one tool.\n\nAssistant:",
]


def test_sampling_logps_equal_recomputed_training_logps(model, tokenizer):
    """The log-probs returned while sampling equal those of the training forward at the same
    temperature, token by token (RL reuses them as the "old" log-probs), over exactly the sampled
    ids (EOS included)."""
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8, seed=3)
    samples = sample(model, tokenizer, PROMPTS, cfg, n=2)
    encs = [s.encoded() for s in samples]
    assert all(list(s.prompt_ids) == tokenizer(s.prompt)["input_ids"] for s in samples)  # short prompts: nothing truncated
    with torch.no_grad():
        lp = completion_logps(model, collate(encs, tokenizer.pad_token_id), temperature=0.8)
    torch.testing.assert_close(lp.logps, torch.tensor([s.logp for s in samples]), atol=1e-4, rtol=1e-5)
    for i, s in enumerate(samples):
        torch.testing.assert_close(lp.token_logps[i][lp.mask[i]], torch.tensor(s.token_logps), atol=1e-4, rtol=1e-5)


def test_sampling_is_seeded_and_truncates_after_eos(model, tokenizer):
    cfg = SamplingConfig(max_new_tokens=10, seed=5)
    a, b = sample(model, tokenizer, PROMPTS, cfg, n=3), sample(model, tokenizer, PROMPTS, cfg, n=3)
    assert a == b
    eos = tokenizer.eos_token_id
    for s in a:
        assert eos not in s.completion_ids[:-1]  # nothing after the first EOS
        assert s.ended == (s.completion_ids[-1] == eos)
        assert len(s.completion_ids) <= 10
    assert [s.prompt for s in a] == [p for p in PROMPTS for _ in range(3)]


def test_batched_greedy_equals_one_at_a_time(model, tokenizer):
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0, batch_size=8)
    together = sample(model, tokenizer, PROMPTS, cfg)
    alone = [sample(model, tokenizer, [p], cfg)[0] for p in PROMPTS]
    assert [s.completion_ids for s in together] == [s.completion_ids for s in alone]


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(_filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]  # 0.5 + 0.3 reaches 0.7
    assert torch.isinf(_filter_logits(logits, 0, 0.45)).tolist() == [[False, True, True, True]]


def test_rollout_rows_select_and_drop_shared_padding():
    """Rows 0 and 2 are 3 and 2 tokens long (right-padded to 5): their selection is 3 wide, token
    tensors 2 wide; (N,) tensors are indexed; β is carried."""
    lengths = [3, 5, 2]
    attention = torch.tensor([[i < n for i in range(5)] for n in lengths])
    ids = torch.arange(15).view(3, 5)
    tok = torch.arange(12.0).view(3, 4)
    r = Rollout(ids, attention, attention, tok, tok + 100, tok * 0, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]), 0.3)
    picked = r.rows(torch.tensor([0, 2]))
    assert picked.input_ids.tolist() == [[0, 1, 2], [10, 11, 12]]
    assert picked.old_logps.tolist() == [[0.0, 1.0], [8.0, 9.0]] and picked.ref_logps.tolist() == [[100.0, 101.0], [108.0, 109.0]]
    assert picked.scores.tolist() == [1.0, 3.0] and picked.rewards.tolist() == [4.0, 6.0] and picked.beta == 0.3
    assert picked.advantages is None and len(picked) == 2
