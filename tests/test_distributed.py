"""torchrun: 2 processes × batch 8 end where 1 process × batch 16 ends (gloo on this CPU, DDP)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.cli import main
from preftune.distributed import shard

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


def _run(argv: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_THREADS": "1"}
    cmd = (
        [sys.executable, "-m", "preftune", *argv]
        if processes == 1
        else [TORCHRUN, "--nproc-per-node", str(processes), "-m", "preftune", *argv]
    )
    subprocess.run(cmd, check=True, env=env, capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("command", ["sft", "reward", "dpo"])
def test_two_processes_of_batch_8_equal_one_process_of_batch_16(base, tmp_path, command):
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
    _run([*args, "--train.batch-size", "16", "--train.out", str(tmp_path / "one")], 1)
    _run([*args, "--train.batch-size", "8", "--train.out", str(tmp_path / "two")], 2)
    one, two = load_file(str(tmp_path / "one/model.safetensors")), load_file(str(tmp_path / "two/model.safetensors"))
    start = load_file(str(base / "base/model.safetensors")) if command != "reward" else None
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-6, rtol=1e-5, msg=name)
    if start is not None:
        assert any(not torch.equal(one[k], start[k]) for k in start)  # it trained
    logs = [p.name for p in (tmp_path / "two").iterdir()]
    assert "metrics.jsonl" in logs and "run_config.json" in logs
    rows = (tmp_path / "two/metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # one writer (log_every 10, 3 steps: the last step only)
