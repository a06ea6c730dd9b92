"""Run tracking: ``--train.report-to tensorboard`` beside metrics.jsonl, and ``preftune plot RUN``."""

import json
import sys
from dataclasses import fields

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from preftune.atomic import write_jsonl
from preftune.cli import main
from preftune.commands import rl
from preftune.commands.plot import curves
from preftune.config import RLConfig, SamplingConfig, TrainConfig
from preftune.data import encode
from preftune.loop import train
from preftune.methods.algorithms import build_algorithm
from preftune.methods.rl import RLHF
from preftune.methods.sft import SFT
from preftune.models import build_model, save_model
from preftune.rollout import Rollout
from preftune.tracking import check_report_to
from preftune.world import lists


def _method(tokenizer, rows):
    encs = [encode(tokenizer, r["prompt"], r["completion"], 64) for r in rows[:40]]
    return SFT(encs[8:], tokenizer.pad_token_id, 8, seed=3, held_out=encs[:8])


def _cfg(out, **kw):
    base = dict(out=str(out), max_steps=10, batch_size=8, save_every=3, log_every=2, eval_every=5, progress=False, report_to="tensorboard")
    return TrainConfig(**{**base, **kw})


def _scalars(logdir) -> dict[str, list]:
    """Every scalar tag in ``logdir``'s event files, all files read together as TensorBoard does."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_as_metrics(scalars: dict, rows: list[dict]) -> None:
    """Each numeric field of each metrics.jsonl row is its tag's scalar at the row's step, once (float32)."""
    names = {k for r in rows for k in r if k != "step"}
    assert set(scalars) == names
    for name in names:
        want = [(r["step"], np.float32(r[name])) for r in rows if name in r]
        assert [(e.step, np.float32(e.value)) for e in scalars[name]] == want, name


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tokenizer, world_rows):
    out = tmp_path_factory.mktemp("sft") / "run"
    train(build_model(tokenizer, size="micro", seed=0), _method(tokenizer, world_rows), _cfg(out))
    return out


def test_tensorboard_scalars_are_the_metrics_rows(sft_run):
    rows = _rows(sft_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 5, 6, 8, 10]  # every 2nd step and the evaluations
    scalars = _scalars(sft_run / "tensorboard")
    assert {"loss/train", "grad_norm", "lr", "eval/loss", "time/elapsed_s"} <= set(scalars)
    _same_as_metrics(scalars, rows)


class Interrupt(Exception):
    pass


def test_a_resumed_run_shows_each_step_once(tmp_path, tokenizer, world_rows):
    def stop(step):
        if step == 8:  # checkpoints at 3 and 6: steps 7 and 8 are logged, then lost
            raise Interrupt

    with pytest.raises(Interrupt):
        train(build_model(tokenizer, size="micro", seed=0), _method(tokenizer, world_rows), _cfg(tmp_path, log_every=1), on_step=stop)
    before = _scalars(tmp_path / "tensorboard")
    assert [e.step for e in before["loss/train"]] == list(range(1, 9))  # flushed as logged, though never closed
    train(build_model(tokenizer, size="micro", seed=1), _method(tokenizer, world_rows), _cfg(tmp_path, log_every=1, resume=True))
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    # every tag once per step, from the run that wrote metrics.jsonl (elapsed times differ between the runs)
    _same_as_metrics(_scalars(tmp_path / "tensorboard"), rows)


def test_a_fresh_run_replaces_old_event_files(tmp_path, tokenizer, world_rows):
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.0000000001.old.1.0").write_bytes(b"stale")
    train(build_model(tokenizer, size="micro", seed=0), _method(tokenizer, world_rows), _cfg(tmp_path, max_steps=2, eval_every=0))
    assert not (tmp_path / "tensorboard" / "events.out.tfevents.0000000001.old.1.0").exists()
    assert [e.step for e in _scalars(tmp_path / "tensorboard")["loss/train"]] == [2]


def _rl(tmp_path, start, score, resume=False):
    """An RLHF method whose rollouts are stubs: only its iteration rows are real."""
    cfg = RLConfig(model="m", reward="gold", prompts="p", train=TrainConfig(out=str(tmp_path), report_to="tensorboard", resume=resume))
    method = RLHF(cfg, build_algorithm(cfg), None, None, None, None, ["q"], start=start)
    targets = {f.name: None for f in fields(Rollout)}
    method.collect = lambda i: {"targets": targets, "stats": {"iteration": i, "score": score + i, "kl": None, "ok": True}, "carry": {}}
    return method


def test_rl_iteration_rows_go_to_tensorboard_once_across_a_resume(tmp_path):
    first = _rl(tmp_path, 0, score=1.0)
    for i in range(3):
        first._rollout(i)  # the run is "killed" in iteration 2
    resumed = _rl(tmp_path, 2, score=10.0, resume=True)  # resumes at iteration 2 and finishes with the final rollout 3
    for i in (2, 3):
        resumed._rollout(i)
    resumed.tracker.close()
    scalars = _scalars(tmp_path / "tensorboard" / "iterations")
    assert set(scalars) == {"iteration/score", "iteration/train_s"}  # None and booleans are not numbers to plot
    assert [(e.step, e.value) for e in scalars["iteration/score"]] == [(0, 1.0), (1, 2.0), (2, 12.0), (3, 13.0)]
    assert [e.step for e in scalars["iteration/train_s"]] == [0, 1, 2]
    assert [r["score"] for r in _rows(tmp_path / "iterations.jsonl")] == [1.0, 2.0, 12.0, 13.0]
    got = curves(tmp_path)  # what `preftune plot` draws: the same rows, by iteration
    assert got["iteration/score"] == ("iteration", [0, 1, 2, 3], [1.0, 2.0, 12.0, 13.0])


def _rl_run(tmp_path, tokenizer, report_to: str):
    """A real two-iteration RL run (gold reward, a micro policy) reporting to ``report_to``; its directory."""
    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, tmp_path / "sft")
    write_jsonl(tmp_path / "prompts.jsonl", lists.prompts(8, seed=5))
    out = tmp_path / "rl"
    cfg = RLConfig(
        model=str(tmp_path / "sft"),
        reward="gold",
        prompts=str(tmp_path / "prompts.jsonl"),
        iterations=2,
        prompts_per_iter=2,
        k=2,
        gen=SamplingConfig(max_new_tokens=4),
        train=TrainConfig(out=str(out), batch_size=4, progress=False, report_to=report_to),
    )
    rl.rl(cfg)
    return out


def test_an_rl_run_logs_its_steps_and_its_iterations(tmp_path, tokenizer):
    out = _rl_run(tmp_path, tokenizer, "tensorboard")
    _same_as_metrics(_scalars(out / "tensorboard"), _rows(out / "metrics.jsonl"))
    iterations = _rows(out / "iterations.jsonl")
    assert [r["iteration"] for r in iterations] == [0, 1, 2]
    scalars = _scalars(out / "tensorboard" / "iterations")
    for name in ("score", "gold", "kl", "entropy", "train_s"):
        want = [(r["iteration"], np.float32(r[name])) for r in iterations if name in r]
        assert [(e.step, np.float32(e.value)) for e in scalars[f"iteration/{name}"]] == want, name


def test_a_missing_tensorboard_fails_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    with pytest.raises(ValueError, match="^--train.report-to tensorboard needs the tensorboard package: pip install tensorboard$"):
        check_report_to("tensorboard")
    check_report_to("none")
    argv = ["sft", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"), "--train.out", str(tmp_path / "out")]
    assert main([*argv, "--train.report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "preftune sft: error: --train.report-to tensorboard needs the tensorboard package: pip install tensorboard"
    ]


def test_plot_draws_every_curve_of_a_run(sft_run, tmp_path, capsys):
    import matplotlib.image

    assert main(["plot", str(sft_run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {sft_run / 'curves.png'}"
    every = matplotlib.image.imread(sft_run / "curves.png")
    assert main(["plot", str(sft_run), "--metrics", "loss/train,eval/loss", "--out", str(tmp_path / "two.png")]) == 0
    two = matplotlib.image.imread(tmp_path / "two.png")
    assert two.ndim == 3 and two.shape[0] > 100 and two.shape[1] > 100 and two.std() > 0  # a picture, not a blank
    assert every.shape[0] > two.shape[0]  # more metrics, more rows of plots


def test_plot_errors_are_one_line(sft_run, tmp_path, capsys):
    assert main(["plot", str(sft_run), "--metrics", "loss/train,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "loss/train" in err[0] and "eval/loss" in err[0]
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl or iterations.jsonl" in err[0]


def _wandb_history(out) -> list[dict]:
    """The history rows of the offline W&B run(s) in ``out/wandb``, read from their ``.wandb`` files:
    W&B's record log (LevelDB's: 32 KiB blocks of crc, length, type headers) of protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(out.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, parts = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(parts)
                parts = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_loops_rows_and_rls_iterations(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _rl_run(tmp_path, tokenizer, "wandb")
    history = _wandb_history(out)
    metrics = _rows(out / "metrics.jsonl")
    steps = [{k: v for k, v in h.items() if not k.startswith("_")} for h in history if "loss/train" in h]
    assert steps == metrics  # every row, every number, once, at its step
    rows = _rows(out / "iterations.jsonl")
    timed = [(h["iteration/x"], h["iteration/train_s"]) for h in history if "iteration/train_s" in h]
    assert timed == [(r["iteration"], r["train_s"]) for r in rows if "train_s" in r] and len(timed) == 2  # known after the next rollout
    iterations = [h for h in history if "iteration/gold" in h]
    assert [(h["iteration/x"], h["iteration/gold"]) for h in iterations] == [(r["iteration"], r["gold"]) for r in rows]
    assert (out / "wandb" / "run_id").read_text() == next(out.glob("wandb/offline-run-*")).name.rsplit("-", 1)[-1]
