"""The accepted shapes of SFT, comparison, prompt and pretraining files (README: "Data formats"):
TRL's standard and conversational formats, explicit or implicit prompts, HH-RLHF transcripts and
K-way rankings, each checked row by row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .chat import ASSISTANT_MARK, check_messages, render_chat, render_conversation, render_messages, split_transcript
from .records import Comparison, Ranking, SFTExample
from .rows import DataError, nonempty, read_rows, shown, text_field


def load_sft(path: str | Path, chat=None, empty_completions: bool = False) -> list[SFTExample]:
    """SFT rows (TRL's formats): ``{"prompt", "completion"}`` as strings or as message lists, or
    ``{"messages": [...]}``; messages are rendered with ``chat``'s template (:func:`render_messages`).

    An empty completion is refused (a demonstration of nothing) unless ``empty_completions``: a file of
    completions to score may hold one (a sample that emitted EOS at once)."""
    out = []
    for where, row in read_rows(path):
        if "messages" in row:
            out.append(render_conversation(row["messages"], path, where, chat))
        elif isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list):
            prompt, completion = (check_messages(row.get(k), path, where, k) for k in ("prompt", "completion"))
            out.append(render_messages(prompt, completion, chat, path, where))
        elif "prompt" in row or "completion" in row:
            prompt = text_field(row, "prompt", path, where, allow_empty=True)
            out.append(SFTExample(prompt, text_field(row, "completion", path, where, allow_empty=empty_completions)))
        else:
            raise DataError(path, where, f"expected 'prompt' and 'completion', or 'messages' (fields present: {sorted(row)})")
    nonempty(out, path)
    return out


def _common_prefix(a: Sequence, b: Sequence) -> int:
    """How many leading items (characters, messages) ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _conversational_pair(row: dict, path, where, chat) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a pair given as message lists, with the prompt explicit or
    implicit (the messages ``chosen`` and ``rejected`` share before they differ)."""
    chosen, rejected = check_messages(row["chosen"], path, where, "chosen"), check_messages(row["rejected"], path, where, "rejected")
    if "prompt" in row:
        prompt = check_messages(row["prompt"], path, where, "prompt")
    else:
        n = _common_prefix(chosen, rejected)
        if n == 0:
            raise DataError(path, where, "without a 'prompt', 'chosen' and 'rejected' must start with the same prompt messages")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    c, r = render_messages(prompt, chosen, chat, path, where), render_messages(prompt, rejected, chat, path, where)
    return c.prompt, c.completion, r.completion


def _shared_prompt(chosen: str, rejected: str, path, where) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of two texts without a ``prompt`` field: the prompt is their common
    beginning, a space it ends on left to the completions (as TRL's ``extract_prompt``)."""
    n = _common_prefix(chosen, rejected)
    if n and n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    if n == 0:
        raise DataError(path, where, "without a 'prompt', 'chosen' and 'rejected' must begin with the same prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def _strength(row: dict, path, where) -> float | None:
    value = row.get("strength")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # NaN fails the range too
        raise DataError(path, where, f"'strength' must be a number in [0, 1], got {shown(value)}")
    return float(value)


def load_comparisons(path: str | Path, chat=None) -> list[Comparison | Ranking]:
    """Comparison rows: pairs (TRL's preference formats: strings or message lists, explicit or
    implicit prompt; HH-RLHF whole transcripts, split at the last Assistant turn) or K-way rankings
    (README: "Data formats").

    Refused, as rows that cannot teach anything: a pair whose chosen and rejected are the same
    (text and ended flag), a ranking that repeats a completion.
    """
    out: list[Comparison | Ranking] = []
    for where, row in read_rows(path):
        meta = {k: row.get(k) for k in ("annotator", "group")}
        for k, v in meta.items():
            if v is not None and not isinstance(v, str):
                raise DataError(path, where, f"field {k!r} must be a string, got {type(v).__name__}")
        if "ranking" in row or "completions" in row:
            prompt = text_field(row, "prompt", path, where)
            comps, ranking = row.get("completions"), row.get("ranking")
            if not isinstance(comps, list) or len(comps) < 2 or not all(isinstance(c, str) for c in comps):
                raise DataError(path, where, "'completions' must be a list of at least 2 strings")
            if (
                not isinstance(ranking, list)
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking)
                or sorted(ranking) != list(range(len(comps)))
            ):
                raise DataError(path, where, f"'ranking' must be a permutation of 0..{len(comps) - 1}, got {shown(ranking)}")
            ended = row.get("ended")
            if ended is not None and (
                not isinstance(ended, list) or len(ended) != len(comps) or not all(isinstance(e, bool) for e in ended)
            ):
                raise DataError(path, where, f"'ended' must be a list of {len(comps)} booleans (one per completion), got {shown(ended)}")
            seen = {}
            for i, item in enumerate(zip(comps, ended or [True] * len(comps))):
                if item in seen:
                    raise DataError(path, where, f"completions {seen[item]} and {i} are the same: a ranking of them means nothing")
                seen[item] = i
            out.append(Ranking(prompt, tuple(comps), tuple(ranking), **meta, ended=None if ended is None else tuple(ended)))
            continue
        for k in ("chosen", "rejected"):
            if k not in row:
                raise DataError(path, where, f"missing field {k!r} (fields present: {sorted(row)})")
        if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
            prompt, chosen, rejected = _conversational_pair(row, path, where, chat)
        else:  # an empty completion (EOS at once) is a legitimate thing to compare
            chosen, rejected = (
                text_field(row, "chosen", path, where, allow_empty=True),
                text_field(row, "rejected", path, where, allow_empty=True),
            )
            if "prompt" in row:
                prompt = text_field(row, "prompt", path, where)
            elif ASSISTANT_MARK in chosen and ASSISTANT_MARK in rejected:  # HH-RLHF: whole transcripts, split at the last turn
                prompt, chosen = split_transcript(chosen, path, where)
                prompt_r, rejected = split_transcript(rejected, path, where)
                if prompt_r != prompt:
                    raise DataError(path, where, "chosen and rejected transcripts differ before the last Assistant turn")
            else:  # TRL's implicit prompt: what the two texts share
                prompt, chosen, rejected = _shared_prompt(chosen, rejected, path, where)
        strength = _strength(row, path, where)
        ended = tuple(row.get(k, True) for k in ("chosen_ended", "rejected_ended"))
        if not all(isinstance(e, bool) for e in ended):
            raise DataError(path, where, f"'chosen_ended' and 'rejected_ended' must be booleans, got {shown(ended)}")
        if chosen == rejected and ended[0] == ended[1]:
            raise DataError(path, where, "'chosen' and 'rejected' are the same: the pair prefers nothing")
        out.append(Comparison(prompt, chosen, rejected, strength, **meta, ended=ended))
    nonempty(out, path)
    return out


def load_prompts(path: str | Path, chat=None) -> list[str]:
    """Prompt rows: ``{"prompt"}``, a string or a message list (rendered with the generation prompt);
    other fields are ignored, so SFT or comparison files work too."""
    out = []
    for where, row in read_rows(path):
        if isinstance(row.get("prompt"), list):
            out.append(render_chat(check_messages(row["prompt"], path, where, "prompt"), chat, add_generation_prompt=True))
        else:
            out.append(text_field(row, "prompt", path, where))
    nonempty(out, path)
    return out


def load_texts(path: str | Path) -> list[str]:
    """Pretraining rows: ``{"text"}``."""
    out = [text_field(row, "text", path, where) for where, row in read_rows(path)]
    nonempty(out, path)
    return out
