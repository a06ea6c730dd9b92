import hashlib
import itertools
import json
import math
import random
import re
import statistics

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


CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nName 3 fruits.<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.mark.parametrize(
    "completion, items, expected",
    [
        # the world's own format in a chat turn (no leading space): still well formed
        ("apple, pear, plum.", ["apple", "pear", "plum"], 1.0),
        # a numbered list with an introduction and a closing sentence: items counted, not well formed
        ("Here are three fruits:\n\n1. Apple\n2. Pear\n3. Plum\n\nEnjoy them!", ["apple", "pear", "plum"], 0.8),
        # markdown, glosses and plurals
        ("1. **Apples**: crisp\n2. Pears (ripe)\n3) cherries - red", ["apple", "pear", "cherry"], 0.8),
        # bullets with articles, a repeat and a wrong item
        ("- an apple\n- the apple\n* a dog", ["apple", "apple", "dog"], 0.8 / 3 - 0.2 - 0.2),
        # prose after an introduction, ", and", a closing sentence
        ("Sure! Here are 3 fruits: apple, pear, and plum. They are all sweet.", ["apple", "pear", "plum"], 0.8),
        # prose without an introduction: its first sentence
        ("Bananas and kiwis. Both are yellow inside.", ["banana", "kiwi"], 0.8 * 2 / 3 - 0.1),
        # a refusal: one wrong item, two short
        ("I cannot help with that", ["i cannot help with that"], -0.2 - 0.2),
    ],
)
def test_gold_reads_the_items_of_a_chat_models_answer_whatever_its_format(completion, items, expected):
    assert lists.parse_items(completion) == items
    assert lists.gold_reward(CHATML, completion) == pytest.approx(expected)
    assert lists.gold_reward(P3, completion) == pytest.approx(expected)  # the request is read from either template


def _old_parse_items(completion: str) -> list[str]:
    """The world's item reader before chat models (kept verbatim as this test's oracle)."""
    text = completion.strip().rstrip(".").strip()
    if not text:
        return []
    return [item.strip().lower() for item in re.split(r",|\band\b", text) if item.strip()]


def test_an_answer_in_the_worlds_format_is_read_as_it_always_was():
    """What follows "Assistant:" starts with a space; read exactly as before chat models, so the tiny
    model's results do not move: demonstrations, random word soup, and list-like garbage."""
    rng = random.Random(0)
    words = sorted(lists.ALL_MEMBERS) + ["and", ":", "1.", "-", "\n", "\n2.", "Apples", "(red)", "**", "the", "."]
    texts = [r["completion"] for r in lists.sft_data(300, seed=2)]
    texts += [" " + " ".join(rng.choice(words) + rng.choice(["", ",", ".", ":"]) for _ in range(rng.randint(1, 9))) for _ in range(2000)]
    for text in texts:
        assert lists.parse_items(text) == _old_parse_items(text), text
    assert lists.is_well_formed(" apple, pear.") and lists.is_well_formed("apple, pear.") and not lists.is_well_formed("Apple, pear.")


def test_chat_world_has_the_same_requests_and_answers_as_message_lists(tmp_path):
    small = dict(corpus=10, sft=50, prompts=20, heldout=20, seed=3)
    plain = write_world(WorldConfig(out=str(tmp_path / "plain"), **small))
    chat = write_world(WorldConfig(out=str(tmp_path / "chat"), chat=True, **small))
    for name in ("sft", "prompts", "heldout"):
        a = [json.loads(x) for x in plain[name].read_text().splitlines()]
        b = [json.loads(x) for x in chat[name].read_text().splitlines()]
        assert [lists.format_prompt(r["prompt"][0]["content"]) for r in b] == [r["prompt"] for r in a]
        if name == "sft":
            assert [" " + r["completion"][0]["content"] for r in b] == [r["completion"] for r in a]
            assert all(r["completion"][0]["role"] == "assistant" for r in b)
    assert chat["corpus"].read_bytes() == plain["corpus"].read_bytes()


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


# ------------------------------------------------------------------ the bound on rankings


def _pl_probability(order, u, tau):
    """P(order) under Plackett–Luce with weights exp(u / tau), straight from the definition."""
    left, p = list(order), 1.0
    for item in order:
        p *= math.exp(u[item] / tau) / sum(math.exp(u[j] / tau) for j in left)
        left.remove(item)
    return p


def _agreement(order, scores, pairs):
    """Share of ``pairs`` (of item ids) on which a scorer agrees with the ranking; a tied score counts 1/2."""
    rank = {item: r for r, item in enumerate(order)}
    hits = 0.0
    for i, j in pairs:
        above = i if rank[i] < rank[j] else j
        other = j if above == i else i
        hits += 1.0 if scores[above] > scores[other] else 0.5 if scores[above] == scores[other] else 0.0
    return hits / len(pairs)


UTILITIES = [
    [0.3, 0.1, -0.2],
    [1.0, 0.9, 0.9, 0.4],  # a tie: p = 1/2 counts 1/2
    [0.5, 0.2, 0.2, -0.1, 0.0],
    [1.0, 0.7333, 0.5333, -0.5, 0.1],  # one truncated (the -0.5 term of gold)
]


@pytest.mark.parametrize("u", UTILITIES)
@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_all_pairs_bound_is_what_enumerating_every_order_gives(u, tau):
    """Expected accuracy on every pair of a Plackett–Luce ranking, summed over all K! orders with their
    probabilities, for the best scorer (the utilities) and for every other strict ordering: the best
    one equals the bound, none beats it."""
    k = len(u)
    orders = list(itertools.permutations(range(k)))
    probs = [_pl_probability(o, u, tau) for o in orders]
    assert sum(probs) == pytest.approx(1.0)
    pairs = list(itertools.combinations(range(k), 2))
    bound = lists.bayes_optimal_accuracy([p for _, _, p in lists.ranking_pair_probs(u, tau)])
    expected = sum(p * _agreement(o, u, pairs) for o, p in zip(orders, probs))
    assert expected == pytest.approx(bound, abs=1e-12)
    for scorer in orders:  # scores = the reverse of an order's position: any strict ordering
        scores = [0.0] * k
        for r, item in enumerate(scorer):
            scores[item] = -r
        assert sum(p * _agreement(o, scores, pairs) for o, p in zip(orders, probs)) <= bound + 1e-12


def test_adjacent_pairs_are_not_bounded_by_their_bradley_terry_probabilities():
    """The old bound: E[max(p, 1-p)] over a sampled ranking's *adjacent* pairs. Enumeration shows
    the true ceiling on those pairs is lower (adjacent pairs are selected by the draw itself)."""
    u, tau = [0.5, 0.2, 0.2, -0.1], 0.1
    orders = list(itertools.permutations(range(4)))
    probs = [_pl_probability(o, u, tau) for o in orders]
    p = {(i, j): pij for i, j, pij in lists.ranking_pair_probs(u, tau)}
    old_bound = sum(w * lists.bayes_optimal_accuracy([p[min(a, b), max(a, b)] for a, b in zip(o, o[1:])]) for o, w in zip(orders, probs))
    truth = sum(w * _agreement(o, u, [(a, b) for a, b in zip(o, o[1:])]) for o, w in zip(orders, probs))
    assert truth < old_bound - 0.01


def test_simulated_rankings_match_the_all_pairs_bound():
    """The annotator's own sampler (``preftune annotate``): the true utilities' accuracy on every pair
    of many drawn rankings converges to the bound, truncation included."""
    from preftune.commands.sample import plackett_luce_order

    rng = random.Random(1)
    ann = lists.Annotator(tau=0.1)
    prompt = lists.format_prompt("Name 3 fruits.")
    comps = [" apple, pear, plum.", " apple, pear, apple.", " apple, pear.", " apple, pear, plum."]
    ended = [True, True, True, False]
    u = [ann.utility(prompt, c, e) for c, e in zip(comps, ended)]
    assert u[0] == 1.0 and u[3] == 0.5  # the same text, truncated
    bound = lists.bayes_optimal_accuracy([p for *_, p in lists.ranking_pair_probs(u, ann.tau)])
    pairs = list(itertools.combinations(range(4), 2))
    draws = [plackett_luce_order(ann, prompt, comps, ended, rng) for _ in range(20000)]
    assert statistics.fmean(_agreement(o, u, pairs) for o in draws) == pytest.approx(bound, abs=0.005)


def test_list_facts_say_true_things_about_their_lists():
    """Every kind of list fact, checked by re-parsing it: counts of different items, the repeated item,
    the list without repeats, membership."""
    rng = random.Random(5)
    seen = set()
    for _ in range(400):
        cat = rng.choice(sorted(lists.CATEGORIES))
        s, p, members = lists.CATEGORIES[cat]
        fact = lists._list_fact(rng, cat)
        head, _, tail = fact.partition(": ")
        if ", without repeats" in head:
            items = head.removesuffix(", without repeats").split(", ")
            assert tail.rstrip(".").split(", ") == list(dict.fromkeys(items)), fact
            seen.add("dedup")
            continue
        items = head.split(", ")
        if " different " in tail:
            n = tail.split(" ")[2]
            assert (int(n) if n.isdigit() else lists.NUMBER_WORDS.index(n) + 1) == len(set(items)), fact
            seen.add("count")
        elif tail.startswith("no "):
            assert len(set(items)) == len(items), fact
            seen.add("no repeat")
        elif tail.endswith(" is repeated."):
            assert items.count(tail.removesuffix(" is repeated.")) >= 2, fact
            seen.add("repeat")
        elif " is not a " in tail:
            odd = tail.split(" is not a ")[0]
            assert odd in items and odd not in members, fact
            seen.add("member")
        else:
            assert tail == f"all of them are {p}." and set(items) <= set(members), fact
            seen.add("all members")
    assert seen == {"dedup", "count", "repeat", "no repeat", "member", "all members"}


def test_list_facts_replace_a_share_of_the_corpus_and_leave_the_rest_as_it_was():
    plain, mixed = lists.corpus(2000, seed=0), lists.corpus(2000, seed=0, list_facts=0.3)
    kept = sum(a == b for a, b in zip(plain, mixed))
    assert 0.6 * 2000 < kept < 0.8 * 2000  # about 70% untouched, document for document
