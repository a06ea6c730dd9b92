"""``preftune demo``: the pipeline end to end on the built-in world, on a laptop CPU.

Stages whose outputs exist and whose resolved config is unchanged are reused, so a second run
(or a run after an interruption) only does what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .config import GenerateConfig, PretrainConfig, SFTConfig, TokenConfig, TrainConfig, doc, to_dict
from .direct import DPOConfig, dpo
from .preferences import AnnotateCommand, SampleCommand, annotate, sample_sets
from .stages import EvalCommand, evaluate, pretrain, sft
from .world import WorldConfig, write_world


@dataclass(frozen=True)
class DemoConfig:
    out: str = doc("runs/demo", "directory for data, models, results.json")
    quick: bool = doc(False, "a much smaller run (about a minute) for smoke tests")
    seed: int = doc(0, "seed for the world, training and sampling")


def _digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).is_file() else (Path(p) / "model.safetensors").read_bytes())
    return h.hexdigest()


def _made_from(out: Path, cfg, digest: str) -> bool:
    """True if the run in ``out`` was started from exactly ``cfg`` and inputs with this digest."""
    saved, stamp = out / "run_config.json", out / "inputs.sha256"
    if not saved.exists() or not stamp.exists() or stamp.read_text() != digest:
        return False
    old = json.loads(saved.read_text())
    return all(old.get(k) == v for k, v in to_dict(cfg).items())


def _run_stage(name: str, stage, cfg, inputs: list[str], timings: dict) -> None:
    """Run a training stage unless its output is fresh. A run interrupted with the same config and
    inputs resumes from its checkpoint; anything else in its directory is stale and is removed."""
    s = time.perf_counter()
    out = Path(cfg.train.out)
    digest = _digest(inputs)
    resumable = _made_from(out, cfg, digest)
    if resumable and (out / "config.json").exists():  # finished: save_model moves config.json in last
        print(f"{name}: reusing {out} (same config and inputs)")
    else:
        if not resumable:
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").unlink(missing_ok=True)  # not fresh until the stage finishes again
        (out / "inputs.sha256").write_text(digest)
        stage(replace(cfg, train=replace(cfg.train, resume=resumable)))
    timings[name] = round(time.perf_counter() - s, 1)


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
    _run_stage("pretrain", pretrain, base_cfg, [str(files["corpus"])], timings)
    _run_stage("sft", sft, sft_cfg, [str(files["sft"]), str(out / "base")], timings)

    # Comparisons of pi_SFT's own samples, labelled by the simulated (majority) annotators.
    s = time.perf_counter()
    gen = GenerateConfig(seed=cfg.seed)
    samples = sample_sets(
        SampleCommand(model=str(out / "sft"), prompts=str(files["prompts"]), out=str(out / "data/samples.jsonl"), k=4, gen=gen)
    )
    comparisons = annotate(AnnotateCommand(samples=str(samples), out=str(out / "data/comparisons.jsonl"), simulated=True, seed=cfg.seed))
    timings["sample+annotate"] = round(time.perf_counter() - s, 1)
    for loss in ("dpo", "unlikelihood"):  # the same data and budget for both
        train_cfg = replace(DPOConfig().train, out=str(out / loss), epochs=1.0 if cfg.quick else 3.0, seed=cfg.seed)
        _run_stage(
            loss,
            dpo,
            DPOConfig(model=str(out / "sft"), data=str(comparisons), loss=loss, train=train_cfg),
            [str(comparisons), str(out / "sft")],
            timings,
        )

    s = time.perf_counter()
    print(f"\nevaluating on {files['heldout']} (held-out prompt templates; reference pi_SFT)")
    policies = tuple(str(out / name) for name in ("base", "sft", "dpo", "unlikelihood"))
    report = evaluate(EvalCommand(model=policies, reference=str(out / "sft"), prompts=str(files["heldout"]), gen=gen))
    timings["eval"] = round(time.perf_counter() - s, 1)
    results = {"config": to_dict(cfg), "eval": report, "seconds": {**timings, "total": round(time.perf_counter() - t0, 1)}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}  ({results['seconds']['total']} s)")
    return results
