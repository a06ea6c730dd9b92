"""Who may label: the annotators' tokens (``--annotators``), required off localhost."""

from __future__ import annotations

from ..data import DataError, read_rows

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_annotators(path: str) -> dict[str, str]:
    """``{name: token}`` from a JSONL file of ``{'name', 'token'}`` rows (tokens of 16+ characters)."""
    tokens = {}
    for where, row in read_rows(path):
        name, token = row.get("name"), row.get("token")
        if not isinstance(name, str) or not name or not isinstance(token, str) or len(token) < 16:
            raise DataError(path, where, "expected {'name': non-empty string, 'token': string of 16+ characters}")
        tokens[name] = token
    return tokens


def annotator_tokens(host: str, annotators: str) -> dict[str, str] | None:
    """The tokens to check (None: open, on localhost only); serving anywhere else without them is refused."""
    tokens = read_annotators(annotators) if annotators else None
    if host not in LOCAL_HOSTS and tokens is None:
        raise ValueError(f"refusing to bind {host}: off localhost every annotator needs a token (--annotators)")
    return tokens
