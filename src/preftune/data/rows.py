"""Rows of a data file, with row-level errors: JSONL, JSON (a list of objects), Parquet, or a
Hugging Face dataset directory (``save_to_disk``). A malformed row raises :class:`DataError`
naming the file, the line (JSONL), record number (JSON) or row (Parquet), and what is wrong;
nothing is skipped silently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


class DataError(ValueError):
    """A malformed input row: ``file:line: problem``."""

    def __init__(self, path: str | Path, where: str | int, problem: str):
        super().__init__(f"{path}:{where}: {problem}")


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


def text_field(row: dict, key: str, path, where, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(path, where, f"missing field {key!r} (fields present: {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, where, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataError(path, where, f"field {key!r} is empty")
    return value


def nonempty(rows: list, path) -> None:
    if not rows:
        raise DataError(path, 1, "the file holds no rows")
