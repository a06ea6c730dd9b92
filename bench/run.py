"""preftune beside TRL on the shared workload, in one run: each bench in its own process, TRL's and
preftune's alternately, ``--passes`` times; one table (medians of the passes) and one JSON line.

    python bench/run.py [--passes 2] [--only sft,reward,dpo,rloo,ppo,grpo,decode,decode_135m] [--no-anchor] [--out bench/last.json]
    python bench/run.py --only 135m --out bench/last_135m.json    the real-scale benches (make bench-135m)
    python bench/run.py --render bench/last.json      the table of a saved run (the README's Speed section)

TRL runs from the environments ``make bench-anchor`` builds in ``.anchor/`` (trl 1.16; trl 1.12 for
PPO, the last release with it), with the workload's own scripts (``--workload``). Without them
(``--no-anchor``) preftune runs alone and the ratios are missing. Throughput: examples (sft), pairs
(reward, dpo: the reference pass charged), rollouts (rl) per second; peak RSS of each process.

The real-scale benches (``--only 135m``: sft_135m, reward_135m, dpo_135m and their ``_bf16`` twins)
train SmolLM2-135M's shape (random weights, ``bench_train.py --model 135m``) on the same data, batch 8,
10 steps of which the first 2 and the last are untimed, fp32 or bf16 autocast; TRL runs its own workload scripts on
the same model and precision through ``bench/anchor_trl.py``.

The decode benches (``bench_decode.py``) need no TRL: preftune's sampler and transformers' ``generate``
run in one process on the same prompts (the workload's GPT-2, 32 × 48 tokens; SmolLM2-135M's shape
with random weights, 32 × 32), fp32 and bf16, beside the model's matmul-bound rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK_GFLOPS = 196.0  # this machine's fp32 matmul peak, 2 threads (torch, 2048²; the workload's README)
BENCHES = ("sft", "reward", "dpo", "rloo", "ppo", "grpo", "decode", "decode_135m")
SCALE_135M = tuple(f"{b}_135m{p}" for b in ("sft", "reward", "dpo") for p in ("", "_bf16"))  # --only 135m
STEPS_135M = ["--steps", "10", "--batch", "8"]  # a step of 8 pairs takes seconds at this size
DECODE = {"decode": "gpt2", "decode_135m": "135m"}  # bench: bench_decode.py --model
UNIT = {"sft": "examples/s", "reward": "pairs/s", "dpo": "pairs/s", "rloo": "rollouts/s", "ppo": "rollouts/s", "grpo": "rollouts/s"}
UNIT.update({b: "tokens/s" for b in DECODE})
UNIT.update({b: UNIT[b.split("_")[0]] for b in SCALE_135M})
TRL_SCRIPT = {
    "sft": ("venv", ["bench_sft.py"]),
    "reward": ("venv", ["bench_reward.py"]),
    "dpo": ("venv", ["bench_dpo.py"]),
    "rloo": ("venv", ["bench_rloo.py"]),
    "ppo": ("venv-ppo", ["bench_ppo.py"]),
    "grpo": ("venv", ["bench_rloo.py", "--algo", "grpo"]),
}


def last_json(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def run(cmd: list[str], env: dict, cwd: Path | None = None) -> dict:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip().splitlines()[-1:]}")
    return last_json(res.stdout)


def decode(bench: str, assets: Path, env: dict) -> dict:
    """One bench_decode.py run: preftune's and generate's tokens/s, fp32 and bf16, and the matmul bound."""
    return run([sys.executable, str(HERE / "bench_decode.py"), "--model", DECODE[bench], "--assets", str(assets)], env)


def scale(bench: str) -> tuple[str, str]:
    """A real-scale bench's trainer and precision: ``dpo_135m_bf16`` -> ("dpo", "bf16")."""
    return bench.split("_")[0], "bf16" if bench.endswith("_bf16") else "fp32"


def preftune(bench: str, assets: Path, env: dict) -> tuple[float, float]:
    if bench in SCALE_135M:
        name, precision = scale(bench)
        cmd = [sys.executable, str(HERE / "bench_train.py"), "--model", "135m", "--only", name, "--precision", precision, *STEPS_135M]
        line = run([*cmd, "--assets", str(assets)], env)
        return line["examples_per_s"][precision][name], line["peak_rss_mib"], line["model_gflops_per_s"][precision][name]
    if bench in ("sft", "reward", "dpo"):
        line = run([sys.executable, str(HERE / "bench_train.py"), "--only", bench, "--assets", str(assets)], env)
        return line["examples_per_s"]["fp32"][bench], line["peak_rss_mib"], line["model_gflops_per_s"]["fp32"][bench]
    line = run([sys.executable, str(HERE / "bench_rl.py"), "--algo", bench, "--assets", str(assets)], env)
    return line["rollouts_per_s"], line["peak_rss_mib"], line["model_gflops_per_s"]


def trl(bench: str, anchor: Path, workload: Path, assets: Path, env: dict) -> tuple[float, float]:
    env = {**env, "ANCHOR_HOME": str(anchor), "ANCHOR_ASSETS": str(assets)}
    env.pop("ANCHOR_RESULTS", None)
    if bench in SCALE_135M:  # the workload's own script, on the shape model and in the bench's precision
        name, precision = scale(bench)
        venv, args = TRL_SCRIPT[name]
        wrap = [
            str(HERE / "anchor_trl.py"),
            "--workload",
            str(workload),
            "--model-dir",
            str(assets / "smollm2-135m"),
            "--precision",
            precision,
        ]
        line = run([str(anchor / venv / "bin/python"), *wrap, *args, *STEPS_135M], env, cwd=anchor)
        return line["examples_per_s"], line["peak_rss_mib"]
    venv, args = TRL_SCRIPT[bench]
    line = run([str(anchor / venv / "bin/python"), *[str(workload / args[0]), *args[1:]]], env, cwd=anchor)
    return line.get("examples_per_s", line.get("rollouts_per_s")), line["peak_rss_mib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--no-anchor", action="store_true", help="preftune alone (no TRL environment): no ratios")
    ap.add_argument("--anchor", default=str(HERE.parent / ".anchor"), help="where `make bench-anchor` built TRL's environments")
    ap.add_argument("--workload", default=str(HERE.parents[1] / "shared" / "bench-workload"))
    ap.add_argument("--assets", default="/tmp/preftune-bench-assets")
    ap.add_argument("--out", default=str(HERE / "last.json"), help="write the JSON line here too")
    ap.add_argument("--render", metavar="FILE", help="print the table of a saved run and exit")
    a = ap.parse_args()
    if a.render:
        print(table(json.loads(Path(a.render).read_text())))
        return
    only = [x for b in a.only.split(",") if b for x in (SCALE_135M if b == "135m" else (b,))]
    unknown = set(only) - set(BENCHES) - set(SCALE_135M)
    if unknown:
        sys.exit(f"bench/run.py: error: unknown bench(es) {sorted(unknown)}; choose from {BENCHES + SCALE_135M} or 135m")
    anchor, workload, assets = (
        Path(a.anchor).resolve(),
        Path(a.workload).resolve(),
        Path(a.assets).resolve(),
    )  # TRL runs in the anchor folder
    with_trl = not a.no_anchor
    if with_trl and not (anchor / ".installed").exists():
        sys.exit(f"bench/run.py: error: no TRL environment in {anchor}: run `make bench-anchor`, or pass --no-anchor")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    # The workload's assets, with the tokenizer copied beside the model (preftune loads them together),
    # and SmolLM2-135M's shape with random weights when a real-scale bench runs.
    shape = ["--model", "135m"] if set(only) & set(SCALE_135M) else []
    subprocess.run(
        [sys.executable, str(HERE / "bench_train.py"), "--only", "", *shape, "--assets", str(assets)],
        check=True,
        env=env,
        capture_output=True,
    )
    runs: dict[str, dict[str, list]] = {b: {"preftune": [], "trl": [], "decode": []} for b in only}
    for p in range(a.passes):
        for b in only:
            if b in DECODE:  # its anchor, transformers' generate, runs in the same process
                line = decode(b, assets, env)
                runs[b]["decode"].append(line)
                runs[b]["preftune"].append((line["fp32"]["preftune_tokens_per_s"], line["peak_rss_mib"], None))
                runs[b]["trl"].append((line["fp32"]["generate_tokens_per_s"], line["peak_rss_mib"]))  # the same process
                print(
                    f"pass {p + 1} {b:<7} preftune {line['fp32']['preftune_tokens_per_s']:8.1f} generate {line['fp32']['generate_tokens_per_s']:8.1f} {UNIT[b]}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if with_trl:
                runs[b]["trl"].append(trl(b, anchor, workload, assets, env))
                print(f"pass {p + 1} {b:<7} TRL      {runs[b]['trl'][-1][0]:8.2f} {UNIT[b]}", file=sys.stderr, flush=True)
            runs[b]["preftune"].append(preftune(b, assets, env))
            print(f"pass {p + 1} {b:<7} preftune {runs[b]['preftune'][-1][0]:8.2f} {UNIT[b]}", file=sys.stderr, flush=True)

    def med(xs, i):
        return statistics.median(x[i] for x in xs) if xs else None

    rows = {}
    for b in only:
        r = runs[b]
        ratios = [pt[0] / tr[0] for pt, tr in zip(r["preftune"], r["trl"]) if tr[0]]
        rows[b] = {
            "unit": UNIT[b],
            "preftune": med(r["preftune"], 0),
            "trl": med(r["trl"], 0),
            "ratio": statistics.median(ratios) if ratios else None,
            "preftune_rss_mib": med(r["preftune"], 1),
            "trl_rss_mib": med(r["trl"], 1),
            "preftune_peak_fraction": None if b in DECODE else med(r["preftune"], 2) / PEAK_GFLOPS,
            "passes": {"preftune": [x[0] for x in r["preftune"]], "trl": [x[0] for x in r["trl"]]},
        }
        if b in DECODE:  # the anchor is generate; the same run's bf16 and matmul bound beside it
            rows[b]["anchor"] = "transformers generate"
            rows[b]["decode"] = {
                prec: {k: statistics.median(line[prec][k] for line in r["decode"]) for k in r["decode"][0][prec]}
                for prec in ("fp32", "bf16")
            }
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip(),
        "passes": a.passes,
        "trl": with_trl,
    }
    result = {**meta, "benches": rows}
    print(table(result))
    line = json.dumps(result)
    if a.out:
        Path(a.out).write_text(line + "\n")
    print(line)


def table(result: dict) -> str:
    """The side-by-side table of one run's JSON."""
    lines = [
        f"preftune vs TRL, same run: {result['date']}, {result['machine']}, commit {result['commit']}, "
        f"median of {result['passes']} passes, 2 threads, fp32"
        + (
            " (a bench named _bf16: bf16 autocast over fp32 weights, both sides)"
            if any(b.endswith("_bf16") for b in result["benches"])
            else ""
        ),
    ]
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    trainers = {b: r for b, r in result["benches"].items() if "decode" not in r}
    if trainers:
        lines += [
            "",
            "| bench | unit | preftune | TRL | ratio | preftune peak RSS MiB | TRL peak RSS MiB | preftune % of fp32 peak |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
    for b, r in trainers.items():
        lines.append(
            f"| {b} | {r['unit']} | {r['preftune']:.2f} | {f(r['trl'], '.2f')} | {f(r['ratio'], '.2f')} "
            f"| {r['preftune_rss_mib']:.0f} | {f(r['trl_rss_mib'], '.0f')} | {f(r.get('preftune_peak_fraction'), '.0%')} |"
        )
    if trainers and not result["trl"]:
        lines.append("no TRL environment (--no-anchor): the ratios are missing")
    decodes = {b: r for b, r in result["benches"].items() if "decode" in r}
    if decodes:
        lines += [
            "",
            "Decoding (sampling at temperature 1, every row to the end), preftune's sampler against transformers' `generate`, same process:",
            "",
            "| bench | weights | preftune tokens/s | generate tokens/s | ratio | matmul-bound tokens/s | preftune % of bound | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for b, r in decodes.items():
            for prec, d in r["decode"].items():
                lines.append(
                    f"| {b} | {prec} | {d['preftune_tokens_per_s']:.0f} | {d['generate_tokens_per_s']:.0f} | {d['ratio']:.2f} "
                    f"| {d['matmul_bound_tokens_per_s']:.0f} | {d['fraction_of_bound']:.0%} | {r['preftune_rss_mib']:.0f} |"
                )
    lines.append(
        f"\n% of fp32 peak: model FLOP/s over {PEAK_GFLOPS:.0f} GFLOP/s (this CPU, 2 threads) — 6 × parameters × real tokens per"
        " second trained, 2 × parameters per token of a forward pass (DPO's reference; RL's generation, reference, reward and value passes);"
        " every sequence's tokens count, so a prompt computed once for several sequences counts once per sequence."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
