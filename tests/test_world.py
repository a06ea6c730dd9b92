import hashlib
import random

import pytest

from preftune.world import WorldConfig, lists, write_world

P3 = "Human: Name 3 fruits.\n\nAssistant:"


def _digest(cfg: WorldConfig) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in write_world(cfg).items()}


def test_world_is_byte_reproducible_for_a_seed(tmp_path):
    small = dict(corpus=300, sft=200, prompts=100, heldout=50)
    a = _digest(WorldConfig(out=str(tmp_path / "a"), seed=7, **small))
    b = _digest(WorldConfig(out=str(tmp_path / "b"), seed=7, **small))
    c = _digest(WorldConfig(out=str(tmp_path / "c"), seed=8, **small))
    assert a == b
    assert all(a[k] != c[k] for k in a)


@pytest.mark.parametrize(
    "completion, ended, expected",
    [
        (" apple, pear, plum.", True, 1.0),  # perfect: 0.8 * 3/3 + 0.2
        (" apple, pear, plum.", False, 0.5),  # no EOS: -0.5
        ("", True, -0.3),  # empty: 0 coverage, count off by 3
        (" apple, pear.", True, 0.8 * 2 / 3 + 0.2 - 0.1),  # one short
        (" apple, pear, plum, kiwi.", True, 1.0 - 0.1),  # one extra correct item
        (" apple, apple, pear.", True, 0.8 * 2 / 3 + 0.2 - 0.2),  # a repeat
        (" apple, pear, dog.", True, 0.8 * 2 / 3 + 0.2 - 0.2),  # a wrong item (still a known word)
        (" dog, cat, cow.", True, 0.2 - 0.6),  # off-topic
        ("apple pear plum", True, -0.2 - 0.1 * 2),  # one item "apple pear plum": wrong, count off by 2
    ],
)
def test_gold_reward_hand_values(completion, ended, expected):
    assert lists.gold_reward(P3, completion, ended) == pytest.approx(expected)


def test_prompt_parsing_covers_every_phrasing_and_number_form():
    rng = random.Random(0)
    for _ in range(500):
        prompt, req = lists.make_prompt(rng)
        assert lists.parse_request(prompt) == req
    with pytest.raises(ValueError, match="not a prompt"):
        lists.parse_request("Human: What is love?\n\nAssistant:")


def test_heldout_prompts_come_from_templates_never_used_for_training():
    train = {r["prompt"] for r in lists.sft_data(3000, seed=0)}
    held = {r["prompt"] for r in lists.prompts(500, seed=0, split="heldout")}
    assert len(held) > 200 and not (train & held)


def test_demonstrator_is_noisy_but_competent():
    rows = lists.sft_data(2000, seed=0)
    mean = sum(lists.gold_reward(r["prompt"], r["completion"]) for r in rows) / len(rows)
    rng = random.Random(0)
    perfect = [lists.gold_reward(r["prompt"], lists.perfect_answer(r["prompt"], rng)) for r in rows[:100]]
    assert 0.6 < mean < 0.85  # leaves room above the demonstrator
    assert perfect == [1.0] * 100


def test_minority_utility_wants_more_items():
    few, more = " apple, pear, plum.", " apple, pear, plum, kiwi, lemon."
    majority, minority = lists.Annotator(extra=0), lists.Annotator(extra=2, group="minority")
    assert majority.utility(P3, few) > majority.utility(P3, more)
    assert minority.utility(P3, more) > minority.utility(P3, few)
    assert minority.utility(P3, more) == pytest.approx(1.0)


def test_bayes_optimal_accuracy_matches_monte_carlo():
    rng = random.Random(0)
    annotator = lists.Annotator(tau=0.2)
    demo = lists.Demonstrator()
    pairs = []
    for _ in range(300):
        prompt, _ = lists.make_prompt(rng)
        pairs.append((prompt, demo.answer(prompt, rng), demo.answer(prompt, rng)))
    probs = [annotator.p_prefers_a(p, a, b) for p, a, b in pairs]
    exact = lists.bayes_optimal_accuracy(probs)
    # Monte Carlo: label many times, predict with the true utilities, count agreement.
    hits = total = 0
    for _ in range(40):
        for (p, a, b), pa in zip(pairs, probs):
            label_a = annotator.prefers_a(p, a, b, rng)
            hits += label_a == (pa >= 0.5)
            total += 1
    assert abs(hits / total - exact) < 0.01
