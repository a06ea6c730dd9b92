"""Conversations as text: message lists (TRL's conversational format) rendered by a tokenizer's
chat template, or by the built-in ``Human: ... Assistant:`` one; HH-RLHF transcripts split at their
last Assistant turn."""

from __future__ import annotations

from collections.abc import Sequence

from .records import SFTExample
from .rows import DataError, shown

ASSISTANT_MARK = "\n\nAssistant:"


ROLES = ("system", "user", "assistant")


def check_messages(value, path, where, field: str = "messages") -> list[dict]:
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


def render_chat(messages: Sequence[dict], chat, add_generation_prompt: bool) -> str:
    """``messages`` as text: by ``chat``'s chat template when it has one (a tokenizer), else :func:`_builtin_template`."""
    if chat is not None and getattr(chat, "chat_template", None):
        return chat.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return _builtin_template(messages, add_generation_prompt)


def render_messages(prompt: Sequence[dict], completion: Sequence[dict], chat=None, path="<messages>", where="?") -> SFTExample:
    """Prompt messages and completion messages as prompt text and completion text.

    Rendered by ``chat``'s chat template when it has one (a tokenizer), else in the ``Human: ...
    Assistant:`` format: the prompt with the generation prompt, the completion as what the whole
    conversation adds to it (TRL's convention). A trailing EOS, and whatever the template writes
    after it, is left out: encoding appends the EOS, where generation stops.
    """
    if not prompt or not completion:
        raise DataError(path, where, "a conversation needs prompt messages and completion messages")
    head, whole = (
        render_chat(prompt, chat, add_generation_prompt=True),
        render_chat([*prompt, *completion], chat, add_generation_prompt=False),
    )
    if not whole.startswith(head):
        raise DataError(path, where, "the chat template renders the prompt differently alone and in the conversation: cannot split it")
    tail = whole[len(head) :]
    eos = getattr(chat, "eos_token", None)
    if eos and tail.rstrip().endswith(eos):  # ChatML ends a turn with "<|im_end|>\n": the turn ends at the EOS
        tail = tail.rstrip()[: -len(eos)]
    return SFTExample(head, tail)


def render_conversation(messages: Sequence[dict], path="<messages>", where="?", chat=None) -> SFTExample:
    """``[{"role", "content"}, ...]`` ending in an assistant turn as prompt + completion: everything
    before the last turn is the prompt, the last turn the completion (:func:`render_messages`)."""
    messages = check_messages(messages, path, where)
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
