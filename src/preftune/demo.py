"""``preftune demo``: the pipeline end to end on the built-in world, on a laptop CPU.

Stages whose outputs exist and whose resolved config is unchanged are reused, so a second run
(or a run after an interruption) only does what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .config import GenerateConfig, PretrainConfig, SFTConfig, TokenConfig, TrainConfig, doc, to_dict
from .stages import EvalCommand, evaluate, pretrain, sft
from .world import WorldConfig, write_world


@dataclass(frozen=True)
class DemoConfig:
    out: str = doc("runs/demo", "directory for data, models, results.json")
    quick: bool = doc(False, "a much smaller run (about a minute) for smoke tests")
    seed: int = doc(0, "seed for the world, training and sampling")


def _fresh(out: Path, cfg) -> bool:
    """True if ``out`` holds a finished model made from exactly ``cfg``."""
    saved = out / "run_config.json"
    if not (out / "config.json").exists() or not saved.exists():
        return False
    old = json.loads(saved.read_text())
    return all(old.get(k) == v for k, v in to_dict(cfg).items())


def demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    t0 = time.perf_counter()
    world = WorldConfig(
        out=str(out / "data"), seed=cfg.seed, **({"corpus": 3000, "sft": 800, "heldout": 100} if cfg.quick else {"sft": 10000})
    )
    files = write_world(world)
    timings = {}

    tokens = TokenConfig(max_length=64, max_prompt_length=48)
    base_cfg = PretrainConfig(
        data=str(files["corpus"]),
        tokens=tokens,
        train=TrainConfig(out=str(out / "base"), epochs=1.0 if cfg.quick else 2.0, batch_size=64, lr=3e-3, seed=cfg.seed, save_every=100),
    )
    sft_cfg = SFTConfig(
        model=str(out / "base"),
        data=str(files["sft"]),
        tokens=tokens,
        # Many passes over many demonstrations: a tiny model needs them to come close to the
        # demonstrator (fewer leave it 0.1 below; measured with `preftune eval`).
        train=TrainConfig(out=str(out / "sft"), epochs=2.0 if cfg.quick else 8.0, batch_size=64, lr=2e-3, seed=cfg.seed, save_every=200),
    )
    for name, stage, stage_cfg in (("pretrain", pretrain, base_cfg), ("sft", sft, sft_cfg)):
        s = time.perf_counter()
        if _fresh(Path(stage_cfg.train.out), stage_cfg):
            print(f"{name}: reusing {stage_cfg.train.out} (same config)")
        else:
            stage(replace(stage_cfg, train=replace(stage_cfg.train, resume=True)))
        timings[name] = round(time.perf_counter() - s, 1)

    s = time.perf_counter()
    print(f"\nevaluating on {files['heldout']} (held-out prompt templates)")
    report = evaluate(
        EvalCommand(model=(str(out / "base"), str(out / "sft")), prompts=str(files["heldout"]), gen=GenerateConfig(seed=cfg.seed))
    )
    timings["eval"] = round(time.perf_counter() - s, 1)
    results = {"config": to_dict(cfg), "eval": report, "seconds": {**timings, "total": round(time.perf_counter() - t0, 1)}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}  ({results['seconds']['total']} s)")
    return results
