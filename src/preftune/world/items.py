"""Reading the items of an answer in the lists world, whatever its format: the world's own
(" apple, pear, plum.") or a chat model's (a numbered list, a sentence with an introduction)."""

from __future__ import annotations

import re

from .vocabulary import ALL_MEMBERS

_WELL_FORMED_RE = re.compile(r"^ ?[a-z]+(?: [a-z]+)?(?:, [a-z]+(?: [a-z]+)?)*\.$")


def _split_plain(text: str) -> list[str]:
    """The world's own format read plainly: split on commas and "and", lower-cased, the final period removed."""
    text = text.strip().rstrip(".").strip()
    if not text:
        return []
    return [item.strip().lower() for item in re.split(r",|\band\b", text) if item.strip()]


# A chat model's list line: "1. Apple", "2) pear", "- plum", "* **Kiwi**: a small fruit".
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")
# An introduction before the items: "Here are three fruits: apple, pear and plum."
_INTRO = re.compile(r"^[^:\n]{1,80}:\s+")
_ARTICLE = re.compile(r"^(?:an?|the)\s+")


def _singular(item: str) -> str:
    """A plural a chat model writes ("cherries", "peaches") as the world's member, when it is one."""
    if item in ALL_MEMBERS:
        return item
    for cut, add in (("ies", "y"), ("es", ""), ("s", "")):
        if item.endswith(cut) and item[: -len(cut)] + add in ALL_MEMBERS:
            return item[: -len(cut)] + add
    return item


def _clean(item: str) -> str:
    """One listed item as the world names it: markdown, a trailing gloss ("Kiwi: small and green",
    "Paris (France)", "oak - a hardwood"), punctuation and an article removed, lower-cased, singular."""
    item = item.replace("**", "").replace("__", "").strip().lower()
    item = re.split(r":|\(| - | – | — ", item, maxsplit=1)[0]
    item = _ARTICLE.sub("", item.strip().strip(".,;!?*_`\"'").strip())
    return _singular(item)


def parse_items(completion: str) -> list[str]:
    """The items of an answer, whatever its format.

    An answer in the world's own format follows "Assistant:" with a space (" apple, pear, plum.")
    and is split on commas and "and", exactly as the world always read it (so the tiny model's
    results do not move). A chat model's turn starts at the line's start and is read as a person
    would: the lines of a numbered or bulleted list, one item each (an
    introduction and a closing sentence are not items); or else its first sentence, after an
    introduction if it has one ("Here are three fruits: apple, pear and plum. Enjoy!"). Items are
    lower-cased, with markdown, glosses, articles and plurals removed (:func:`_clean`). An empty
    answer has no items.
    """
    if completion.startswith(" "):
        return _split_plain(completion)
    listed = [m[1] for line in completion.split("\n") if (m := _LIST_LINE.match(line))]
    if listed:
        return [item for item in map(_clean, listed) if item]
    text = completion.strip()
    intro = _INTRO.match(text)
    text = re.split(r"[.!?](?:\s|$)|\n", text[intro.end() :] if intro else text, maxsplit=1)[0]
    return [item for item in map(_clean, _split_plain(text)) if item]


def is_well_formed(completion: str) -> bool:
    """The module doc's "well formed": the world's requested format, exactly (a leading space or none)."""
    items = _split_plain(completion)
    return bool(items) and _WELL_FORMED_RE.match(completion) is not None and all(i in ALL_MEMBERS for i in items)
