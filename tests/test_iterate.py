"""``preftune iterate``: the choice of pairs against hand-worked sets, rounds that pool and chain,
resumption after kill -9, and two rounds labelled by a scripted annotator over HTTP."""

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from preftune.atomic import write_jsonl
from preftune.cli import main
from preftune.iterate import candidate_pairs, pairs_bayes_accuracy, select, simulated_labels
from preftune.models import build_model, save_model
from preftune.world import lists

SETTINGS = """
sample: {gen: {max_new_tokens: 10}}
reward: {train: {epochs: 1.0, batch_size: 8, eval_every: 0, progress: false}}
rl: {iterations: 2, prompts_per_iter: 4, k: 4, gen: {max_new_tokens: 10}, train: {batch_size: 8, progress: false}}
dpo: {monitor_prompts: 0, train: {epochs: 1.0, batch_size: 8, eval_every: 0, progress: false}}
"""


@pytest.fixture()
def loop(tmp_path, tokenizer):
    """A micro pi_SFT, lists prompts, held-out prompts and small settings for every stage."""
    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, tmp_path / "sft")
    write_jsonl(tmp_path / "prompts.jsonl", lists.prompts(60, seed=3))
    write_jsonl(tmp_path / "heldout.jsonl", lists.prompts(16, seed=3, split="heldout"))
    (tmp_path / "settings.yaml").write_text(SETTINGS)
    return tmp_path


def _args(d, out, *more):
    return [
        "iterate",
        "--model",
        str(d / "sft"),
        "--prompts",
        str(d / "prompts.jsonl"),
        "--settings",
        str(d / "settings.yaml"),
        "--per-round",
        "24",
        "--out",
        str(out),
        *more,
    ]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ selection

SETS = [
    {"prompt": "p0", "completions": ["a", "b", "c"], "ended": [True, True, True]},
    {"prompt": "p1", "completions": ["x", "x", "y"], "ended": [True, True, False]},  # a repeat: one distinct pair
    {"prompt": "p2", "completions": ["m", "m"], "ended": [True, True]},  # nothing to compare
    {"prompt": "p3", "completions": ["u", "v"], "ended": [True, True]},
]


def test_candidate_pairs_skip_repeated_completions():
    assert candidate_pairs(["a", "b", "c"], [True] * 3) == [(0, 1), (0, 2), (1, 2)]
    assert candidate_pairs(["x", "x", "y"], [True, True, False]) == [(0, 2)]
    assert candidate_pairs(["x", "x"], [True, False]) == [(0, 1)]  # the same text, one ended: not the same sample
    assert candidate_pairs(["m", "m"], [True, True]) == []


def _pair(task):
    return {task["a"], task["b"]}


def test_uncertainty_picks_the_closest_pair_in_the_closest_sets():
    # one judge; |r(a) - r(b)|: p0 pairs (a,b) 2.0, (a,c) 0.5, (b,c) 1.5 -> 0.5; p1 (x,y) 0.1; p3 (u,v) 3.0
    scores = [[[0.0, 2.0, 0.5], [1.0, 1.0, 1.1], [0.0, 0.0], [0.0, 3.0]]]
    chosen = select(SETS, 2, "uncertainty", seed=0, scores=scores)
    assert [t["prompt"] for t in chosen] == ["p1", "p0"]
    assert _pair(chosen[0]) == {"x", "y"} and _pair(chosen[1]) == {"a", "c"}
    assert chosen[0]["uncertainty"] == pytest.approx(0.1) and chosen[1]["uncertainty"] == pytest.approx(0.5)
    y = chosen[0]["a"] == "y"
    assert (chosen[0]["a_ended"], chosen[0]["b_ended"]) == ((False, True) if y else (True, False))  # ended follows its text


def test_ensemble_picks_where_the_judges_disagree_most():
    # two judges; spread of P(a > b) = σ(Δ): p3 (u,v): Δ = +4 and -4 -> σ 0.982 and 0.018, spread 0.482;
    # p0: the judges agree on every pair (spread 0); p1 (x,y): Δ 0 and 1 -> 0.5 and 0.269, spread 0.116
    scores = [
        [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0], [0.0, 4.0]],
        [[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 0.0], [4.0, 0.0]],
    ]
    chosen = select(SETS, 3, "ensemble", seed=0, scores=scores)
    assert [t["prompt"] for t in chosen] == ["p3", "p1", "p0"]
    s = 1 / (1 + math.exp(-4))
    assert chosen[0]["ensemble"] == pytest.approx(abs(s - (1 - s)) / 2)
    assert chosen[1]["ensemble"] == pytest.approx((0.5 - 1 / (1 + math.exp(1))) / 2)
    assert chosen[2]["ensemble"] == pytest.approx(0.0)


def test_random_takes_one_pair_per_set_and_never_a_set_without_one():
    for seed in range(20):
        chosen = select(SETS, 10, "random", seed=seed)
        assert sorted(t["prompt"] for t in chosen) == ["p0", "p1", "p3"]  # p2 has no pair; no set twice
        assert all(t["a"] != t["b"] or t["a_ended"] != t["b_ended"] for t in chosen)
    sides = {
        select(SETS, 1, "random", seed=seed)[0]["a"] for seed in range(40) if select(SETS, 1, "random", seed=seed)[0]["prompt"] == "p3"
    }
    assert sides == {"u", "v"}  # which completion is "a" is random, not the sampling order


def test_simulated_labels_follow_the_annotators_and_refuse_other_prompts():
    prompt = lists.prompts(1, seed=0)[0]["prompt"]
    perfect = lists.Demonstrator(p_wrong_count=0.0, p_wrong_item=0.0, p_repeat=0.0)
    good, bad = perfect.answer(prompt, random.Random(0)), " zzz"
    task = {"prompt": prompt, "a": bad, "b": good, "a_ended": True, "b_ended": True}
    rows = simulated_labels([task] * 50, tau=0.1, seed=0, r=1)
    p = lists.Annotator(0.1).p_prefers_a(prompt, bad, good)
    assert p < 0.01 and sum(r["chosen"] == good for r in rows) >= 45
    assert all(r["round"] == 1 and r["chosen_ended"] and r["rejected_ended"] for r in rows)
    with pytest.raises(ValueError, match="lists world"):
        simulated_labels([{**task, "prompt": "Translate this."}], tau=0.1, seed=0, r=1)
    tie = {**task, "a": good, "b": ", ".join(reversed(good.strip(" .").split(", "))) + "."}  # the same items, reordered
    assert lists.Annotator(0.1).p_prefers_a(prompt, tie["a"], tie["b"]) == pytest.approx(0.5)
    assert pairs_bayes_accuracy([task, tie], 0.1) == pytest.approx((1 - p + 0.5) / 2)  # a clear pair and a coin flip
    assert pairs_bayes_accuracy([{**task, "prompt": "Translate this."}], 0.1) is None


# ---------------------------------------------------------------------------------- whole loops


def test_two_rounds_pool_labels_chain_policies_and_are_reused(loop, capsys):
    out = loop / "it"
    assert main(_args(loop, out, "--rounds", "2", "--selection", "uncertainty", "--eval-prompts", str(loop / "heldout.jsonl"))) == 0
    r1, r2 = out / "round-1", out / "round-2"
    labels1, labels2 = _rows(r1 / "labels.jsonl"), _rows(r2 / "labels.jsonl")
    assert len(labels1) == len(labels2) == 24
    assert _rows(r2 / "train.jsonl") == labels1 + labels2  # pooled: every round's labels
    assert all("uncertainty" in t for t in _rows(r2 / "pairs.jsonl")) and not any("uncertainty" in t for t in _rows(r1 / "pairs.jsonl"))
    policy2 = json.loads((r2 / "policy/run_config.json").read_text())
    assert policy2["model"] == str(r1 / "policy") and policy2["ref"] == str(loop / "sft")  # from round 1, KL to pi_SFT
    assert json.loads((r2 / "rm/run_config.json").read_text())["model"] == str(loop / "sft")
    assert {r["prompt"] for r in _rows(r1 / "prompts.jsonl")} != {r["prompt"] for r in _rows(r2 / "prompts.jsonl")}
    rows = _rows(out / "rounds.jsonl")
    assert [r["round"] for r in rows] == [1, 2] and [r["trained_on"] for r in rows] == [24, 48]
    assert all(math.isfinite(r["policy"]["gold"]) and r["policy"]["kl"] >= -0.5 for r in rows)
    assert all(0 <= r["rm"]["gold_pair_accuracy"] <= 1 for r in rows)

    stamp = (r2 / "policy/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_args(loop, out, "--rounds", "2", "--selection", "uncertainty", "--eval-prompts", str(loop / "heldout.jsonl"))) == 0
    assert "round 2: policy (rl): reusing" in capsys.readouterr().out
    assert (r2 / "policy/model.safetensors").stat().st_mtime_ns == stamp

    # per-round reward models and the previous policy as reference: a third round changes only what it reads
    assert main(_args(loop, out, "--rounds", "3", "--selection", "uncertainty", "--pooling", "per-round", "--reference", "previous")) == 0
    r3 = out / "round-3"
    assert _rows(r3 / "train.jsonl") == _rows(r3 / "labels.jsonl")
    assert json.loads((r3 / "policy/run_config.json").read_text())["ref"] == ""  # its start is its reference
    assert json.loads((r3 / "policy/run_config.json").read_text())["model"] == str(r2 / "policy")


def test_dpo_rounds_train_on_the_labels_against_the_chosen_reference(loop):
    out = loop / "dpo"
    assert main(_args(loop, out, "--rounds", "2", "--method", "dpo", "--selection", "ensemble", "--ensemble", "2")) == 0
    cfg = json.loads((out / "round-2/policy/run_config.json").read_text())
    assert cfg["command"] == "dpo" and cfg["data"] == str(out / "round-2/train.jsonl") and cfg["ref"] == str(loop / "sft")
    assert (out / "round-1/rm-2/model.safetensors").exists()  # the ensemble's second member, on round 1's labels
    member = json.loads((out / "round-1/rm-2/run_config.json").read_text())
    assert member["data"] == str(out / "round-1/train.jsonl") and member["train"]["seed"] == 1


def test_bad_loops_are_refused_before_anything_is_written(loop, capsys):
    out = loop / "bad"
    assert main(_args(loop, out, "--rounds", "0")) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
    (loop / "wrong.yaml").write_text("rl: {iterations: many}\n")
    assert main([*_args(loop, out), "--settings", str(loop / "wrong.yaml")]) == 2
    assert "wrong.yaml: rl.iterations: expected a int" in capsys.readouterr().err
    (loop / "stage.yaml").write_text("ppo: {}\n")
    assert main([*_args(loop, out), "--settings", str(loop / "stage.yaml")]) == 2
    assert "expected a mapping of stage names" in capsys.readouterr().err
    assert main([*_args(loop, out), "--selection", "ensemble", "--ensemble", "1"]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_a_loop_killed_mid_round_resumes_to_the_uninterrupted_result(loop, capsys):
    (loop / "settings.yaml").write_text(
        SETTINGS.replace("iterations: 2,", "iterations: 4,").replace("batch_size: 8, progress", "batch_size: 8, save_every: 1, progress")
    )
    args = _args(loop, loop / "whole", "--rounds", "2", "--selection", "on-policy")  # no ensemble members: quicker
    assert main(args) == 0
    cut = loop / "cut"
    env = {**os.environ, "PREFTUNE_THREADS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "preftune.cli", *_args(loop, cut, "--rounds", "2", "--selection", "on-policy")],
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    ckpts = cut / "round-2/policy/checkpoints"
    while not (ckpts.exists() and list(ckpts.glob("step-*"))):  # round 2's RL has saved its first iteration
        assert proc.poll() is None, "the loop ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through round 2's RL
    proc.wait()
    assert not (cut / "round-2/policy/model.safetensors").exists()
    stamp = (cut / "round-1/rm/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_args(loop, cut, "--rounds", "2", "--selection", "on-policy")) == 0
    said = capsys.readouterr().out
    assert "round 2: reward model: reusing" in said and "resuming from" in said  # round 2's RL went on from its checkpoint
    assert (cut / "round-1/rm/model.safetensors").stat().st_mtime_ns == stamp  # round 1 was not redone
    for part in ("round-2/rm", "round-2/policy"):
        a, b = load_file(str(loop / "whole" / part / "model.safetensors")), load_file(str(cut / part / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert _rows(loop / "whole/round-2/train.jsonl") == _rows(cut / "round-2/train.jsonl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scripted_annotator(base: str, name: str, rounds: int, per_round: int, stop: threading.Event, seen: list) -> None:
    """Label over HTTP as a person would: fetch a pair, answer it; prefers the shorter completion
    ("A much better" or "B much better"). Waits while the server is down (a round is training)."""
    labelled = 0
    while labelled < rounds * per_round and not stop.is_set():
        try:
            with urllib.request.urlopen(f"{base}/api/next?annotator={name}", timeout=5) as r:
                task = json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
            continue
        if task["done"]:
            time.sleep(0.2)
            continue
        choice = 1 if len(task["a"]) <= len(task["b"]) else 8
        body = json.dumps({"annotator": name, "task_id": task["task_id"], "choice": choice}).encode()
        req = urllib.request.Request(f"{base}/api/label", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if json.loads(r.read())["new"]:
                    labelled += 1
                    seen.append((task["prompt"], task["a"] if choice == 1 else task["b"]))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)


@pytest.mark.slow
def test_two_rounds_labelled_in_the_web_app_train_the_second_reward_model_on_those_labels(loop):
    port, out, per_round = _free_port(), loop / "web", 24
    stop, seen = threading.Event(), []
    bot = threading.Thread(target=_scripted_annotator, args=(f"http://127.0.0.1:{port}", "bot", 2, per_round, stop, seen), daemon=True)
    bot.start()
    try:
        assert main(_args(loop, out, "--rounds", "2", "--labels", "web", "--port", str(port), "--wait", "300")) == 0
    finally:
        stop.set()
        bot.join(timeout=10)
    labels = [_rows(out / f"round-{r}/labels.jsonl") for r in (1, 2)]
    assert [len(x) for x in labels] == [per_round, per_round]
    assert all(r["annotator"] == "bot" and r["round"] == i + 1 for i, x in enumerate(labels) for r in x)
    assert {(r["prompt"], r["chosen"]) for x in labels for r in x} == set(seen)  # what the bot chose, as the chosen side
    assert all(len(r["chosen"]) <= len(r["rejected"]) for x in labels for r in x)
    pairs2 = _rows(out / "round-2/pairs.jsonl")
    assert {(p["prompt"], frozenset((p["a"], p["b"]))) for p in pairs2} == {
        (r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in labels[1]
    }
    # the second round's reward model trained on both rounds' web labels (pooled), nothing else
    rm = json.loads((out / "round-2/rm/run_config.json").read_text())
    assert rm["data"] == str(out / "round-2/train.jsonl") and _rows(out / "round-2/train.jsonl") == labels[0] + labels[1]
    metrics = _rows(out / "round-2/rm/metrics.jsonl")
    assert metrics and (out / "round-2/rm/model.safetensors").exists()
    ended = {(r["prompt"], r["chosen"]): r["chosen_ended"] for r in labels[1]}
    sampled = {(p["prompt"], p["a"]): p["a_ended"] for p in pairs2} | {(p["prompt"], p["b"]): p["b_ended"] for p in pairs2}
    assert all(sampled[k] == v for k, v in ended.items())  # each completion's ended flag survives the web round trip


# ------------------------------------------------------------------- the reference, and staleness


def test_ref_is_the_frozen_reference_of_dpo_and_rl(loop, tokenizer, capsys):
    from preftune.models import train_tokenizer

    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, loop / "same")  # pi_SFT's weights, elsewhere
    save_model(build_model(tokenizer, size="micro", seed=1), tokenizer, loop / "other")
    rows = lists.sft_data(24, seed=2)
    write_jsonl(
        loop / "pairs.jsonl",
        [{"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]} for a, b in zip(rows[::2], rows[1::2])],
    )
    dpo = ["dpo", "--model", str(loop / "sft"), "--data", str(loop / "pairs.jsonl"), "--monitor-prompts", "0", "--train.max-steps", "3"]
    dpo += ["--train.batch-size", "4", "--train.no-progress", "--train.eval-every", "0"]
    weights = {}
    for name, ref in (("none", []), ("same", ["--ref", str(loop / "same")]), ("other", ["--ref", str(loop / "other")])):
        assert main([*dpo, *ref, "--train.out", str(loop / f"dpo-{name}")]) == 0
        weights[name] = load_file(str(loop / f"dpo-{name}/model.safetensors"))
    assert all(torch.equal(weights["none"][k], weights["same"][k]) for k in weights["none"])
    assert any(not torch.equal(weights["none"][k], weights["other"][k]) for k in weights["none"])

    rl = ["rl", "--model", str(loop / "sft"), "--reward", "gold", "--prompts", str(loop / "prompts.jsonl"), "--iterations", "1"]
    rl += ["--prompts-per-iter", "4", "--gen.max-new-tokens", "10", "--train.no-progress"]
    kl = {}
    for name in ("same", "other"):
        assert main([*rl, "--ref", str(loop / name), "--train.out", str(loop / f"rl-{name}")]) == 0
        kl[name] = _rows(loop / f"rl-{name}/iterations.jsonl")[0]["kl"]  # the first rollout: pi_SFT's own samples
    assert abs(kl["same"]) < 1e-4 and kl["other"] > 0.1, kl

    foreign = train_tokenizer([r["text"] for r in lists.corpus(100, seed=9)], vocab_size=300)
    save_model(build_model(foreign, size="micro", seed=0), foreign, loop / "foreign")
    capsys.readouterr()
    assert main([*rl, "--ref", str(loop / "foreign"), "--train.out", str(loop / "rl-foreign")]) == 2
    assert "its tokenizer is not the policy's" in capsys.readouterr().err


def test_a_stage_saved_before_a_field_existed_is_fresh_at_that_fields_default(tmp_path):
    from dataclasses import replace

    from preftune.config import RLConfig, TrainConfig, to_dict
    from preftune.stages import made_from

    cfg = RLConfig(model="m", reward="r", prompts="p", train=TrainConfig(out=str(tmp_path)))
    saved = {k: v for k, v in to_dict(cfg).items() if k != "ref"}  # as a run saved it before --ref existed
    (tmp_path / "run_config.json").write_text(json.dumps({**saved, "command": "rl"}))
    (tmp_path / "inputs.sha256").write_text("abc")
    assert made_from(tmp_path, cfg, "abc")
    assert not made_from(tmp_path, replace(cfg, ref="elsewhere"), "abc")  # a new field away from its default: not the same run
    assert not made_from(tmp_path, replace(cfg, beta=0.2), "abc")
    assert not made_from(tmp_path, cfg, "abd")


@pytest.mark.slow
def test_the_iterate_experiment_shares_rounds_between_arms_and_reports_every_round(tmp_path, tokenizer):
    """At quick scale, one seed, from a micro model (no pretraining): arms that agree on round 1
    share its directory; the report's iterate section prints only numbers from results.json."""
    import re

    from test_report import _check_spans, _Spans

    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, tmp_path / "base")
    spec = tmp_path / "iterate.yaml"
    spec.write_text(
        """
out: unused
seed: 0
start: START
experiments:
  iterate:
    budget: 48
    baseline: one
    loop: {selection: random}
    arms:
      one: {rounds: 1}
      two: {rounds: 2}
      two-per-round: {rounds: 2, pooling: per-round}
      two-short: {rounds: 2, settings: {rl: {iterations: 2}}}
    contrasts: [[two, two-per-round]]
""".replace("START", str(tmp_path / "base"))
    )
    out = tmp_path / "run"
    assert main(["experiment", str(spec), "--quick", "--out", str(out), "--workers", "2"]) == 0
    res = json.loads((out / "results.json").read_text())
    arms = res["iterate"]["arms"]
    assert [len(arms[a]["by_round"]) for a in ("one", "two", "two-per-round", "two-short")] == [1, 2, 2, 2]
    assert arms["two"]["rl_iterations"] == 6 and arms["two-short"]["rl_iterations"] == 2  # quick's RL, and the arm's own
    assert all(0.5 <= r["pairs_bayes_accuracy"] <= 1 for a in arms.values() for r in a["by_round"])
    rounds = sorted(p.name for p in (out / "iterate").iterdir())
    assert len(rounds) == 1 + 1 + 2 + 2  # one's; the first round two and two-per-round share; their second ones; two-short's two
    two_first = json.loads((out / "iterate" / arms["two"]["key"] / "policy/run_config.json").read_text())["model"]
    per_round_first = json.loads((out / "iterate" / arms["two-per-round"]["key"] / "policy/run_config.json").read_text())["model"]
    assert two_first == per_round_first  # both second rounds start from the one shared first round's policy
    assert "iterate-two_vs_iterate-two-per-round" in res["claims"] and "iterate-two_vs_baseline" in res["claims"]
    assert "iterate-one_vs_baseline" not in res["claims"]
    page = _Spans()
    page.feed((out / "report.html").read_text())
    assert "iterate" in page.ids
    _check_spans(page, res)
    assert not re.findall(r"\d+\.\d+", " ".join(page.outside).split("Samples side by side")[0])
    assert main(["report", str(out), "--markdown"]) == 0


def test_web_labels_of_other_pairs_are_refused_not_overwritten(tmp_path):
    from preftune.commands.iterate import WebLabels
    from preftune.config import IterateConfig

    here = tmp_path / "round-1"
    here.mkdir()
    tasks = [{"prompt": "p", "a": "x", "b": "y", "a_ended": True, "b_ended": True}]
    write_jsonl(here / "pairs.jsonl", tasks)
    (here / "labels.sqlite.pairs").write_text("0" * 64)  # the store was filled for other pairs
    (here / "labels.sqlite").write_bytes(b"people's answers")
    with pytest.raises(ValueError, match="holds labels of other pairs"):
        WebLabels(IterateConfig(model="m", prompts="p"))(here, tasks, 1)
    assert (here / "labels.sqlite").read_bytes() == b"people's answers"
    with pytest.raises(ValueError, match="refusing to bind 0.0.0.0"):
        WebLabels(IterateConfig(model="m", prompts="p", host="0.0.0.0"))
