"""Faults, injected: every stage SIGKILLed at seeded random points, resumed, and its outputs compared
with an uninterrupted run's, byte for byte (logs and JSON without their wall times).

A run is killed from inside (``preftune.faults``: ``PREFTUNE_KILL_AT=point:n`` SIGKILLs the process
the n-th time it passes the point) so that the kills land inside a checkpoint's write, inside a
model's save, inside an atomic file write, between sampling batches, after an RL rollout, and after
an optimiser step — places a timer would rarely hit. Each stage runs in a process forked from a
server that has imported preftune once (``multiprocessing``'s forkserver), so a run costs its work,
not torch's import. The demo pipeline is killed between and inside stages by
``test_report.test_a_killed_quick_demo_resumes_to_the_same_results``.
"""

import json
import multiprocessing
import os
import random
import signal

import pytest

from preftune.__main__ import run_command

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["preftune.__main__", "preftune.commands.sft", "preftune.commands.rl", "preftune.commands.dpo"])
KILLED = -signal.SIGKILL
# The kill points: random, and the same every run; PREFTUNE_FAULT_SEED=N draws other ones.
RNG = random.Random(int(os.environ.get("PREFTUNE_FAULT_SEED", "15")))


def start(argv, tmp, kill: str = ""):
    """``preftune ARGV`` in a process forked from the preloaded server; its output in tmp/log.txt."""
    env = {"PREFTUNE_THREADS": "1", "PREFTUNE_CACHE": str(tmp / "cache"), "PREFTUNE_KILL_AT": kill}
    p = CTX.Process(target=run_command, args=([str(a) for a in argv], env, str(tmp / "log.txt")))
    p.start()
    return p


def preftune(argv, tmp, kill: str = "") -> int:
    p = start(argv, tmp, kill)
    p.join(300)
    return p.exitcode


def _no_times(value):
    if isinstance(value, dict):
        return {k: _no_times(v) for k, v in value.items() if not (k.endswith("_s") or k.startswith("time/") or k == "seconds")}
    if isinstance(value, list):
        return [_no_times(v) for v in value]
    return value


def same_outputs(a, b, files) -> None:
    for name in files:
        x, y = a / name, b / name
        assert y.exists(), f"{name} missing after the resumed run"
        if name.endswith(".jsonl"):
            rows = [[_no_times(json.loads(line)) for line in f.read_text().splitlines()] for f in (x, y)]
            assert rows[0] == rows[1], name
        elif name.endswith(".json"):
            assert _no_times(json.loads(x.read_text())) == _no_times(json.loads(y.read_text())), name
        else:
            assert x.read_bytes() == y.read_bytes(), name


def whole(out, files) -> None:
    """After a kill, an output that exists is a whole one: every JSON line parses (atomic writes)."""
    for name in files:
        f = out / name
        if f.exists() and name.endswith(".jsonl"):
            [json.loads(line) for line in f.read_text().splitlines()]
        elif f.exists() and name.endswith(".json"):
            json.loads(f.read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The lists world's files, a tiny base, pi_SFT, samples, labels: each stage's inputs, uninterrupted."""
    tmp = tmp_path_factory.mktemp("faults")
    w = tmp / "world"
    assert preftune(["world", "--out", w, "--corpus", 300, "--sft", 96, "--prompts", 48, "--heldout", 8], tmp) == 0
    return tmp, w


def stage_argv(name, tmp, w, out):
    """The command line of ``name`` writing to ``out``, on inputs made uninterrupted in ``tmp/ref``."""
    ref = tmp / "ref"
    train = ["--train.out", out, "--train.no-progress", "--train.save-every", 2, "--train.log-every", 1, "--train.batch-size", 8]
    gen = ["--gen.max-new-tokens", 12, "--gen.batch-size", 8]
    if name == "pretrain":
        return ["pretrain", "--data", w / "corpus.jsonl", "--size", "micro", "--vocab-size", 300, "--train.max-steps", 7, *train]
    if name == "sft":
        return ["sft", "--model", ref / "pretrain", "--data", w / "sft.jsonl", "--train.max-steps", 7, *train]
    if name == "sample":
        return [
            "sample",
            "--model",
            ref / "sft",
            "--prompts",
            w / "prompts.jsonl",
            "--k",
            2,
            "--limit",
            32,
            "--out",
            out / "samples.jsonl",
            *gen,
        ]
    if name == "annotate":
        return ["annotate", "--samples", ref / "sample/samples.jsonl", "--simulated", "--format", "rankings", "--out", out / "labels.jsonl"]
    if name == "reward":
        data = ["--data", ref / "annotate/labels.jsonl", "--eval-prompts", w / "heldout.jsonl"]
        return ["reward", "--model", ref / "sft", *data, "--train.max-steps", 7, "--train.eval-every", 3, *train]
    if name == "dpo":
        return ["dpo", "--model", ref / "sft", "--data", ref / "pairs/pairs.jsonl", "--train.max-steps", 7, "--train.eval-every", 3, *train]
    if name.startswith("rl-"):
        algo = name.removeprefix("rl-")
        rl = ["--algo", algo, "--iterations", 3, "--prompts-per-iter", 8, "--k", 2, "--reward", "gold", *gen]
        return ["rl", "--model", ref / "sft", "--prompts", w / "prompts.jsonl", *rl, *train[:-2], "--train.batch-size", 4]
    if name == "eval":
        return ["eval", "--model", ref / "sft", "--prompts", w / "heldout.jsonl", "--json", "--no-demonstrator", *gen[:-1], 2]
    raise AssertionError(name)


# stage: (outputs compared, kills in order: (point, "@" or ":", candidate values)). "@v": at step or
# iteration v (increasing, so each resumed run gets there); ":n": the n-th pass in that process.
# 7 steps, checkpoints at steps 2, 4, 6 and 7; RL: 3 iterations of rollouts 0, 1, 2 (3: the final one).
TRAINED = ["model.safetensors", "metrics.jsonl", "tokenizer.json"]
STEPS = [("step", "@", [1, 2, 3]), ("checkpoint", "@", [4, 6]), ("step", "@", [6, 7])]
STAGES = {
    "pretrain": (TRAINED, [*STEPS[:2], ("save", ":", [1])]),
    "sft": (TRAINED, STEPS),
    "sample": (["samples.jsonl"], [("generate", ":", range(1, 9)), ("write", ":", [1])]),
    "annotate": (["labels.jsonl"], [("write", ":", [1]), ("write", ":", [1])]),
    "reward": ([*TRAINED, "eval.json"], [*STEPS, ("write", ":", [1, 2])]),
    "dpo": (TRAINED, STEPS),
    **{
        f"rl-{a}": (["model.safetensors", "iterations.jsonl"], [("step", "@", [1]), ("rollout", "@", [1, 2]), ("rollout", "@", [3])])
        for a in ["raft", "reinforce", "rloo", "grpo", "ppo"]
    },
}
ORDER = ["pretrain", "sft", "sample", "annotate", "reward", "dpo", "rl-raft", "rl-reinforce", "rl-rloo", "rl-grpo", "rl-ppo"]


@pytest.fixture(scope="module")
def refs(world):
    """Every stage run once, uninterrupted, in order (each one's inputs are the earlier ones' outputs)."""
    tmp, w = world
    for name in ORDER:
        out = tmp / "ref" / name
        if name == "dpo":  # pairs for DPO from the same samples
            argv = stage_argv("annotate", tmp, w, tmp / "ref" / "pairs")
            assert preftune([*argv[:-2], "--format", "pairs", "--out", tmp / "ref/pairs/pairs.jsonl"], tmp) == 0
        assert preftune(stage_argv(name, tmp, w, out), tmp) == 0, (tmp / "log.txt").read_text()[-3000:]
    return tmp, w


@pytest.mark.parametrize("name", ORDER)
def test_a_stage_killed_at_random_points_resumes_to_the_uninterrupted_outputs(refs, name):
    tmp, w = refs
    files, points = STAGES[name]
    out = tmp / "killed" / name
    argv = stage_argv(name, tmp, w, out)
    resume = ["--train.resume"] if "--train.out" in argv else []  # the others start over: their output is written at once
    for i, (point, how, values) in enumerate(points):
        kill = f"{point}{how}{RNG.choice(list(values))}"
        code = preftune([*argv, *(resume if i else [])], tmp, kill)
        assert code == KILLED, f"{name} was not killed at {kill} (exit {code}): {(tmp / 'log.txt').read_text()[-2000:]}"
        whole(out, files)
    assert preftune([*argv, *resume], tmp) == 0, (tmp / "log.txt").read_text()[-3000:]
    same_outputs(tmp / "ref" / name, out, files)


def test_eval_killed_while_sampling_prints_the_uninterrupted_result(refs, capfd):
    tmp, w = refs
    argv = stage_argv("eval", tmp, w, None)
    log = tmp / "log.txt"
    log.write_text("")
    assert preftune(argv, tmp) == 0
    want = _no_times(json.loads(log.read_text().strip().splitlines()[-1]))
    for n in (RNG.randint(1, 4), RNG.randint(1, 4)):  # 8 held-out prompts in batches of 2
        log.write_text("")
        assert preftune(argv, tmp, f"generate:{n}") == KILLED
        assert "{" not in log.read_text()  # killed before it printed anything
    log.write_text("")
    assert preftune(argv, tmp) == 0
    assert _no_times(json.loads(log.read_text().strip().splitlines()[-1])) == want


def test_world_killed_while_writing_its_files_writes_the_same_files(world):
    tmp, w = world
    files = sorted(p.name for p in w.iterdir())
    again = tmp / "world-killed"
    argv = ["world", "--out", again, "--corpus", 300, "--sft", 96, "--prompts", 48, "--heldout", 8]
    for _ in range(2):
        assert preftune(argv, tmp, f"write:{RNG.randint(1, len(files))}") == KILLED
        whole(again, files)
    assert preftune(argv, tmp) == 0
    same_outputs(w, again, files)


def _killed_sft(refs, name, kill="step@5"):
    """An SFT run killed after step 5 (checkpoints at steps 2 and 4 written)."""
    tmp, w = refs
    out = tmp / name
    argv = stage_argv("sft", tmp, w, out)
    assert preftune(argv, tmp, kill) == KILLED
    return tmp, out, argv


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_last_checkpoint_falls_back_to_the_one_before_and_says_so(refs, damage):
    tmp, out, argv = _killed_sft(refs, f"damaged-{damage}")
    last = out / "checkpoints/step-0000004"
    f = last / ("model.safetensors" if damage == "truncated" else "optimizer.pt")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))
    (tmp / "log.txt").write_text("")
    assert preftune([*argv, "--train.resume"], tmp) == 0
    log = (tmp / "log.txt").read_text()
    assert f"warning: checkpoint {last} is damaged ({f.name} " in log and "falling back to the one before it" in log, log
    assert f"resuming from {out}/checkpoints/step-0000002 (step 2 of 7)" in log, log
    assert (out / "checkpoints/damaged-step-0000004").is_dir()
    same_outputs(tmp / "ref" / "sft", out, TRAINED)


def test_resume_with_a_changed_config_is_refused_naming_the_fields(refs):
    tmp, out, argv = _killed_sft(refs, "changed")
    before = (out / "run_config.json").read_text()
    (tmp / "log.txt").write_text("")
    assert preftune([*argv, "--train.resume", "--train.lr", "0.002", "--train.batch-size", 4], tmp) == 2
    err = (tmp / "log.txt").read_text()
    assert err.count("\n") == 1 and err.startswith(f"preftune sft: error: {out}: --train.resume with a config that differs"), err
    assert "2 field(s): train.batch_size: 8 then, 4 now; train.lr: 0.001 then, 0.002 now" in err, err
    assert (out / "run_config.json").read_text() == before  # refused before it wrote anything
    assert preftune([*argv, "--train.resume", "--train.no-progress", "--train.save-every", 3], tmp) == 0  # reporting may change
    same_outputs(tmp / "ref" / "sft", out, TRAINED)


def test_a_second_run_into_a_directory_in_use_is_refused_and_a_killed_run_leaves_no_lock(refs):
    from preftune.commands.common import hold_directory

    tmp, w = refs
    out = tmp / "locked"
    argv = stage_argv("sft", tmp, w, out)
    with hold_directory(out, "sft (the first run)"):
        (tmp / "log.txt").write_text("")
        assert preftune(argv, tmp) == 2
        err = (tmp / "log.txt").read_text()
        assert err.count("\n") == 1 and f"{out} is in use by another run (pid " in err and "preftune sft (the first run))" in err, err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # it wrote nothing
    assert preftune(argv, tmp, "step@3") == KILLED  # the kernel drops a killed run's lock
    assert preftune([*argv, "--train.resume"], tmp) == 0
    same_outputs(tmp / "ref" / "sft", out, TRAINED)


def test_the_demo_and_an_experiment_refuse_a_directory_in_use(tmp_path, capsys):
    from preftune.cli import main
    from preftune.commands.common import hold_directory

    spec = tmp_path / "e.yaml"
    spec.write_text("experiments:\n  methods: {}\n")
    for argv in (["demo", "--quick", "--out", str(tmp_path / "run")], ["experiment", str(spec), "--out", str(tmp_path / "run")]):
        with hold_directory(tmp_path / "run", "demo (another one)", "--out"):
            assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by another run (pid" in err and "choose another --out" in err, err
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


def test_an_sft_run_killed_from_outside_at_any_moment_resumes_to_the_uninterrupted_weights(refs):
    """The kill a user makes: SIGKILL from another process at a moment of its choosing (here, once the
    third checkpoint exists, wherever the run then is), not at a point the run passes."""
    import time

    tmp, w = refs
    argv = [*stage_argv("sft", tmp, w, tmp / "outside-full"), "--train.max-steps", 60, "--train.save-every", 5]
    assert preftune(argv, tmp) == 0
    killed = [a if a != tmp / "outside-full" else tmp / "outside" for a in argv]
    p = start(killed, tmp)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp / "outside/checkpoints/step-0000015").exists():
        time.sleep(0.01)
    p.kill()
    p.join()
    assert p.exitcode == KILLED and not (tmp / "outside/config.json").exists()  # killed mid-run, not finished
    assert preftune([*killed, "--train.resume"], tmp) == 0
    same_outputs(tmp / "outside-full", tmp / "outside", TRAINED)
