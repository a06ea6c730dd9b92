"""The decode path (preftune.decode): the distribution it samples, and the same tokens as the plain loop.

The plain loop (:func:`preftune.decode.plain_decode`) is the sampler preftune had before: a growing
cache, a 2D mask rebuilt every step, every row to the end. The fast path must give the same tokens,
token for token, greedy and sampled (each row draws the same uniforms in both), with rows leaving
the batch as they end.
"""

import math

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from preftune import decode
from preftune.config import SamplingConfig
from preftune.data import collate, encode
from preftune.rollout import sample
from test_packing import CONFIGS

PROMPTS = [
    "Human: Name 2 fruits.\n\nAssistant:",
    "Human: Hi! Can you list four planets?\n\nAssistant:",
    "Human: List one tool.\n\nAssistant:",
    "Human: Could you name three colours for me, please?\n\nAssistant:",
]

# ------------------------------------------------------------------------------ the distribution

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0])


def exact(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> list[float]:
    """The filtered softmax, by hand: tempered probabilities, the k largest kept, then the smallest
    prefix of the sorted ones whose mass reaches top_p (of the tempered distribution), renormalised."""
    p = [math.exp(x / temperature) for x in logits.tolist()]
    p = [x / sum(p) for x in p]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep = set(order[:top_k] if top_k else order)
    kept_sorted, mass = [], 0.0
    for i in order:  # nucleus over what top-k left, as filter_logits applies them
        if i not in keep:
            continue
        if top_p < 1.0 and mass >= top_p * sum(p[j] for j in keep) and kept_sorted:
            break
        kept_sorted.append(i)
        mass += p[i]
    total = sum(p[i] for i in kept_sorted)
    return [p[i] / total if i in kept_sorted else 0.0 for i in range(len(p))]


def chi_square(counts: torch.Tensor, probs: list[float]) -> tuple[float, int]:
    """Pearson's statistic over the cells of nonzero probability, and its degrees of freedom; a draw in
    a zero-probability cell is an infinite statistic."""
    n = int(counts.sum())
    stat = 0.0
    for c, q in zip(counts.tolist(), probs):
        if q == 0:
            if c:
                return math.inf, 0
            continue
        stat += (c - n * q) ** 2 / (n * q)
    return stat, sum(q > 0 for q in probs) - 1


# chi-square critical values at p = 0.001 for 1..5 degrees of freedom: the test fails by chance once in 1000 runs
CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.8), (0.8, 4, 0.9), (2.0, 0, 0.6)]
)
def test_draws_follow_the_filtered_softmax(temperature, top_k, top_p):
    """20,000 draws of one row: the counts fit the exact filtered softmax (chi-square, p = 0.001) and do
    not fit it with the filter or temperature left out — the test can tell them apart."""
    n = 20_000
    gen = torch.Generator().manual_seed(1)
    logits = LOGITS.expand(n, -1)
    tokens, logps = decode.draw(logits, temperature, top_k, top_p, torch.rand(n, generator=gen))
    counts = torch.bincount(tokens, minlength=len(LOGITS))
    want = exact(LOGITS, temperature, top_k, top_p)
    stat, dof = chi_square(counts, want)
    assert stat < CRITICAL[dof], (counts.tolist(), want)
    wrong = [exact(LOGITS, 1.0, 0, 1.0)] if (temperature, top_k, top_p) != (1.0, 0, 1.0) else [exact(LOGITS, 0.7, 0, 1.0)]
    for other in wrong:
        bad, bad_dof = chi_square(counts, other)
        assert bad > CRITICAL.get(bad_dof, 20.52), "the test cannot tell a wrong distribution apart"
    # each draw's log-prob is that of the tempered, unfiltered distribution
    tempered = torch.log_softmax(LOGITS / temperature, -1)
    torch.testing.assert_close(logps, tempered[tokens])


def test_greedy_is_argmax_and_a_zero_probability_token_is_never_drawn():
    logits = torch.tensor([[0.0, 5.0, -math.inf, 1.0], [3.0, -math.inf, -math.inf, -math.inf]])
    tokens, _ = decode.draw(logits, 0.0, 0, 1.0, None)
    assert tokens.tolist() == [1, 0]
    for u in (0.0, 1e-9, 0.5, 1 - 1e-7):
        tokens, _ = decode.draw(logits, 1.0, 0, 1.0, torch.full((2,), u))
        assert tokens[0].item() != 2 and tokens[1].item() == 0


# ------------------------------------------------------------------- the same tokens as the plain loop


def _micro(kind: str, tokenizer, attn: str = "sdpa"):
    """A 2-layer model of ``kind`` (tests/test_packing.py's shapes) on the test tokenizer, initialised wide
    enough (std 0.3) that greedy rows do not all repeat one token."""
    name, sizes = CONFIGS[kind]
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config = getattr(transformers, name)(vocab_size=len(tokenizer), initializer_range=0.3, **ids, **sizes)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _batch(tokenizer):
    enc = [encode(tokenizer, p, "", 97, 96, add_eos=False) for p in PROMPTS]
    return collate(enc, tokenizer.pad_token_id, padding_side="left")


def _ending_token(model, batch, cfg: SamplingConfig) -> int:
    """A token to serve as EOS: of those the run emits, the one whose first appearance in the rows falls
    on the most different steps, so rows end at different steps and batches get compacted."""
    out = decode.plain_decode(
        model, batch.input_ids, batch.attention_mask, 4, 16, -1, decode.sampler(cfg, torch.Generator().manual_seed(3), 16, "cpu")
    )
    rows = out.tokens.tolist()

    def spread(tok):
        return len({row.index(tok) if tok in row else -1 for row in rows})

    return max(sorted(set(out.tokens.flatten().tolist())), key=spread)


@pytest.mark.parametrize("kind, attn", [*((k, "sdpa") for k in sorted(decode.DECODABLE)), ("llama", "eager")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("compact_at", [1.0, 0.5])
def test_decode_gives_the_plain_loops_tokens(tokenizer, monkeypatch, kind, attn, temperature, compact_at):
    """Shared prompt prefill, the preallocated cache, the sliced 4D mask and rows leaving the batch
    (compacted at every end: COMPACT_AT = 1) change no token: equal to the plain loop, log-probs within
    float rounding, for 4 prompts × 4 samples whose rows end at different steps. With COMPACT_AT = 0.5,
    ended rows stay in the batch a while and must emit EOS at log-prob 0."""
    monkeypatch.setattr(decode, "COMPACT_AT", compact_at)
    model, batch = _micro(kind, tokenizer, attn), _batch(tokenizer)
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=16)
    eos = _ending_token(model, batch, cfg)
    runs = []
    for fn in (decode.decode, decode.plain_decode):
        runs.append(
            fn(model, batch.input_ids, batch.attention_mask, 4, 16, eos, decode.sampler(cfg, torch.Generator().manual_seed(3), 16, "cpu"))
        )
    fast, plain = runs
    ends = [row.tolist().index(eos) if eos in row.tolist() else -1 for row in plain.tokens]
    assert len(set(ends)) >= 2, ends  # rows end at different steps, some batches are compacted
    assert torch.equal(fast.tokens, plain.tokens)
    torch.testing.assert_close(fast.logps, plain.logps, atol=1e-5, rtol=1e-5)
    assert fast.steps == plain.steps


def test_every_architecture_of_the_fast_path_is_checked():
    assert decode.DECODABLE <= set(CONFIGS)


def test_n_samples_share_one_prefill_and_equal_the_prompt_repeated(model, tokenizer):
    """``n=3`` prefills each prompt once and repeats its cache; the samples are those of the prompt
    given three times (same rows, same uniforms), token for token."""
    cfg = SamplingConfig(max_new_tokens=10, seed=4, batch_size=12)
    shared = sample(model, tokenizer, PROMPTS, cfg, n=3)
    repeated = sample(model, tokenizer, [p for p in PROMPTS for _ in range(3)], cfg, n=1)
    assert [s.completion_ids for s in shared] == [s.completion_ids for s in repeated]
    assert [s.prompt for s in shared] == [s.prompt for s in repeated]


def test_an_architecture_without_the_fast_path_is_decoded_by_the_plain_loop_with_one_notice(tokenizer, capsys):
    from transformers import OPTConfig

    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32, **ids
    )
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(config).eval()
    decode._NOTICED.clear()
    assert decode.choose(opt) is decode.plain_decode and decode.choose(opt) is decode.plain_decode
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("notice: opt")
    out = sample(opt, tokenizer, PROMPTS[:2], SamplingConfig(max_new_tokens=6), n=2)
    assert len(out) == 4 and all(len(s.completion_ids) <= 6 for s in out)
