"""The built-in "lists" world (see :mod:`preftune.world.lists`)."""

from dataclasses import dataclass
from pathlib import Path

from ..config import doc
from ..data import write_jsonl
from . import lists


@dataclass(frozen=True)
class WorldConfig:
    out: str = doc("data/lists", "directory to write the world's data files into")
    seed: int = doc(0, "seed; the same seed gives the same files byte for byte")
    corpus: int = doc(20000, "pretraining documents (corpus.jsonl)")
    sft: int = doc(4000, "demonstrations by the noisy demonstrator (sft.jsonl)")
    prompts: int = doc(2000, "training prompts for sampling and RL (prompts.jsonl)")
    heldout: int = doc(500, "held-out evaluation prompts, from templates never trained on (heldout.jsonl)")


def write_world(cfg: WorldConfig) -> dict[str, Path]:
    """Write the world's data files; returns their paths by name."""
    out = Path(cfg.out)
    files = {
        "corpus": (out / "corpus.jsonl", lists.corpus(cfg.corpus, cfg.seed)),
        "sft": (out / "sft.jsonl", lists.sft_data(cfg.sft, cfg.seed)),
        "prompts": (out / "prompts.jsonl", lists.prompts(cfg.prompts, cfg.seed, "train")),
        "heldout": (out / "heldout.jsonl", lists.prompts(cfg.heldout, cfg.seed, "heldout")),
    }
    for path, rows in files.values():
        write_jsonl(path, rows)
    return {name: path for name, (path, _) in files.items()}
