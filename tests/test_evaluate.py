"""distinct-n, the gold-judged win rate and the Monte Carlo KL, against values worked out by hand
or by a naive one-prefix-at-a-time forward pass."""

import math
import statistics

import pytest
import torch

from preftune.evaluate import distinct_n, kl_to_reference, win_rate
from preftune.models import build_model
from preftune.rollout import Sample
from preftune.world import lists

TWO_FRUITS = lists.format_prompt("Name 2 fruits.")


def test_distinct_n_counts_punctuation_as_words_and_ngrams_within_each_text():
    """Words (commas and periods split off):
    " apple, pear."       -> apple , pear .          (4 words, 3 bigrams)
    " pear, apple, pear." -> pear , apple , pear .   (6 words, 5 bigrams)
    unigrams: 4 distinct {apple , pear .} of 10.
    bigrams: 5 distinct {(apple ,) (, pear) (pear .) (pear ,) (, apple)} of 8; none spans the two texts."""
    texts = [" apple, pear.", " pear, apple, pear."]
    assert distinct_n(texts, 1) == pytest.approx(4 / 10)
    assert distinct_n(texts, 2) == pytest.approx(5 / 8)
    assert distinct_n(texts, 7) == 0.0  # no text has 7 words: no n-grams at all
    assert distinct_n([], 1) == 0.0


def _sample(completion: str, ended: bool = True) -> Sample:
    return Sample(TWO_FRUITS, completion, (), ended, 0.0)


def test_win_rate_by_gold_reward_with_ties_as_half():
    """Gold rewards for "Name 2 fruits." (k = 2), from the formula in ``lists``:
    " apple, pear."  perfect                                   = 1.0 (also " pear, apple.", and with ended=False 1.0 - 0.5)
    " apple."        0.8 * 1/2 + 0.2 - 0.1 * |1 - 2|           = 0.5
    " apple, apple." 0.8 * 1/2 + 0.2 - 0.2 (one duplicate)      = 0.4
    Pairs: 1.0 > 0.5 (win), 1.0 > 0.5 truncated (win), 1.0 = 1.0 (tie), 0.4 < 1.0 (loss) -> scores 1, 1, 1/2, 0."""
    samples = [_sample(" apple, pear."), _sample(" apple, pear."), _sample(" apple, pear."), _sample(" apple, apple.")]
    reference = [_sample(" apple."), _sample(" apple, pear.", ended=False), _sample(" pear, apple."), _sample(" apple, pear.")]
    out = win_rate(samples, reference)
    assert out["win_rate"] == pytest.approx(2.5 / 4)
    # squared deviations from 0.625: 0.375², 0.375², 0.125², 0.625² = 0.6875 in all; sample sd = sqrt(0.6875 / 3)
    assert out["win_rate_ci95"] == pytest.approx(1.96 * math.sqrt(0.6875 / 3) / math.sqrt(4))


def test_win_rate_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError):
        win_rate([_sample(" apple, pear.")] * 2, [_sample(" apple.")])


@torch.no_grad()
def _naive_logp(model, prompt_ids, completion_ids, temperature: float = 1.0) -> float:
    """Sum over the completion of log softmax(logits / T)[next token], one unpadded prefix per token."""
    ids = list(prompt_ids) + list(completion_ids)
    total = 0.0
    for t in range(len(prompt_ids), len(ids)):
        logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
        total += float(torch.log_softmax(logits / temperature, -1)[ids[t]])
    return total


def _policy_samples(model, tokenizer, temperature: float) -> list[Sample]:
    """Three samples of different lengths (one without EOS), each with ``logp`` its own naive log-prob under ``model``."""
    rows = [
        ("Name 2 fruits.", " apple, pear.", True),
        ("List 3 colors.", " red, blue, green.", True),
        ("Give me 1 planet.", " mars", False),
    ]
    out = []
    for request, completion, ended in rows:
        prompt = lists.format_prompt(request)
        prompt_ids = tuple(tokenizer(prompt)["input_ids"])
        completion_ids = tuple(tokenizer(completion, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,) * ended
        logp = _naive_logp(model, prompt_ids, completion_ids, temperature)
        out.append(Sample(prompt, completion, completion_ids, ended, logp, prompt_ids))
    return out


def test_kl_to_itself_is_zero(model, tokenizer):
    """With the sampling model as the reference, log π(y|x) - log π_ref(y|x) = 0 for every sample."""
    out = kl_to_reference(_policy_samples(model, tokenizer, 1.0), model, tokenizer, batch_size=2)
    assert out["kl"] == pytest.approx(0.0, abs=1e-4)
    assert out["kl_ci95"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_kl_to_another_model_is_the_mean_logp_difference(model, tokenizer, temperature):
    """KL estimate = mean over samples of (logp - naive log-prob under the reference), both at temperature T."""
    reference = build_model(tokenizer, size="micro", seed=1).eval()
    samples = _policy_samples(model, tokenizer, temperature)
    diffs = [s.logp - _naive_logp(reference, s.prompt_ids, s.completion_ids, temperature) for s in samples]
    assert abs(statistics.fmean(diffs)) > 0.1  # the two models do differ, so the check below is not 0 = 0
    out = kl_to_reference(samples, reference, tokenizer, temperature=temperature, batch_size=2)
    assert out["kl"] == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    assert out["kl_ci95"] == pytest.approx(1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)), abs=1e-4)


# ------------------------------------------------------------------------------- reward models


def test_labelled_pairs_are_every_pair_of_a_ranking_with_the_labelling_groups_probability():
    from preftune.data import Comparison, Ranking
    from preftune.evaluate import labelled_pairs

    prompt = lists.format_prompt("Name 1 fruit.")
    ranking = Ranking(prompt, (" apple.", " apple, pear.", " apple."), (0, 2, 1), group="minority", ended=(True, True, False))
    pairs = labelled_pairs([ranking, Comparison(prompt, " pear.", " dog.")], tau=0.1)
    assert [(w, we, l, le) for _, w, we, l, le, _ in pairs] == [
        (" apple.", True, " apple.", False),
        (" apple.", True, " apple, pear.", True),
        (" apple.", False, " apple, pear.", True),
        (" pear.", True, " dog.", True),
    ]
    # the minority wants k + 2 = 3 items (utility formula in lists' module doc), truncation costs 0.5
    u_apple, u_two, u_apple_cut = 0.8 / 3 + 0.2 - 0.2, 1.6 / 3 + 0.2 - 0.1, 0.8 / 3 + 0.2 - 0.2 - 0.5
    expected = [lists.sigmoid((a - b) / 0.1) for a, b in [(u_apple, u_apple_cut), (u_apple, u_two), (u_apple_cut, u_two)]]
    expected.append(lists.sigmoid((1.0 - (0.0 + 0.2 - 0.2 - 0.0)) / 0.1))  # the majority: pear 1.0; dog: no coverage, wrong item
    assert [p for *_, p in pairs] == pytest.approx(expected)


def test_gold_agreement_counts_within_prompt_pairs_with_distinct_gold_and_ties_as_half():
    from preftune.evaluate import gold_agreement

    p1, p2 = lists.format_prompt("Name 2 fruits."), lists.format_prompt("Name 1 animal.")
    texts = [(p1, " apple, pear."), (p1, " apple, apple."), (p1, " apple, pear."), (p1, " dog."), (p2, " cat."), (p2, " cat, dog.")]
    samples = [Sample(p, c, (), True, 0.0) for p, c in texts]
    gold = [lists.gold_reward(p, c) for p, c in texts]
    assert gold[0] == gold[2] > gold[1] > gold[3] and gold[4] > gold[5]
    # prompt 1: pairs with distinct gold (0,1) (0,3) (1,2) (1,3) (2,3); (0,2) has equal gold and is left out.
    scores = [1.0, 0.5, 0.5, 2.0, 3.0, -1.0]  # (0,1) right, (0,3) wrong, (1,2) tie, (1,3) wrong, (2,3) wrong
    # prompt 2, four samples [4, 5, 4, 5]: its four pairs with distinct gold are all ordered right
    r = gold_agreement(samples + samples[4:], scores + [3.0, -1.0], k=4)
    assert r["gold_pairs"] == 5 + 4
    assert r["gold_pair_accuracy"] == pytest.approx((1 + 0 + 0.5 + 0 + 0 + 4) / 9)
    assert r["components"]["duplicates"]["gold"] < 0  # gold punishes the repeat within its prompt
