"""Files written whole or not at all: a temp file, made durable, renamed into place."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from . import faults


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
