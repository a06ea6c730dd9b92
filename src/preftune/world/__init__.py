"""The built-in "lists" world (see :mod:`preftune.world.lists`)."""

from pathlib import Path

from ..atomic import write_jsonl
from ..config import WorldConfig
from . import lists


def write_world(cfg: WorldConfig) -> dict[str, Path]:
    """Write the world's data files; returns their paths by name."""
    out = Path(cfg.out)
    files = {
        "corpus": (out / "corpus.jsonl", lists.corpus(cfg.corpus, cfg.seed, cfg.list_facts)),
        "sft": (out / "sft.jsonl", lists.sft_data(cfg.sft, cfg.seed)),
        "prompts": (out / "prompts.jsonl", lists.prompts(cfg.prompts, cfg.seed, "train")),
        "heldout": (out / "heldout.jsonl", lists.prompts(cfg.heldout, cfg.seed, "heldout")),
    }
    for path, rows in files.values():
        write_jsonl(path, rows)
    return {name: path for name, (path, _) in files.items()}
