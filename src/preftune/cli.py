"""``preftune``: argument parsing and dispatch only. Flags are generated from the config
dataclasses, so ``--help`` shows each field's one-line documentation."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .config import PretrainConfig, SFTConfig


def _add_fields(parser: argparse.ArgumentParser, default: Any, seen: set[str]) -> None:
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            _add_fields(parser.add_argument_group(type(value).__name__), value, seen)
            continue
        if f.name in seen:
            raise AssertionError(f"flag --{f.name} defined twice")
        seen.add(f.name)
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + (f" (default: {value})" if value not in ("", ()) else "")
        if isinstance(value, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=value, help=f.metadata.get("help"))
        elif isinstance(value, tuple):
            parser.add_argument(flag, dest=f.name, nargs="+", action="extend", default=[], help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=type(value), default=value, choices=f.metadata.get("choices"), help=help_)


def _build(default: Any, ns: argparse.Namespace) -> Any:
    kwargs = {}
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            kwargs[f.name] = _build(value, ns)
        else:
            got = getattr(ns, f.name)
            kwargs[f.name] = tuple(got) if isinstance(value, tuple) else got
    return type(default)(**kwargs)


def _commands() -> dict[str, tuple[str, Any, Any]]:
    from . import demo, direct, preferences, stages, world

    return {
        "world": ("write the built-in world's data files (corpus, demonstrations, prompts)", world.WorldConfig(), world.write_world),
        "pretrain": ("train a tokenizer and a tiny base LM from scratch on a text corpus", PretrainConfig(), stages.pretrain),
        "sft": ("supervised fine-tuning on demonstrations (completion-only loss; --lora)", SFTConfig(), stages.sft),
        "generate": ("sample completions for prompts", stages.GenerateCommand(), stages.generate),
        "sample": ("K completions per prompt, ready for labelling", preferences.SampleCommand(), preferences.sample_sets),
        "annotate": (
            "label sampled sets (--simulated: the world's Bradley–Terry annotators)",
            preferences.AnnotateCommand(),
            preferences.annotate,
        ),
        "reward": (
            "train a Bradley–Terry reward model from pi_SFT, centre it, evaluate it",
            preferences.RewardConfig(),
            preferences.reward,
        ),
        "score": ("score (prompt, completion) rows with a reward model", preferences.ScoreCommand(), preferences.score),
        "dpo": ("direct preference optimisation: dpo, cdpo, ipo, hinge, soft, unlikelihood", direct.DPOConfig(), direct.dpo),
        "eval": ("gold reward, length, diversity of policies on the lists world", stages.EvalCommand(), stages.evaluate),
        "demo": ("the whole pipeline on the built-in world, with a report", demo.DemoConfig(), demo.demo),
    }


def _label_commands() -> dict[str, tuple[str, Any, Any]]:
    from . import label

    return {
        "serve": ("the labelling web page (8-point A/B scale)", label.ServeCommand(), label.serve),
        "export": ("labels as comparison rows for `reward` and `dpo`", label.ExportCommand(), label.export),
        "stats": ("inter-annotator agreement and position bias", label.StatsCommand(), label.show_stats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preftune", description="Align language models with human preferences.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = _commands()
    for name, (help_, default, _) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _add_fields(p, default, set())
    label_parser = sub.add_parser("label", help="collect human preferences: serve | export | stats")
    label_sub = label_parser.add_subparsers(dest="label_command", required=True, metavar="SUBCOMMAND")
    label_commands = _label_commands()
    for name, (help_, default, _) in label_commands.items():
        _add_fields(label_sub.add_parser(name, help=help_, description=help_), default, set())
    ns = parser.parse_args(argv)
    if ns.command == "label":
        _, default, run = label_commands[ns.label_command]
    else:
        _, default, run = commands[ns.command]
    cfg = _build(default, ns)
    for f in dataclasses.fields(cfg):  # required inputs are the empty-string path fields named here
        if f.name in ("data", "model", "prompts", "samples", "reward") and getattr(cfg, f.name) in ("", ()):
            parser.error(f"{ns.command}: --{f.name} is required")
    try:
        run(cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"preftune {ns.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
