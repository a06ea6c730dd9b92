"""``preftune``: argument parsing and dispatch only. Flags are generated from the config
dataclasses, so ``--help`` shows each field's one-line documentation."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .config import PretrainConfig, SFTConfig


def _flags(default: Any, prefix: str = "", seen: set[str] | None = None) -> list[tuple[str, str, Any, Any]]:
    """(path, dest, field, value) of every leaf field; nested dataclasses are flattened, and a name
    already taken by an earlier field gets its group's name in front (``--gen-seed`` next to ``--seed``)."""
    seen = set() if seen is None else seen
    out = []
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _flags(value, f"{path}.", seen)
            continue
        dest = f.name if f.name not in seen else path.replace(".", "_")
        if dest in seen:
            raise AssertionError(f"flag --{dest} defined twice")
        seen.add(dest)
        out.append((path, dest, f, value))
    return out


def _add_fields(parser: argparse.ArgumentParser, default: Any) -> None:
    groups: dict[str, Any] = {}
    for path, dest, f, value in _flags(default):
        group = path.rpartition(".")[0]
        target = parser if not group else groups.setdefault(group, parser.add_argument_group(group))
        flag = "--" + dest.replace("_", "-")
        help_ = f.metadata.get("help", "") + (f" (default: {value})" if value not in ("", ()) else "")
        if f.metadata.get("positional"):
            target.add_argument(dest, nargs="?", default=value, help=help_)
        elif isinstance(value, bool):
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=value, help=f.metadata.get("help"))
        elif isinstance(value, tuple):
            target.add_argument(flag, dest=dest, nargs="+", action="extend", default=[], help=help_)
        else:
            target.add_argument(flag, dest=dest, type=type(value), default=value, choices=f.metadata.get("choices"), help=help_)


def _build(default: Any, ns: argparse.Namespace) -> Any:
    dests = {path: dest for path, dest, _, _ in _flags(default)}

    def build(obj: Any, prefix: str) -> Any:
        kwargs = {}
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                kwargs[f.name] = build(value, f"{path}.")
            else:
                got = getattr(ns, dests[path])
                kwargs[f.name] = tuple(got) if isinstance(value, tuple) else got
        return type(obj)(**kwargs)

    return build(default, "")


def _commands() -> dict[str, tuple[str, Any, Any]]:
    from . import direct, experiments, preferences, report, rl, stages, world

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
        "rl": ("RLHF against a reward model with a KL leash: raft, reinforce, rloo, ppo", rl.RLConfig(), rl.rl),
        "best-of-n": ("sample n, keep the best by reward (KL log n - (n-1)/n)", rl.BestOfNCommand(), rl.best_of_n),
        "eval": ("gold reward, length, diversity of policies on the lists world", stages.EvalCommand(), stages.evaluate),
        "demo": (
            "the whole pipeline and every experiment on the built-in world, with report.html",
            experiments.DemoConfig(),
            experiments.demo,
        ),
        "experiment": ("run experiments from a config file (configs/*.yaml)", experiments.ExperimentCommand(), experiments.experiment),
        "report": ("re-render report.html and its figures from a run's results.json", report.ReportCommand(), report.report),
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
        _add_fields(p, default)
    label_parser = sub.add_parser("label", help="collect human preferences: serve | export | stats")
    label_sub = label_parser.add_subparsers(dest="label_command", required=True, metavar="SUBCOMMAND")
    label_commands = _label_commands()
    for name, (help_, default, _) in label_commands.items():
        _add_fields(label_sub.add_parser(name, help=help_, description=help_), default)
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
