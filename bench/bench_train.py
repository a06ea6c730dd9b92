"""Training throughput of preftune on the shared reference workload, next to TRL's recorded figures.

The workload (tokenizer, 3.7M-parameter GPT-2, data) is built by the workload's own
``make_assets.py`` (``--workload``, default ``../shared/bench-workload``). Settings as the TRL
scripts: fp32, 2 threads, batch 16, 40 steps, max length 128, first 2 steps untimed (and the last: see ``timed``).

    python bench/bench_train.py [--steps 40] [--only sft,reward,dpo] [--precision fp32,bf16]
    python bench/bench_train.py --model 135m --steps 10 --batch 8     SmolLM2-135M's shape, random weights

``--model 135m`` trains SmolLM2-135M's architecture (``configs/shapes/smollm2-135m.json``: 30 layers,
576 wide, a 49,152-token vocabulary, tied embeddings) from a random init (seed 0) on the same data
and tokenizer: speed needs the shape, not the weights. It is written once to ``ASSETS/smollm2-135m``,
where ``bench/anchor_trl.py`` points TRL's scripts too.

Dropout as the commands default to: kept in SFT, off in the reward model and DPO (their
reference log-probs have none). ``--precision fp32,bf16`` runs each bench in both precisions
(bf16: autocast over fp32 weights) and adds their ratio. Prints a table and, last, one JSON line. TRL's numbers are those recorded in the workload's
README on this machine; run TRL beside it (the workload's README says how) for a same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from preftune.commands.dpo import to_pairs
from preftune.config import DPOConfig, TokenConfig, TrainConfig
from preftune.data import Comparison, encode, load_comparisons, load_sft
from preftune.loop import train
from preftune.methods.dpo import DirectPreference, PairData, preference_loss, reference_logps
from preftune.methods.reward import RewardTraining, to_units
from preftune.methods.sft import SFT
from preftune.models import build_reward_model, load_policy, n_params

TRL = {"sft": 41.6, "reward": 32.5, "dpo": 17.0}  # examples (or pairs) per second, workload README
WARMUP = 2


def assets(workload: Path, out: Path) -> Path:
    if not (out / "gpt2-tiny" / "config.json").exists():
        subprocess.run([sys.executable, str(workload / "make_assets.py"), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


SHAPE = Path(__file__).resolve().parent.parent / "configs" / "shapes" / "smollm2-135m.json"


def shape_model(root: Path) -> Path:
    """SmolLM2-135M's shape with random weights (seed 0) and the workload's tokenizer, in ``root/smollm2-135m``."""
    out = root / "smollm2-135m"
    if (out / "model.safetensors").exists():
        return out
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(root / "tok")
    shape = {k: v for k, v in json.loads(SHAPE.read_text()).items() if k != "model_type"}
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**shape, **ids}))
    tmp = root / "smollm2-135m.tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # whole or absent: a killed build is redone
    return out


def timed(model, method, steps: int, batch: int, lr: float, precision: str, dropout: bool) -> float:
    """Examples per second over steps WARMUP+1..steps-1 (optimiser steps, loop overhead included). The
    last step is left out: the loop ends it by writing the run's final checkpoint (weights and AdamW
    states: seconds at 135M parameters), which TRL's scripts do not (``save_strategy="no"``)."""
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=tmp, max_steps=steps, batch_size=batch, lr=lr, save_every=0, log_every=steps, progress=False, warmup=0.0)
        cfg = replace(cfg, precision=precision, dropout=dropout)
        train(model, method, cfg, on_step=lambda s: stamps.__setitem__(s, time.perf_counter()))
    return (steps - 1 - WARMUP) * batch / (stamps[steps - 1] - stamps[WARMUP])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench-workload"))
    ap.add_argument("--assets", default=os.path.join(tempfile.gettempdir(), "preftune-bench-assets"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--only", default="sft,reward,dpo")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or fp32,bf16 (both, with their ratio)")
    ap.add_argument("--model", choices=("gpt2", "135m"), default="gpt2", help="the workload's GPT-2, or SmolLM2-135M's shape")
    a = ap.parse_args()
    torch.set_num_threads(2)
    root = assets(Path(a.workload), Path(a.assets))
    model_dir = root / "gpt2-tiny"
    # The assets' tokenizer lives beside the model; load_policy wants both in one place.
    for f in (root / "tok").iterdir():
        if not (model_dir / f.name).exists():
            (model_dir / f.name).write_bytes(f.read_bytes())
    if a.model == "135m":
        model_dir = shape_model(root)
    results, gflops, only, precisions = {}, {}, a.only.split(","), a.precision.split(",")
    for precision in precisions:
        results[precision], gflops[precision] = run_benches(root, model_dir, only, a.steps, a.batch, precision)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    both = len(precisions) == 2
    trl = TRL if a.model == "gpt2" else {}  # recorded for the workload's GPT-2 only: run.py runs TRL beside it
    print(f"{'bench':<8} {'precision':<9} {'preftune /s':>12} {'TRL /s':>8} {'ratio':>6}" + (f" {'bf16/fp32':>10}" if both else ""))
    for p, rows in results.items():
        for k, v in rows.items():
            extra = f" {results['bf16'][k] / results['fp32'][k]:>10.2f}" if both and p == "bf16" else ""
            recorded = f"{trl[k]:>8.1f} {v / trl[k]:>6.2f}" if k in trl else f"{'–':>8} {'–':>6}"
            print(f"{k:<8} {p:<9} {v:>12.1f} {recorded}{extra}")
    print(f"peak RSS of this process (all benches): {peak:.0f} MiB")
    line = {"model": a.model, "examples_per_s": results, "model_gflops_per_s": gflops, "trl_recorded_fp32": trl, "peak_rss_mib": peak}
    if both:
        line["bf16_over_fp32"] = {k: results["bf16"][k] / results["fp32"][k] for k in results["fp32"]}
    print(json.dumps(line))


def run_benches(root: Path, model_dir: Path, only: list[str], steps: int, batch: int, precision: str) -> tuple[dict, dict]:
    """Examples (or pairs) per second per bench, and the model FLOP/s (GFLOP/s) they mean: 6 × parameters
    × real tokens per example for training, 2 × parameters × tokens for DPO's reference pass."""
    results, flops = {}, {}
    if "sft" in only:
        model, tok = load_policy(model_dir)
        data = [encode(tok, r.prompt, r.completion, 128) for r in load_sft(root / "sft.jsonl")]
        results["sft"] = timed(model, SFT(data, tok.pad_token_id, batch, 0), steps, batch, 2e-5, precision, dropout=True)
        flops["sft"] = 6 * n_params(model) * statistics.fmean(len(e.input_ids) for e in data)
    if "reward" in only:
        rm, tok = build_reward_model(model_dir)
        recs = [r for r in load_comparisons(root / "pref.jsonl") if isinstance(r, Comparison)]
        units = to_units(recs, tok, 128, 64, use_strength=False)
        results["reward"] = timed(rm, RewardTraining(units, [], tok.pad_token_id, batch, 0), steps, batch, 1e-4, precision, dropout=False)
        flops["reward"] = 6 * n_params(rm) * _pair_tokens(tok, recs, 128)
    if "dpo" in only:
        model, tok = load_policy(model_dir)
        recs = load_comparisons(root / "pref.jsonl")[: steps * batch]
        pairs = to_pairs(recs, tok, TokenConfig(max_length=96, max_prompt_length=64))
        flops["dpo"] = (6 + 2) * n_params(model) * _pair_tokens(tok, recs, 96)  # training, and the reference pass
        t0 = time.perf_counter()
        pairs = reference_logps(model, pairs, tok.pad_token_id, False)  # once, before training (counted below)
        ref_s = time.perf_counter() - t0
        method = DirectPreference(
            PairData(pairs, [], tok.pad_token_id, batch, 0), preference_loss(DPOConfig(model="", data="", beta=0.1)), 0.1
        )
        pps = timed(model, method, steps, batch, 1e-6, precision, dropout=False)
        results["dpo"] = 1.0 / (1.0 / pps + ref_s / len(pairs))  # the reference pass charged to the timed steps, pro rata
    return results, {k: flops[k] * results[k] / 1e9 for k in results}


def _pair_tokens(tok, recs, max_length: int) -> float:
    """Mean real tokens of a pair: chosen and rejected, each with its prompt."""
    return statistics.fmean(
        len(encode(tok, r.prompt, r.chosen, max_length, 64).input_ids) + len(encode(tok, r.prompt, r.rejected, max_length, 64).input_ids)
        for r in recs
    )


if __name__ == "__main__":
    main()
