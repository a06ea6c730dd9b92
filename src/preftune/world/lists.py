"""The built-in "lists" world: a tiny assistant task with a programmatic gold reward.

A user asks for ``k`` members of a category ("Name 3 fruits."); the assistant answers with a
comma-separated list ending in a period (" apple, pear, plum."). Everything here is a pure
function of a seed, so the same seed gives the same data byte for byte.

Gold reward
-----------
For a request of ``k`` members of category ``C`` and a completion whose items are
``y_1 .. y_n`` (read by :func:`preftune.world.items.parse_items`: the world's own format split on
commas and "and"; a chat model's numbered or bulleted list line by line, its introduction and
closing sentence left out)::

    R = 0.8 * c / k            c = distinct items of C, counted up to k        (coverage)
      + 0.2 * f                f = 1 if the answer is well formed               (format bonus)
      - 0.2 * w                w = items that are not members of C              (wrong items)
      - 0.2 * d                d = repeated items                               (duplicates)
      - 0.1 * |n - k|          n = number of items given                        (wrong count)
      - 0.5 * t                t = 1 if the completion never emitted EOS        (truncated)

A perfect answer (k distinct members, well formed, ends with EOS) scores exactly 1.0; an empty
answer scores ``-0.1 k`` and an off-topic one is negative. "Well formed" means the text is
``" " + ", ".join(items) + "."`` with every item a known word of the world and at least one item
(the leading space may be missing: a chat model's turn starts without it). A chat model's items
count whatever its format; well-formedness, the world's requested format, is part of the task.

The utility of an *annotator group* generalises the formula with ``extra``: such a group wants
``k + extra`` items (coverage counted up to ``k + extra``, normalised by ``k + extra``, count
penalty measured from ``k + extra``). The majority group has ``extra = 0`` (the gold reward);
the default minority has ``extra = 2`` ("give me a few more than I asked for").
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from .items import is_well_formed, parse_items
from .vocabulary import ALL_MEMBERS, CATEGORIES

PHRASINGS: tuple[str, ...] = (
    "Name {k} {noun}.",
    "Can you list {k} {noun}?",
    "List {k} {noun}.",
    "Give me {k} {noun}.",
    "What are {k} {noun}?",
    "Tell me {k} {noun}, please.",
    "Please name {k} {noun}.",
    "I need {k} {noun}.",
)
OPENERS: tuple[str, ...] = ("", "Hi! ", "Quick question. ", "Help me out. ")
NUMBER_WORDS = ("one", "two", "three", "four", "five")
MAX_K = 5

HUMAN, ASSISTANT = "Human: ", "\n\nAssistant:"

_NOUN_TO_CATEGORY = {}
for _key, (_sing, _plur, _members) in CATEGORIES.items():
    _NOUN_TO_CATEGORY[_sing] = _key
    _NOUN_TO_CATEGORY[_plur] = _key
_REQUEST_RE = re.compile(
    r"\b(?P<k>[1-5]|one|two|three|four|five) (?P<noun>" + "|".join(sorted(_NOUN_TO_CATEGORY, key=len, reverse=True)) + r")\b"
)


@dataclass(frozen=True)
class Request:
    """What a prompt asks for: ``k`` members of ``category``."""

    category: str
    k: int


def format_prompt(request_text: str) -> str:
    """Wrap a user request in the world's ``Human: ... Assistant:`` format."""
    return f"{HUMAN}{request_text}{ASSISTANT}"


def format_answer(items: list[str]) -> str:
    """The canonical well-formed answer text for a list of items."""
    return " " + ", ".join(items) + "."


def make_prompt(rng: random.Random, category: str | None = None, k: int | None = None, split: str = "all") -> tuple[str, Request]:
    """Draw one prompt; ``split`` is "train", "heldout" or "all" (see :func:`split_of`)."""
    while True:
        cat = category or rng.choice(sorted(CATEGORIES))
        kk = k or rng.randint(1, MAX_K)
        phrasing = rng.randrange(len(PHRASINGS))
        opener = rng.randrange(len(OPENERS))
        if split == "all" or split_of(cat, kk, phrasing, opener) == split:
            break
    sing, plur, _ = CATEGORIES[cat]
    noun = sing if kk == 1 else plur
    number = NUMBER_WORDS[kk - 1] if (phrasing + opener) % 2 else str(kk)
    text = OPENERS[opener] + PHRASINGS[phrasing].format(k=number, noun=noun)
    return format_prompt(text), Request(cat, kk)


def split_of(category: str, k: int, phrasing: int, opener: int) -> str:
    """Deterministic 80/20 split of prompt templates, so held-out prompts are never trained on."""
    h = sum(ord(c) for c in category) * 31 + k * 7 + phrasing * 13 + opener * 101
    return "heldout" if h % 5 == 0 else "train"


def tag_prompt(prompt: str, group: str) -> str:
    """The prompt with the annotator group named at the start of the request ("Human: (minority) ..."),
    for policies conditioned on the group; :func:`parse_request` still reads it."""
    head, sep, request = prompt.rpartition(HUMAN)
    if not sep:
        raise ValueError(f"not a prompt of the lists world: {prompt[:60]!r}")
    return f"{head}{HUMAN}({group}) {request}"


def parse_request(prompt: str) -> Request:
    """Recover (category, k) from a prompt of this world; raises ``ValueError`` otherwise."""
    human = prompt.rsplit(HUMAN, 1)[-1]
    m = _REQUEST_RE.search(human)
    if m is None:
        raise ValueError(f"not a prompt of the lists world: {prompt[:60]!r}")
    k = m["k"]
    k = int(k) if k.isdigit() else NUMBER_WORDS.index(k) + 1
    return Request(_NOUN_TO_CATEGORY[m["noun"]], k)


# The terms of the gold reward, as :func:`components` returns them, with their weights in it.
COMPONENTS = ("coverage", "well_formed", "wrong", "duplicates", "count_error", "truncated")


def components(prompt: str, completion: str, ended: bool = True, extra: int = 0) -> dict[str, float]:
    """The terms of the gold reward (``extra = 0``) or of a group's utility: coverage ``c / k``,
    well-formedness ``f``, wrong items ``w``, repeated items ``d``, count error ``|n - k|``, truncation ``t``."""
    req = parse_request(prompt)
    want = req.k + extra
    members = set(CATEGORIES[req.category][2])
    items = parse_items(completion)
    seen: set[str] = set()
    correct = wrong = dup = 0
    for item in items:
        if item in seen:
            dup += 1
            continue
        seen.add(item)
        if item in members:
            correct += 1
        else:
            wrong += 1
    well_formed = is_well_formed(completion)
    return {
        "coverage": min(correct, want) / want,
        "well_formed": float(well_formed),
        "wrong": float(wrong),
        "duplicates": float(dup),
        "count_error": float(abs(len(items) - want)),
        "truncated": float(not ended),
    }


WEIGHTS = {"coverage": 0.8, "well_formed": 0.2, "wrong": -0.2, "duplicates": -0.2, "count_error": -0.1, "truncated": -0.5}


def utility(prompt: str, completion: str, ended: bool = True, extra: int = 0) -> float:
    """The gold reward (``extra = 0``) or an annotator group's utility; formula in the module doc."""
    c = components(prompt, completion, ended, extra)
    # rounded so that a perfect answer is exactly 1.0, not 1.0000000000000002
    return round(sum(WEIGHTS[k] * c[k] for k in COMPONENTS), 12)


def gold_reward(prompt: str, completion: str, ended: bool = True) -> float:
    """The world's gold reward; ``ended`` is False when the completion never emitted EOS."""
    return utility(prompt, completion, ended)


# --------------------------------------------------------------------------------------------
# The noisy demonstrator


@dataclass(frozen=True)
class Demonstrator:
    """A noisy human demonstrator: often the wrong count, sometimes a wrong or repeated item."""

    p_wrong_count: float = 0.5
    p_wrong_item: float = 0.25
    p_repeat: float = 0.2

    def answer(self, prompt: str, rng: random.Random) -> str:
        req = parse_request(prompt)
        members = list(CATEGORIES[req.category][2])
        n = req.k
        if rng.random() < self.p_wrong_count:
            n = max(1, n + rng.choice((-2, -1, 1, 1, 2)))
        items = rng.sample(members, min(n, len(members)))
        if rng.random() < self.p_wrong_item:
            others = sorted(ALL_MEMBERS - set(members))
            items[rng.randrange(len(items))] = rng.choice(others)
        if rng.random() < self.p_repeat and len(items) >= 1:
            items.insert(rng.randrange(len(items) + 1), rng.choice(items))
        return format_answer(items)


def perfect_answer(prompt: str, rng: random.Random) -> str:
    req = parse_request(prompt)
    return format_answer(rng.sample(list(CATEGORIES[req.category][2]), req.k))


# --------------------------------------------------------------------------------------------
# Data sets


def prompts(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` prompt records ``{"prompt"}`` from ``split`` ("train", "heldout" or "all")."""
    rng = random.Random(f"prompts-{seed}-{split}")
    return [{"prompt": make_prompt(rng, split=split)[0]} for _ in range(n)]


def sft_data(n: int, seed: int, demonstrator: Demonstrator = Demonstrator()) -> list[dict]:
    """``n`` demonstrations ``{"prompt", "completion"}`` written by the noisy demonstrator."""
    rng = random.Random(f"sft-{seed}")
    rows = []
    for _ in range(n):
        prompt, _ = make_prompt(rng, split="train")
        rows.append({"prompt": prompt, "completion": demonstrator.answer(prompt, rng)})
    return rows


_CORPUS_TEMPLATES = (
    "{m} is a {s}.",
    "Some {p} are {list}.",
    "Examples of {p} include {list}.",
    "My favourite {s} is {m}.",
    "I saw a {m} today.",
    "The {m} and the {m2} are both {p}.",
    "Which {s} do you like? I like {m}.",
)


def _list_fact(rng: random.Random, cat: str) -> str:
    """A sentence about a list of items: how many different ones it has, which one repeats, the list
    without its repeats, which item does not belong — what a pretrained language model knows about
    lists, and this world's base model would otherwise never read."""
    s, p, members = CATEGORIES[cat]
    items = rng.sample(members, rng.randint(1, 5))
    if rng.random() < 0.5:  # most facts are about a list with a repeat in it
        for _ in range(rng.randint(1, 2)):
            items.insert(rng.randrange(len(items) + 1), rng.choice(items))
    distinct = list(dict.fromkeys(items))
    listed = ", ".join(items)
    kind = rng.randrange(4)
    if kind == 0:  # counting what is different
        n = len(distinct)
        return f"{listed}: that is {rng.choice((str(n), NUMBER_WORDS[n - 1]))} different {s if n == 1 else p}."
    if kind == 1:  # what repeats
        repeated = [x for i, x in enumerate(items) if x in items[:i]]
        return f"{listed}: {repeated[0]} is repeated." if repeated else f"{listed}: no {s} is repeated."
    if kind == 2:  # the list without its repeats
        return f"{listed}, without repeats: {', '.join(distinct)}."
    # membership
    if rng.random() < 0.5:
        other = rng.choice(sorted(ALL_MEMBERS - set(members)))
        items[rng.randrange(len(items))] = other
        return f"{', '.join(items)}: {other} is not a {s}."
    return f"{listed}: all of them are {p}."


def corpus(n: int, seed: int, list_facts: float = 0.0) -> list[dict]:
    """A pretraining corpus ``{"text"}`` about the world: facts, lists and the request phrasings.

    It teaches the words, the categories and the chat format (requests followed by chit-chat),
    but never shows a request answered, so the base model knows the world without the task.
    A share ``list_facts`` of the documents are instead sentences about lists (counting,
    repetition, membership; :func:`_list_fact`), still never an answer to a request.
    """
    rng = random.Random(f"corpus-{seed}")
    facts = random.Random(f"corpus-facts-{seed}")  # its own stream: the documents it does not replace are unchanged
    rows = []
    keys = sorted(CATEGORIES)
    for _ in range(n):
        cat = rng.choice(keys)
        s, p, members = CATEGORIES[cat]
        kind = rng.random()
        if kind < 0.75:
            sents = []
            for _ in range(rng.randint(1, 3)):
                m, m2 = rng.sample(members, 2)
                lst = ", ".join(rng.sample(members, rng.randint(2, 4)))
                sents.append(rng.choice(_CORPUS_TEMPLATES).format(m=m, m2=m2, s=s, p=p, list=lst))
            text = " ".join(sents)
            text = text[0].upper() + text[1:]
        else:
            prompt, _ = make_prompt(rng)
            m = rng.choice(members)
            reply = rng.choice((f" I like {p}.", f" {m.capitalize()} is a {s}.", " Sure.", f" Let me think about {p}."))
            text = prompt + reply
        if list_facts and facts.random() < list_facts:  # drawn after the plain document: the others stay as they were
            text = " ".join(_list_fact(facts, facts.choice(keys)) for _ in range(facts.randint(1, 3)))
            text = text[0].upper() + text[1:]
        rows.append({"text": text})
    return rows


# --------------------------------------------------------------------------------------------
# Simulated annotators


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Annotator:
    """A Bradley–Terry annotator: ``P(a > b) = sigmoid((u(a) - u(b)) / tau)``.

    ``extra`` selects the group's utility (0 = the gold reward, see the module doc).
    """

    tau: float = 0.1
    extra: int = 0
    group: str = "majority"

    def utility(self, prompt: str, completion: str, ended: bool = True) -> float:
        return utility(prompt, completion, ended, self.extra)

    def p_prefers_a(self, prompt: str, a: str, b: str, a_ended: bool = True, b_ended: bool = True) -> float:
        return sigmoid((self.utility(prompt, a, a_ended) - self.utility(prompt, b, b_ended)) / self.tau)

    def prefers_a(self, prompt: str, a: str, b: str, rng: random.Random, a_ended: bool = True, b_ended: bool = True) -> bool:
        return rng.random() < self.p_prefers_a(prompt, a, b, a_ended, b_ended)


def bayes_optimal_accuracy(probs: list[float]) -> float:
    """Best expected accuracy any model can reach on Bradley–Terry labels with these ``P(a > b)``:
    ``E[max(p, 1-p)]`` (a pair of equal utilities has p = 1/2 and counts 1/2, as a tied score does)."""
    return sum(max(p, 1.0 - p) for p in probs) / len(probs)


def ranking_pair_probs(utilities: list[float], tau: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, of a Plackett–Luce ranking of items with these utilities, and the
    probability that i is ranked above j.

    A Plackett–Luce ranking's pairwise marginals are exactly Bradley–Terry,
    ``P(i above j) = e^{u_i/τ} / (e^{u_i/τ} + e^{u_j/τ})``, so :func:`bayes_optimal_accuracy` of these
    is the ceiling for accuracy on *all* pairs of the ranking. It is not the ceiling on a subset chosen
    by the ranking itself (e.g. its adjacent pairs): which pairs are adjacent depends on the draw.
    """
    k = len(utilities)
    return [(i, j, sigmoid((utilities[i] - utilities[j]) / tau)) for i in range(k) for j in range(i + 1, k)]
