"""Records, file readers with row-level errors, tokenisation and collation.

Readers accept JSONL, JSON (a list of objects) and Parquet. A malformed row raises
:class:`DataError` naming the file, the line (JSONL), record number (JSON) or row (Parquet), and
what is wrong; nothing is skipped silently.

Tokenisation and truncation policy (the one place it is decided)
----------------------------------------------------------------
* The prompt and the completion are tokenised *separately* and the ids joined, so the
  completion tokens are exactly what the model must produce: no BPE merge across the boundary.
  The prompt gets the tokenizer's own special tokens (a BOS where it wants one); the
  completion gets none, then EOS is appended. A boolean completion mask, not the pad id,
  marks what carries loss, so EOS is learned even when a tokenizer's pad equals its eos.
* Too long: the prompt is first cut from the *left* to ``max_prompt_length`` tokens (the end
  of a prompt, "Assistant:", matters most); then the completion is cut from the *right* so the
  total fits ``max_length``. A cut completion has lost its EOS — it really was truncated.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import faults

ASSISTANT_MARK = "\n\nAssistant:"


class DataError(ValueError):
    """A malformed input row: ``file:line: problem``."""

    def __init__(self, path: str | Path, where: str | int, problem: str):
        super().__init__(f"{path}:{where}: {problem}")


# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    completion: str


# Strength of a comparison, from the 8-point scale's distance to its middle:
# much better, better, slightly better, negligibly better.
SCALE_STRENGTHS = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class Comparison:
    """One preference: ``chosen`` is better than ``rejected`` for ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    strength: float | None = None  # from the 8-point scale, 0.5 (barely) .. 1.0 (much better)
    annotator: str | None = None
    group: str | None = None
    ended: tuple[bool, bool] = (True, True)  # False: that completion never emitted EOS (it is encoded without one)


@dataclass(frozen=True)
class Ranking:
    """K completions of one prompt ordered best first: ``completions[ranking[0]]`` is the best."""

    prompt: str
    completions: tuple[str, ...]
    ranking: tuple[int, ...]
    annotator: str | None = None
    group: str | None = None
    ended: tuple[bool, ...] | None = None  # per completion; None: all ended (each encoded with its EOS)

    def ended_flags(self) -> tuple[bool, ...]:
        return self.ended if self.ended is not None else (True,) * len(self.completions)


# ------------------------------------------------------------------------------------- readers

SHOWN = 60  # characters of a bad value an error message quotes


def shown(value) -> str:
    """``repr(value)``, cut to a length an error line can carry."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 5] + " ...'"


def _decode(raw: bytes, path: Path, where) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, where, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None


def read_rows(path: str | Path) -> Iterator[tuple[str | int, dict]]:
    """Yield ``(where, row)`` from a JSONL, JSON or Parquet file, or a directory holding a Hugging
    Face dataset saved with ``save_to_disk``; ``where`` locates the row for errors.

    UTF-8 only (a byte-order mark at the start is allowed), LF or CRLF line ends, blank lines are
    not rows. Anything else that is not a JSON object per row is a :class:`DataError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _dataset_rows(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, "file", f"not a readable Parquet file: {str(e).splitlines()[0][:200]}") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i + 1}", row
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(path, line, f"not UTF-8 text: byte 0x{raw[e.start]:02x}") from None
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise DataError(path, 1, f"a .json data file must hold a list of objects, not a {type(data).__name__}")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(path, f"record {i + 1}", f"expected an object, got {type(row).__name__}")
            yield f"record {i + 1}", row
    else:  # JSONL
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, lineno)
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    cut = "" if raw.endswith(b"\n") else " (the last line has no line end: is the file cut short?)"
                    raise DataError(path, lineno, f"invalid JSON: {e.msg} at column {e.colno}{cut}") from None
                if not isinstance(row, dict):
                    raise DataError(path, lineno, f"expected a JSON object, got {type(row).__name__}")
                yield lineno, row


def _dataset_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a ``datasets.Dataset`` saved with ``save_to_disk`` (a ``DatasetDict``: its "train" split)."""
    try:
        import datasets
    except ImportError:
        raise DataError(path, "directory", "a directory is read as a Hugging Face dataset: `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        raise DataError(path, "directory", f"not a dataset saved with save_to_disk ({str(e).splitlines()[0][:160]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(path, "directory", f"a DatasetDict without a 'train' split: name one, e.g. {path / next(iter(ds))}")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"row {i + 1}", row


def _text(row: dict, key: str, path, where, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(path, where, f"missing field {key!r} (fields present: {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, where, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataError(path, where, f"field {key!r} is empty")
    return value


ROLES = ("system", "user", "assistant")


def _messages(value, path, where, field: str = "messages") -> list[dict]:
    """A checked list of ``{"role", "content"}`` messages (TRL's conversational format)."""
    if not isinstance(value, list) or not value:
        raise DataError(path, where, f"{field!r} must be a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(path, where, f"{field}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(path, where, f"{field}[{i}] has unknown role {shown(m['role'])} (roles: {', '.join(ROLES)})")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _builtin_template(messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The ``Human: ... Assistant:`` rendering (the same as ``models.CHAT_TEMPLATE``)."""
    parts = []
    for i, m in enumerate(messages):
        if m["role"] == "user":
            parts.append(("\n\n" if i else "") + "Human: " + m["content"])
        elif m["role"] == "assistant":
            parts.append(ASSISTANT_MARK + " " + m["content"])
        else:  # a system message, rendered as it is
            parts.append(m["content"])
    return "".join(parts) + (ASSISTANT_MARK if add_generation_prompt else "")


def _render(messages: Sequence[dict], chat, add_generation_prompt: bool) -> str:
    """``messages`` as text: by ``chat``'s chat template when it has one (a tokenizer), else :func:`_builtin_template`."""
    if chat is not None and getattr(chat, "chat_template", None):
        return chat.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return _builtin_template(messages, add_generation_prompt)


def render_messages(prompt: Sequence[dict], completion: Sequence[dict], chat=None, path="<messages>", where="?") -> SFTExample:
    """Prompt messages and completion messages as prompt text and completion text.

    Rendered by ``chat``'s chat template when it has one (a tokenizer), else in the ``Human: ...
    Assistant:`` format: the prompt with the generation prompt, the completion as what the whole
    conversation adds to it (TRL's convention). A trailing EOS is left out: encoding appends it.
    """
    if not prompt or not completion:
        raise DataError(path, where, "a conversation needs prompt messages and completion messages")
    head, whole = _render(prompt, chat, add_generation_prompt=True), _render([*prompt, *completion], chat, add_generation_prompt=False)
    if not whole.startswith(head):
        raise DataError(path, where, "the chat template renders the prompt differently alone and in the conversation: cannot split it")
    tail = whole[len(head) :]
    eos = getattr(chat, "eos_token", None)
    if eos and tail.endswith(eos):
        tail = tail[: -len(eos)]
    return SFTExample(head, tail)


def render_conversation(messages: Sequence[dict], path="<messages>", where="?", chat=None) -> SFTExample:
    """``[{"role", "content"}, ...]`` ending in an assistant turn as prompt + completion: everything
    before the last turn is the prompt, the last turn the completion (:func:`render_messages`)."""
    messages = _messages(messages, path, where)
    if messages[-1]["role"] != "assistant":
        raise DataError(path, where, "the last message must be the assistant's (it is the completion)")
    return render_messages(messages[:-1], messages[-1:], chat, path, where)


def split_transcript(text: str, path="<transcript>", where="?") -> tuple[str, str]:
    """Split an HH-RLHF transcript at its last ``\\n\\nAssistant:`` into (prompt, completion)."""
    cut = text.rfind(ASSISTANT_MARK)
    if cut < 0:
        raise DataError(path, where, "transcript has no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT_MARK)
    return text[:cut], text[cut:]


def load_sft(path: str | Path, chat=None) -> list[SFTExample]:
    """SFT rows (TRL's formats): ``{"prompt", "completion"}`` as strings or as message lists, or
    ``{"messages": [...]}``; messages are rendered with ``chat``'s template (:func:`render_messages`)."""
    out = []
    for where, row in read_rows(path):
        if "messages" in row:
            out.append(render_conversation(row["messages"], path, where, chat))
        elif isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list):
            prompt, completion = (_messages(row.get(k), path, where, k) for k in ("prompt", "completion"))
            out.append(render_messages(prompt, completion, chat, path, where))
        elif "prompt" in row or "completion" in row:
            out.append(SFTExample(_text(row, "prompt", path, where, allow_empty=True), _text(row, "completion", path, where)))
        else:
            raise DataError(path, where, f"expected 'prompt' and 'completion', or 'messages' (fields present: {sorted(row)})")
    _nonempty(out, path)
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
    chosen, rejected = _messages(row["chosen"], path, where, "chosen"), _messages(row["rejected"], path, where, "rejected")
    if "prompt" in row:
        prompt = _messages(row["prompt"], path, where, "prompt")
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
            prompt = _text(row, "prompt", path, where)
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
            chosen, rejected = _text(row, "chosen", path, where, allow_empty=True), _text(row, "rejected", path, where, allow_empty=True)
            if "prompt" in row:
                prompt = _text(row, "prompt", path, where)
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
    _nonempty(out, path)
    return out


def load_prompts(path: str | Path, chat=None) -> list[str]:
    """Prompt rows: ``{"prompt"}``, a string or a message list (rendered with the generation prompt);
    other fields are ignored, so SFT or comparison files work too."""
    out = []
    for where, row in read_rows(path):
        if isinstance(row.get("prompt"), list):
            out.append(_render(_messages(row["prompt"], path, where, "prompt"), chat, add_generation_prompt=True))
        else:
            out.append(_text(row, "prompt", path, where))
    _nonempty(out, path)
    return out


def load_texts(path: str | Path) -> list[str]:
    """Pretraining rows: ``{"text"}``."""
    out = [_text(row, "text", path, where) for where, row in read_rows(path)]
    _nonempty(out, path)
    return out


def _nonempty(rows: list, path) -> None:
    if not rows:
        raise DataError(path, 1, "the file holds no rows")


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` atomically: a temp file of this process's, made
    durable, renamed into place, so a crash (``kill -9`` included) leaves the old file or the new
    one, never half of one. Every file preftune writes in one go comes through here (a checkpoint
    or a saved model is a directory, published whole by one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    faults.point("write")
    tmp.replace(path)


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`write_atomic`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    """Write rows as JSONL atomically (:func:`write_atomic`)."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ------------------------------------------------------------------------ tokenise and collate


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + completion; ``n_prompt`` ids belong to the prompt."""

    input_ids: tuple[int, ...]
    n_prompt: int
    truncated: bool = False


def encode(tokenizer, prompt: str, completion: str, max_length: int, max_prompt_length: int | None = None, add_eos: bool = True) -> Encoded:
    """Tokenise prompt and completion separately and join them (policy in the module doc)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    max_prompt = max_length - 1 if max_prompt_length is None else min(max_prompt_length, max_length - 1)
    truncated = False
    if len(prompt_ids) + len(completion_ids) > max_length:
        truncated = True
        if len(prompt_ids) > max_prompt:  # cut from the left, keeping what the tokenizer puts first (a BOS)
            head = tokenizer("", add_special_tokens=True)["input_ids"] if prompt_ids else []
            head = head if prompt_ids[: len(head)] == head and len(head) < max_prompt else []
            prompt_ids = head + prompt_ids[len(prompt_ids) - max_prompt + len(head) :]
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return Encoded(tuple(prompt_ids) + tuple(completion_ids), len(prompt_ids), truncated)


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """A pretraining document: EOS as a separator in front (so the first token is predicted), all
    tokens carry loss, EOS at the end."""
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(tuple(ids[:max_length]), 1, len(ids) > max_length)


@dataclass
class Batch:
    """A padded batch. Masks are boolean; True means "counts"."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    completion_mask: torch.Tensor  # (B, T) bool, True on completion tokens (the ones with loss)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


def collate(examples: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad to the longest example, on the right (training) or the left (generation)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    completion = torch.zeros((B, T), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        start = 0 if padding_side == "right" else T - n
        input_ids[i, start : start + n] = torch.tensor(e.input_ids)
        attention[i, start : start + n] = True
        completion[i, start + e.n_prompt : start + n] = True
    return Batch(input_ids, attention, completion)


def batch_count(n_items: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`shuffled_batches` makes of ``n_items``."""
    return n_items // batch_size if drop_last else -(-n_items // batch_size)


def shuffled_batches(items: Sequence, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[list]:
    """Deterministic shuffled batches for one epoch: the order depends only on (seed, epoch)."""
    order = list(range(len(items)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    return [[items[j] for j in order[i : i + batch_size]] for i in range(0, stop, batch_size)]
