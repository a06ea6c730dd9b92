"""How a config field is declared (its one-line doc, choices, ``required``), and how a config is
saved (``run_config.json``) and overridden (an experiment file, ``--config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import field
from pathlib import Path
from typing import Any

from ..atomic import write_atomic


def doc(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its one-line documentation (and ``choices``, ``required``, ``positional``, ``nargs``)."""
    return field(default=default, metadata={"help": help, **kw})


def device_field() -> Any:
    """``--device``, on every command that runs a model."""
    return doc("auto", "where models run: auto (cuda, else mps, else cpu), cpu, cuda or mps", choices=("auto", "cpu", "cuda", "mps"))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path, **extra: Any) -> None:
    write_atomic(path, json.dumps({**to_dict(cfg), **extra}, indent=2, sort_keys=True) + "\n")


REPLAY_KEYS = ("command", "preftune")  # what the commands save next to a config's fields


def load_config(config_cls: type, path: str | Path, command: str) -> Any:
    """The config saved in ``path`` (a run's run_config.json, :func:`save_config`) as a ``config_cls``;
    refused with where and what if it is not one, or is another command's."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such config file")
    try:
        saved = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{file}: expected a JSON object of {config_cls.__name__} fields")
    if saved.get("command", command) != command:
        raise ValueError(f"{file}: a config of `preftune {saved['command']}`, not of `preftune {command}`")
    return override(config_cls(), {k: v for k, v in saved.items() if k not in REPLAY_KEYS}, str(file))


def override(cfg: Any, values: dict, where: str = "config") -> Any:
    """``cfg`` with the fields in ``values`` (nested dicts for nested groups) replaced; an unknown
    field or a value of the wrong type is a ``ValueError`` naming ``where`` and the field."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of {type(cfg).__name__} fields, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for name, value in values.items():
        if name not in fields:
            raise ValueError(f"{where}: {type(cfg).__name__} has no field {name!r} (fields: {', '.join(fields)})")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            changes[name] = override(current, value, f"{where}.{name}")
        else:
            changes[name] = _coerce(current, value, f"{where}.{name}")
    return dataclasses.replace(cfg, **changes)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(current):
        raise ValueError(f"{where}: expected a {type(current).__name__}, got {value!r}")
    return value
