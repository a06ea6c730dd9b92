"""Training throughput of preftune on the shared reference workload, next to TRL's recorded figures.

The workload (tokenizer, 3.7M-parameter GPT-2, data) is built by the workload's own
``make_assets.py`` (``--workload``, default ``../shared/bench-workload``). Settings as the TRL
scripts: fp32, 2 threads, batch 16, 40 steps, max length 128, first 2 steps untimed.

    python bench/bench_train.py [--steps 40] [--only sft,reward,dpo]

Prints a table and, last, one JSON line. TRL's numbers are those recorded in the workload's
README on this machine; run TRL beside it (the workload's README says how) for a same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from preftune.commands.dpo import to_pairs
from preftune.config import DPOConfig, TokenConfig, TrainConfig
from preftune.data import Comparison, encode, load_comparisons, load_sft
from preftune.loop import train
from preftune.methods.dpo import DirectPreference, PairData, preference_loss, reference_logps
from preftune.methods.reward import RewardTraining, to_units
from preftune.methods.sft import SFT
from preftune.models import build_reward_model, load_policy

TRL = {"sft": 41.6, "reward": 32.5, "dpo": 17.0}  # examples (or pairs) per second, workload README
WARMUP = 2


def assets(workload: Path, out: Path) -> Path:
    if not (out / "gpt2-tiny" / "config.json").exists():
        subprocess.run([sys.executable, str(workload / "make_assets.py"), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def timed(model, method, steps: int, batch: int, lr: float) -> float:
    """Examples per second over steps WARMUP+1..steps (optimiser steps, loop overhead included)."""
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=tmp, max_steps=steps, batch_size=batch, lr=lr, save_every=0, log_every=steps, progress=False, warmup=0.0)
        train(model, method, cfg, on_step=lambda s: stamps.__setitem__(s, time.perf_counter()))
    return (steps - WARMUP) * batch / (stamps[steps] - stamps[WARMUP])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench-workload"))
    ap.add_argument("--assets", default=os.path.join(tempfile.gettempdir(), "preftune-bench-assets"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", default="sft,reward,dpo")
    a = ap.parse_args()
    torch.set_num_threads(2)
    root = assets(Path(a.workload), Path(a.assets))
    model_dir = root / "gpt2-tiny"
    # The assets' tokenizer lives beside the model; load_policy wants both in one place.
    for f in (root / "tok").iterdir():
        if not (model_dir / f.name).exists():
            (model_dir / f.name).write_bytes(f.read_bytes())
    results = {}
    only = a.only.split(",")
    if "sft" in only:
        model, tok = load_policy(model_dir)
        data = [encode(tok, r.prompt, r.completion, 128) for r in load_sft(root / "sft.jsonl")]
        results["sft"] = timed(model, SFT(data, tok.pad_token_id, a.batch, 0), a.steps, a.batch, 2e-5)
    if "reward" in only:
        rm, tok = build_reward_model(model_dir)
        recs = [r for r in load_comparisons(root / "pref.jsonl") if isinstance(r, Comparison)]
        units = to_units(recs, tok, 128, 64, use_strength=False)
        results["reward"] = timed(rm, RewardTraining(units, [], tok.pad_token_id, a.batch, 0), a.steps, a.batch, 1e-4)
    if "dpo" in only:
        model, tok = load_policy(model_dir)
        pairs = to_pairs(load_comparisons(root / "pref.jsonl")[: a.steps * a.batch], tok, TokenConfig(max_length=96, max_prompt_length=64))
        t0 = time.perf_counter()
        pairs = reference_logps(model, pairs, tok.pad_token_id, False)  # once, before training (counted below)
        ref_s = time.perf_counter() - t0
        pps = timed(
            model,
            DirectPreference(
                PairData(pairs, [], tok.pad_token_id, a.batch, 0), preference_loss(DPOConfig(model="", data="", beta=0.1)), 0.1
            ),
            a.steps,
            a.batch,
            1e-6,
        )
        # charge the reference pass to the timed steps, pro rata
        results["dpo"] = 1.0 / (1.0 / pps + ref_s / len(pairs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'bench':<8} {'preftune /s':>12} {'TRL /s':>8} {'ratio':>6}")
    for k, v in results.items():
        print(f"{k:<8} {v:>12.1f} {TRL[k]:>8.1f} {v / TRL[k]:>6.2f}")
    print(f"peak RSS of this process (all benches): {peak:.0f} MiB")
    print(
        json.dumps(
            {"examples_per_s": results, "trl_recorded": TRL, "ratio": {k: v / TRL[k] for k, v in results.items()}, "peak_rss_mib": peak}
        )
    )


if __name__ == "__main__":
    main()
