"""Run every preftune command once on a tiny budget and write a digest of everything it produced.

A refactor that claims "behaviour unchanged" shows it with this script: run it before and after,
then compare the digests. Saved weights are hashed byte for byte; JSON and JSONL outputs
(metrics.jsonl, iterations.jsonl, samples, comparisons, scores, ``--json`` printouts) are hashed
after the keys that measure time are dropped; text printouts are hashed with timings masked.

    python scripts/every_command.py OUT_DIR             # writes OUT_DIR/digest.txt
    python scripts/every_command.py --compare A/digest.txt B/digest.txt

It runs ``python -m preftune`` of the interpreter running it, so ``PYTHONPATH=OTHER/src`` checks
another checkout with the same environment. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIME_KEY = re.compile(r"(^time/|_s$|^seconds$|^date$|^commit$|per_s$)")
TIME_TEXT = re.compile(r"\d+(\.\d+)?\s*(s|ms|it/s|s/it|tokens/s)\b|\d+:\d\d(:\d\d)?")

TRAIN = ["--train.no-progress", "--train.save-every", "5", "--train.log-every", "1"]


def steps(d: str) -> list[tuple[str, list[str], str | None]]:
    """(name, argv, file its stdout is kept in) of every command, in pipeline order."""
    data, gen = f"{d}/data", ["--gen.max-new-tokens", "16", "--gen.batch-size", "32"]
    rl = ["--model", f"{d}/sft", "--reward", f"{d}/rm", "--prompts", f"{data}/prompts.jsonl", "--iterations", "3"]
    rl += ["--prompts-per-iter", "8", "--k", "4", *gen, *TRAIN]
    dpo = ["--model", f"{d}/sft", "--data", f"{d}/pairs.jsonl", "--train.max-steps", "6", "--train.batch-size", "8", *TRAIN]
    out = [
        ("world", ["world", "--out", data, "--corpus", "1500", "--sft", "300", "--prompts", "120", "--heldout", "40"], None),
        (
            "pretrain",
            ["pretrain", "--data", f"{data}/corpus.jsonl", "--train.out", f"{d}/base", "--train.max-steps", "12"]
            + ["--tokens.max-length", "64", *TRAIN],
            None,
        ),
        (
            "sft",
            ["sft", "--model", f"{d}/base", "--data", f"{data}/sft.jsonl", "--train.out", f"{d}/sft", "--train.max-steps", "10"]
            + ["--tokens.max-length", "64", *TRAIN],
            None,
        ),
        (
            "sft-lora",
            ["sft", "--model", f"{d}/base", "--data", f"{data}/sft.jsonl", "--train.out", f"{d}/sft-lora", "--lora"]
            + ["--train.max-steps", "4", "--tokens.max-length", "64", *TRAIN],
            None,
        ),
        (
            "generate",
            ["generate", "--model", f"{d}/sft", "--prompts", f"{data}/heldout.jsonl", "--limit", "6", "--n", "2", *gen]
            + ["--out", f"{d}/generated.jsonl"],
            None,
        ),
        (
            "sample",
            ["sample", "--model", f"{d}/sft", "--prompts", f"{data}/prompts.jsonl", "--limit", "48", "--k", "4", *gen]
            + ["--out", f"{d}/samples.jsonl"],
            None,
        ),
        ("annotate-pairs", ["annotate", "--simulated", "--samples", f"{d}/samples.jsonl", "--out", f"{d}/pairs.jsonl"], None),
        (
            "annotate-rankings",
            ["annotate", "--simulated", "--samples", f"{d}/samples.jsonl", "--format", "rankings"]
            + ["--minority", "0.3", "--out", f"{d}/rankings.jsonl"],
            None,
        ),
        (
            "reward",
            ["reward", "--model", f"{d}/sft", "--data", f"{d}/rankings.jsonl", "--train.out", f"{d}/rm"]
            + ["--train.max-steps", "8", "--train.eval-every", "4", "--eval-prompts", f"{data}/heldout.jsonl", *TRAIN],
            "reward.txt",
        ),
        ("score", ["score", "--reward", f"{d}/rm", "--data", f"{data}/sft.jsonl", "--out", f"{d}/scored.jsonl"], None),
        ("dpo", ["dpo", *dpo, "--train.out", f"{d}/dpo", "--train.eval-every", "3"], None),
        ("ipo", ["dpo", *dpo, "--train.out", f"{d}/ipo", "--loss", "ipo", "--beta", "0.1"], None),
        ("unlikelihood", ["dpo", *dpo, "--train.out", f"{d}/unlikelihood", "--loss", "unlikelihood"], None),
        ("simpo", ["dpo", *dpo, "--train.out", f"{d}/simpo", "--loss", "simpo", "--beta", "2.0"], None),
        ("dpo-lora", ["dpo", *dpo, "--train.out", f"{d}/dpo-lora", "--lora"], None),
        ("raft", ["rl", *rl, "--algo", "raft", "--train.out", f"{d}/raft"], "raft.txt"),
        ("reinforce", ["rl", *rl, "--algo", "reinforce", "--train.out", f"{d}/reinforce"], "reinforce.txt"),
        ("rloo", ["rl", *rl, "--algo", "rloo", "--train.out", f"{d}/rloo", "--kl-estimator", "k3"], "rloo.txt"),
        ("grpo", ["rl", *rl, "--algo", "grpo", "--train.out", f"{d}/grpo", "--beta", "0.0", "--no-track-kl"], "grpo.txt"),
        (
            "ppo-ptx",
            ["rl", *rl, "--algo", "ppo", "--train.out", f"{d}/ppo", "--target-kl", "1.0", "--whiten-rewards"]
            + ["--ptx-data", f"{data}/corpus.jsonl", "--ptx-coef", "0.1"],
            "ppo.txt",
        ),
        ("rl-gold", ["rl", *rl, "--algo", "rloo", "--train.out", f"{d}/rloo-gold", "--reward", "gold"], "rloo-gold.txt"),
        (
            "best-of-n",
            ["best-of-n", "--model", f"{d}/sft", "--reward", f"{d}/rm", "--prompts", f"{data}/heldout.jsonl"]
            + ["--n", "4", "--limit", "8", *gen, "--out", f"{d}/best.jsonl", "--json"],
            "best-of-n.json",
        ),
        (
            "eval",
            ["eval", "--model", f"{d}/sft", f"{d}/dpo", f"{d}/rloo", "--reference", f"{d}/sft", "--prompts"]
            + [f"{data}/heldout.jsonl", "--limit", "16", *gen, "--json"],
            "eval.json",
        ),
        ("memory", ["memory", "--model", f"{d}/sft", "--json"], "memory.json"),
        ("report-markdown", ["report", str(REPO / "results/demo.json"), "--markdown"], "report.md"),
        ("plot", ["plot", f"{d}/rloo", "--out", f"{d}/curves.png"], None),
    ]
    return out


def drop_time(value):
    if isinstance(value, dict):
        return {k: drop_time(v) for k, v in value.items() if not TIME_KEY.search(k)}
    if isinstance(value, list):
        return [drop_time(v) for v in value]
    return value


def digest(path: Path, out: Path) -> str:
    """A file's SHA-256 after timings are dropped (JSON, JSONL) or masked (text), and the run's own
    directory is written ``OUT`` (two runs in two directories compare equal)."""
    raw = path.read_bytes()
    if path.suffix != ".safetensors":
        raw = raw.replace(str(out).encode(), b"OUT")
    if path.suffix == ".json":
        try:
            raw = json.dumps(drop_time(json.loads(raw)), sort_keys=True).encode()
        except json.JSONDecodeError:
            pass
    elif path.suffix == ".jsonl":
        rows = [json.dumps(drop_time(json.loads(line)), sort_keys=True) for line in raw.decode().splitlines() if line.strip()]
        raw = "\n".join(rows).encode()
    elif path.suffix in (".txt", ".md"):
        raw = TIME_TEXT.sub("T", raw.decode()).encode()
    return hashlib.sha256(raw).hexdigest()


KEPT = (".safetensors", ".json", ".jsonl", ".txt", ".md")  # not curves.png: it draws the timings too
SKIPPED = ("checkpoints", ".cache", "tokenizer", "train.log", ".lock")


def run(out: Path) -> Path:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFTUNE_CACHE": str(out / ".cache"), "PYTHONHASHSEED": "0"}
    for name, argv, keep in steps(str(out)):
        print(f"[{name}] preftune {' '.join(argv)}", flush=True)
        res = subprocess.run([sys.executable, "-m", "preftune", *argv], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{name} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        if keep:
            (out / "stdout").mkdir(exist_ok=True)
            (out / "stdout" / keep).write_text(res.stdout)
    lines = []
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out)
        if f.is_file() and f.suffix in KEPT and not any(part in SKIPPED or part.startswith(".") for part in rel.parts):
            lines.append(f"{digest(f, out)}  {rel}")
    path = out / "digest.txt"
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} files digested into {path}")
    return path


def compare(a: Path, b: Path) -> int:
    left = dict(reversed(line.split("  ", 1)) for line in a.read_text().splitlines())
    right = dict(reversed(line.split("  ", 1)) for line in b.read_text().splitlines())
    differ = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
    for k in differ:
        print(f"differs: {k} ({'missing in ' + str(b) if k not in right else 'missing in ' + str(a) if k not in left else 'content'})")
    models = sum(k.endswith(".safetensors") for k in left)
    print(f"{len(left)} files compared ({models} weight files): {len(differ)} differ")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="directory to run every command in")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two digest.txt files")
    args = ap.parse_args()
    if args.compare:
        return compare(*map(Path, args.compare))
    if not args.out:
        ap.error("give OUT_DIR or --compare A B")
    run(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
