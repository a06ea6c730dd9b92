"""torchrun (gloo on this CPU): 2 processes × batch 8 end where 1 process × batch 16 ends."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.atomic import write_jsonl
from preftune.cli import main
from preftune.distributed import shard

DEVICE = os.environ.get("PREFTUNE_TEST_DEVICE", "cpu")  # scripts/gpu_check.sh sets cuda (nccl) where 2 GPUs exist
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def test_shard_cuts_a_global_batch_into_contiguous_pieces_in_order():
    batch = list(range(10))
    assert [shard(batch, r, 2) for r in range(2)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [shard(batch, r, 3) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sum((shard(batch, r, 4) for r in range(4)), []) == batch


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    assert main(["world", "--out", str(d / "w"), "--corpus", "200", "--sft", "96", "--prompts", "24", "--heldout", "8"]) == 0
    common = ["--train.max-steps", "3", "--train.batch-size", "16", "--train.no-progress", "--tokens.max-length", "48"]
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(d / "w/corpus.jsonl"),
                "--train.out",
                str(d / "base"),
                "--size",
                "micro",
                "--vocab-size",
                "300",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--model",
                str(d / "base"),
                "--prompts",
                str(d / "w/prompts.jsonl"),
                "--k",
                "4",
                "--out",
                str(d / "s.jsonl"),
                "--gen.max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    assert main(["annotate", "--simulated", "--samples", str(d / "s.jsonl"), "--out", str(d / "pairs.jsonl")]) == 0
    return d


def _run(argv: list[str], processes: int, script: str | None = None) -> subprocess.CompletedProcess:
    # Packing off: a packed batch's float rounding depends on which sequences share it, and these
    # compare batches of 16 with two of 8 to 2e-6 (packed against padded: tests/test_packing.py).
    """``preftune ARGV`` (or ``python SCRIPT ARGV``) in one process, or under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_THREADS": "1", "PREFTUNE_PACKING": "0"}
    target = [script] if script else ["-m", "preftune"]
    argv = argv if script else [*argv, "--device", DEVICE]
    cmd = [sys.executable, *target, *argv] if processes == 1 else [TORCHRUN, "--nproc-per-node", str(processes), *target, *argv]
    res = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600
    )  # a collective one process never joins hangs: fail instead
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _rl_args(base: Path, algo: str, out: Path) -> list[str]:
    return [
        "rl",
        "--model",
        str(base / "base"),
        "--reward",
        "gold",
        "--prompts",
        str(base / "w/prompts.jsonl"),
        "--algo",
        algo,
        "--prompts-per-iter",
        "4",
        "--k",
        "4",
        "--gen.max-new-tokens",
        "8",
        "--tokens.max-length",
        "48",
        "--train.no-progress",
        "--train.out",
        str(out),
    ]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
@pytest.mark.parametrize("command", ["sft", "reward", "dpo"])
def test_two_processes_of_batch_8_equal_one_process_of_batch_16(base, tmp_path, command, engine):
    data = {"sft": base / "w/sft.jsonl", "reward": base / "pairs.jsonl", "dpo": base / "pairs.jsonl"}[command]
    args = [
        command,
        "--model",
        str(base / "base"),
        "--data",
        str(data),
        "--train.max-steps",
        "3",
        "--train.no-progress",
        "--train.eval-every",
        "0",
    ]
    args += ["--tokens.max-length", "48"] + (["--no-world-eval", "--eval-data", str(data)] if command == "reward" else [])
    args += ["--eval-data", str(data)] if command == "dpo" else []
    one_dir = base / f"one-process-{command}"  # the same one-process run for both engines: made once
    if not (one_dir / "model.safetensors").exists():
        _run([*args, "--train.batch-size", "16", "--train.out", str(one_dir)], 1)
    _run([*args, "--train.batch-size", "8", "--train.out", str(tmp_path / "two"), *(["--train.fsdp"] if engine == "fsdp" else [])], 2)
    one, two = load_file(str(one_dir / "model.safetensors")), load_file(str(tmp_path / "two/model.safetensors"))
    start = load_file(str(base / "base/model.safetensors")) if command != "reward" else None
    for name in one:
        # (atol 5e-6: over 3 AdamW steps a reduction-order difference of one ulp can grow to a few 1e-6
        # on a parameter whose gradient is near zero; a wrong normalisation moves weights by ~1e-3)
        torch.testing.assert_close(two[name], one[name], atol=5e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    if start is not None:
        assert any(not torch.equal(one[k], start[k]) for k in start)  # it trained
    logs = [p.name for p in (tmp_path / "two").iterdir()]
    assert "metrics.jsonl" in logs and "run_config.json" in logs
    rows = (tmp_path / "two/metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 + (command == "dpo")  # one writer (log_every 10, 3 steps: the last step only; dpo's step 0 too)


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("algo,lora", [("rloo", ""), ("ppo", ""), ("grpo", ""), ("rloo", "lora"), ("ppo", "lora")])
def test_rl_update_of_two_processes_equals_one_process_on_one_rollout(base, tmp_path, algo, lora):
    """One rollout (4 prompts × 4 samples) from a one-process run, then the same iteration's update
    (PPO: 2 epochs, its value model too) in 1 process × 16 rows and 2 processes × 8 rows; with
    ``lora``, the policy's adapters (and PPO's value model's, with its head) are what trains."""
    _run([*_rl_args(base, algo, tmp_path / "collect"), "--iterations", "1"], 1)
    blob = torch.load(tmp_path / "collect/rollouts/iter-00000.pt", weights_only=False)
    # An untrained base's completions rarely differ in gold, so the collected advantages may all be 0
    # (nothing to update); seeded random advantages give every row a signal.
    adv = blob["targets"]["advantages"]
    blob["targets"]["advantages"] = torch.randn(adv.shape, generator=torch.Generator().manual_seed(0))
    rollout = tmp_path / "rollout.pt"
    torch.save(blob, rollout)
    script = str(Path(__file__).parent / "rl_update.py")
    _run([str(base / "base"), algo, str(rollout), str(tmp_path / "one"), "16", lora], 1, script)
    _run([str(base / "base"), algo, str(rollout), str(tmp_path / "two"), "8", lora], 2, script)
    one, two = load_file(str(tmp_path / "one/trained.safetensors")), load_file(str(tmp_path / "two/trained.safetensors"))
    start = load_file(str(base / "base/model.safetensors"))
    # Adam's step is about lr (1e-3) per element whatever the gradient's size, so where a gradient
    # is ~0 a float-rounding difference (the two shards pad to other widths) moves it by up to ~lr;
    # 2% of lr separates that from a real difference (an unsynchronised gradient moves whole tensors by ~lr).
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-5, rtol=0, msg=name)
    if lora:  # only adapters (and the value head) train: B starts at 0 and moves, every base weight stays
        assert all("lora_" in k or "modules_to_save" in k for k in one), sorted(one)[:5]
        moved = [one[k].abs().max() for k in one if "lora_B" in k]
    else:
        moved = [(one[f"policy.{k}" if algo == "ppo" else k] - start[k]).abs().max() for k in start]
    assert max(moved) > 5e-4  # it trained (Adam's first step moves by ~lr = 1e-3)


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_process_rl_run_finishes_and_rank_0_alone_writes(base, tmp_path):
    res = _run([*_rl_args(base, "rloo", tmp_path / "rl"), "--iterations", "2", "--train.batch-size", "4"], 2)
    assert res.stdout.count("rloo: 2 iterations") == 1  # one process talks
    rows = [json.loads(line) for line in (tmp_path / "rl/iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]  # two trained on, the final one measured
    assert sorted(p.name for p in (tmp_path / "rl/rollouts").iterdir()) == ["iter-00000.pt", "iter-00001.pt", "iter-00002.pt"]
    assert len(torch.load(tmp_path / "rl/rollouts/iter-00000.pt", weights_only=False)["targets"]["scores"]) == 16  # both shares
    assert json.loads((tmp_path / "rl/summary.json").read_text())["iterations"] == 2
    assert (tmp_path / "rl/model.safetensors").exists() and not list((tmp_path / "rl").glob("**/*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_rl_samples_from_its_shards_and_follows_the_ddp_run(base, tmp_path, lora):
    """``rl --train.fsdp``: each process decodes its own prompts from the policy's shards gathered
    whole once per rollout, its rows ending at their own steps (a collective per token would hang
    here), and the run is the DDP run of the same config: the same first rollout token for token,
    the same weights after the update (Adam's ~lr step on ~0 gradients bounds the rounding)."""
    args = [*_rl_args(base, "rloo", tmp_path), "--iterations", "1", "--train.batch-size", "4", "--train.lr", "1e-3"]
    args += ["--lora"] if lora else []
    for engine in ("ddp", "fsdp"):
        _run([*args, "--train.out", str(tmp_path / engine), *(["--train.fsdp"] if engine == "fsdp" else [])], 2)
    first = [torch.load(tmp_path / e / "rollouts/iter-00000.pt", weights_only=False)["targets"] for e in ("ddp", "fsdp")]
    assert torch.equal(first[0]["input_ids"], first[1]["input_ids"])
    torch.testing.assert_close(first[1]["old_logps"], first[0]["old_logps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(first[1]["ref_logps"], first[0]["ref_logps"], atol=1e-5, rtol=0)
    ended = first[0]["completion_mask"].sum(-1)
    assert len(set(ended[:8].tolist())) > 1 or len(set(ended[8:].tolist())) > 1  # rows of a process end at different steps
    ddp, fsdp = load_file(str(tmp_path / "ddp/model.safetensors")), load_file(str(tmp_path / "fsdp/model.safetensors"))
    start = load_file(str(base / "base/model.safetensors"))
    assert ddp.keys() == fsdp.keys() == start.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], atol=2e-5, rtol=0, msg=name)
    assert max((ddp[k] - start[k]).abs().max() for k in start) > 5e-4  # it trained
    rows = [json.loads(line) for line in (tmp_path / "fsdp/iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]  # the final rollout, from the weights put back whole


def _kill_resume_and_compare(args, whole: Path, cut: Path, ready, timeout: float) -> None:
    """Run ``args`` on 2 processes into ``cut``, SIGKILL torchrun and its workers once ``ready()``,
    resume, and assert the final weights equal the uninterrupted run's in ``whole``, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_THREADS": "1", "PREFTUNE_PACKING": "0"}
    cmd = [TORCHRUN, "--nproc-per-node", "2", "-m", "preftune", *args, "--train.out", str(cut), "--device", DEVICE]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, mid-run
    proc.wait()
    assert not (cut / "model.safetensors").exists()
    _run([*args, "--train.out", str(cut), "--train.resume"], 2)

    done, resumed = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert done.keys() == resumed.keys()
    for name in done:
        assert torch.equal(done[name], resumed[name]), name


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_process_run_killed_and_resumed_ends_as_the_uninterrupted_run(base, tmp_path, engine):
    args = ["sft", "--model", str(base / "base"), "--data", str(base / "w/sft.jsonl"), "--tokens.max-length", "48"]
    args += [
        "--train.max-steps",
        "40",
        "--train.save-every",
        "2",
        "--train.batch-size",
        "4",
        "--train.no-progress",
        "--train.log-every",
        "1",
    ]
    args += ["--train.fsdp"] if engine == "fsdp" else []
    _run([*args, "--train.out", str(tmp_path / "whole")], 2)

    cut = tmp_path / "cut"
    _kill_resume_and_compare(args, tmp_path / "whole", cut, lambda: (cut / "checkpoints/step-0000010").exists(), 120)
    killed_at = json.loads((cut / "checkpoints").glob("step-*").__next__().joinpath("state.json").read_text())["step"]

    def losses(run):
        return [(r["step"], r["loss/train"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(cut) == losses(tmp_path / "whole") and len(losses(cut)) == 40 and killed_at < 40


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_fsdp_rl_run_killed_and_resumed_ends_as_the_uninterrupted_run(base, tmp_path):
    """``rl --train.fsdp`` SIGKILLed after its first checkpoint resumes from it and ends at the
    uninterrupted run's weights, bit for bit: the checkpoint holds whole weights and AdamW states,
    and the rollout it was training on is read back, not sampled again."""
    args = [*_rl_args(base, "rloo", tmp_path / "unused"), "--iterations", "3", "--train.batch-size", "4", "--train.save-every", "1"]
    args += ["--train.fsdp", "--train.lr", "1e-3"]
    _run([*args, "--train.out", str(tmp_path / "whole")], 2)

    cut = tmp_path / "cut"
    _kill_resume_and_compare(args, tmp_path / "whole", cut, lambda: any((cut / "checkpoints").glob("step-*")), 300)


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_sample_score_and_eval_share_the_work_and_match_one_process(base, tmp_path):
    """Greedy decoding, so two processes must produce what one does; rank 0 writes, in input order.
    (``generate`` and ``best-of-n`` share the work through the same ``rollout.sample_shared``.)"""
    greedy = ["--gen.temperature", "0", "--gen.max-new-tokens", "8"]
    sets = ["sample", "--model", str(base / "base"), "--prompts", str(base / "w/prompts.jsonl"), "--k", "2", *greedy]
    for n in (1, 2):
        _run([*sets, "--out", str(tmp_path / f"sets{n}.jsonl")], n)
    one, two = ((tmp_path / f"sets{n}.jsonl").read_text() for n in (1, 2))
    assert one == two and len(one.splitlines()) == 24
    scored = [{"prompt": r["prompt"], "completion": c} for r in map(json.loads, one.splitlines()) for c in r["completions"]]
    write_jsonl(tmp_path / "gen1.jsonl", scored)

    rm = ["reward", "--model", str(base / "base"), "--data", str(base / "pairs.jsonl"), "--no-world-eval", "--train.no-progress"]
    assert main([*rm, "--train.max-steps", "2", "--train.batch-size", "8", "--train.out", str(tmp_path / "rm")]) == 0  # any model will do
    for n in (1, 2):
        _run(["score", "--reward", str(tmp_path / "rm"), "--data", str(tmp_path / "gen1.jsonl"), "--out", str(tmp_path / f"s{n}.jsonl")], n)
    one, two = ([json.loads(line) for line in (tmp_path / f"s{n}.jsonl").read_text().splitlines()] for n in (1, 2))
    assert [r["prompt"] for r in two] == [r["prompt"] for r in one] and len(one) == 48
    torch.testing.assert_close(torch.tensor([r["score"] for r in two]), torch.tensor([r["score"] for r in one]), atol=1e-5, rtol=1e-5)

    ev = ["eval", "--model", str(base / "base"), "--reference", str(base / "base"), "--prompts", str(base / "w/heldout.jsonl"), "--json"]
    one, two = (json.loads(_run([*ev, *greedy], n).stdout) for n in (1, 2))
    a, b = one["policies"][str(base / "base")], two["policies"][str(base / "base")]
    assert a.pop("sample_s") >= 0 and b.pop("sample_s") >= 0
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)
