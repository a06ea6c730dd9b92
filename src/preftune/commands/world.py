"""``preftune world``: the built-in world's data files."""

from __future__ import annotations

from pathlib import Path

from ..config import WorldConfig
from ..world import write_world


def world(cfg: WorldConfig) -> dict[str, Path]:
    files = write_world(cfg)
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return files
