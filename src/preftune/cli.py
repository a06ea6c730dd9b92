"""``preftune``: argument parsing and dispatch only.

Flags are generated from the config dataclasses (:mod:`preftune.config`), so ``--help`` shows each
field's one-line documentation. A field's flag is its path: ``--model``, and for a field of a nested
group always the group's name in front, ``--train.lr``, ``--gen.seed``, ``--tokens.max-length``
(the convention of tyro, which cleanrl uses), so a flag's name alone says what it sets. Booleans
come in pairs (``--train.progress`` / ``--train.no-progress``). ``--config run_config.json``
replays a run: its values become the defaults, and flags given with it override them.

Why hand-written and not tyro or ``HfArgumentParser``: ``HfArgumentParser`` does not nest
dataclasses; tyro does, but would be one more dependency whose help text comes from docstrings and
type annotations rather than the one-line ``doc(...)`` each field already carries. This generator is
about a hundred lines, and ``tests/test_cli.py`` pins the table of every flag it makes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator
from typing import Any

from . import distributed
from .commands import COMMANDS, LABEL_COMMANDS, resolve
from .config import load_config


def fields_of(cfg: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(path, field, value) of every leaf field; nested groups give ``group.field`` paths."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from fields_of(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def flag(path: str, negate: bool = False) -> str:
    group, _, name = path.rpartition(".")
    name = ("no-" if negate else "") + name.replace("_", "-")
    return f"--{group}.{name}" if group else f"--{name}"


def _add_fields(parser: argparse.ArgumentParser, cfg: Any) -> None:
    groups: dict[str, Any] = {}
    for path, f, value in fields_of(cfg):
        group = path.rpartition(".")[0]
        target = parser if not group else groups.setdefault(group, parser.add_argument_group(f"--{group}.*"))
        text = f.metadata.get("help", "").replace("%", "%%") + (" (required)" if f.metadata.get("required") else "")
        shown = f"{text} (default: {value})" if value not in ("", ()) and not isinstance(value, bool) else text
        metavar = "STR" if isinstance(value, tuple) else type(value).__name__.upper()  # list flags arrive as strings
        if f.metadata.get("positional"):
            target.add_argument(path, nargs="?", default=value, metavar=path.upper(), help=shown)
        elif isinstance(value, bool):
            target.add_argument(flag(path), dest=path, action="store_true", default=value, help=f"{text} (default)" if value else text)
            target.add_argument(flag(path, negate=True), dest=path, action="store_false", help="(default)" if not value else "turn it off")
        elif isinstance(value, tuple):
            target.add_argument(flag(path), dest=path, nargs=f.metadata.get("nargs", "+"), default=list(value), metavar=metavar, help=shown)
        else:
            choices = f.metadata.get("choices")
            target.add_argument(
                flag(path), dest=path, type=type(value), default=value, choices=choices, metavar=None if choices else metavar, help=shown
            )


def _build(default: Any, ns: argparse.Namespace) -> Any:
    def build(obj: Any, prefix: str) -> Any:
        kwargs = {}
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                kwargs[f.name] = build(value, f"{path}.")
            else:
                got = getattr(ns, path)
                kwargs[f.name] = tuple(got) if isinstance(value, tuple) else got
        return type(obj)(**kwargs)

    return build(default, "")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, type, str]]]:
    parser = argparse.ArgumentParser(prog="preftune", description="Align language models with human preferences.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    table: dict[str, tuple[argparse.ArgumentParser, type, str]] = {}

    def add(subparsers, name: str, key: str, help_: str, config_cls: type, target: str) -> None:
        p = subparsers.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="FILE", help="replay a run: its run_config.json gives the defaults; other flags override it")
        _add_fields(p, config_cls())
        table[key] = (p, config_cls, target)

    for name, (help_, config_cls, target) in COMMANDS.items():
        add(sub, name, name, help_, config_cls, target)
    label_sub = sub.add_parser("label", help="collect human preferences: serve | export | stats").add_subparsers(
        dest="label_command", required=True, metavar="SUBCOMMAND"
    )
    for name, (help_, config_cls, target) in LABEL_COMMANDS.items():
        add(label_sub, name, f"label {name}", help_, config_cls, target)
    return parser, table


def parse(argv: list[str] | None = None) -> tuple[str, Any, str]:
    """(command name, its config, "module:function") for a command line; exits on bad usage."""
    parser, table = _parser()
    ns = parser.parse_args(argv)
    name = ns.command if ns.command != "label" else f"label {ns.label_command}"
    sub, config_cls, target = table[name]
    default = config_cls()
    if ns.config:
        try:
            default = load_config(config_cls, ns.config, name)
        except (FileNotFoundError, ValueError) as e:
            sub.error(str(e))
        sub.set_defaults(**{path: list(v) if isinstance(v, tuple) else v for path, _, v in fields_of(default)})
        ns = parser.parse_args(argv)
    cfg = _build(default, ns)
    for path, f, value in fields_of(cfg):
        if f.metadata.get("required") and value in ("", ()):
            sub.error(f"{path.upper() if f.metadata.get('positional') else flag(path)} is required")
    return name, cfg, target


def flag_table() -> str:
    """Every command's flags, one per line: ``command  flag  type  default`` (pinned by a test)."""
    lines = []
    for name, (_, config_cls, _) in [*COMMANDS.items(), *((f"label {k}", v) for k, v in LABEL_COMMANDS.items())]:
        for path, f, value in fields_of(config_cls()):
            shown = path.upper() if f.metadata.get("positional") else flag(path)
            lines.append(
                f"{name:<14} {shown:<28} {type(value).__name__:<6} {value!r}" + ("  required" if f.metadata.get("required") else "")
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    name, cfg, target = parse(argv)
    if not distributed.is_main():  # under torchrun one process talks; the others' errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    try:
        resolve(target)(cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"preftune {name}: error: {e}", file=sys.stderr)
        return 2
    distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
