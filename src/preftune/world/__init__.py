"""The built-in "lists" world (see :mod:`preftune.world.lists`)."""

from pathlib import Path

from ..atomic import write_jsonl
from ..config import WorldConfig
from . import lists


def as_messages(row: dict) -> dict:
    """A prompt or demonstration row in a chat model's language: the request as a user message, the
    answer as an assistant message (TRL's conversational prompt-completion format). The answer's
    leading space belongs to the ``Assistant:`` format; a chat turn starts without it."""
    request = row["prompt"].rsplit(lists.HUMAN, 1)[-1].removesuffix(lists.ASSISTANT)
    out = {"prompt": [{"role": "user", "content": request}]}
    if "completion" in row:
        out["completion"] = [{"role": "assistant", "content": row["completion"].lstrip(" ")}]
    return out


def write_world(cfg: WorldConfig) -> dict[str, Path]:
    """Write the world's data files; returns their paths by name. With ``cfg.chat`` the prompts and
    demonstrations are message lists (:func:`as_messages`) with the same requests and answers."""
    out = Path(cfg.out)
    shape = as_messages if cfg.chat else (lambda row: row)
    files = {
        "corpus": (out / "corpus.jsonl", lists.corpus(cfg.corpus, cfg.seed, cfg.list_facts)),
        "sft": (out / "sft.jsonl", [shape(r) for r in lists.sft_data(cfg.sft, cfg.seed)]),
        "prompts": (out / "prompts.jsonl", [shape(r) for r in lists.prompts(cfg.prompts, cfg.seed, "train")]),
        "heldout": (out / "heldout.jsonl", [shape(r) for r in lists.prompts(cfg.heldout, cfg.seed, "heldout")]),
    }
    for path, rows in files.values():
        write_jsonl(path, rows)
    return {name: path for name, (path, _) in files.items()}
