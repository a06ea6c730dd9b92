import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preftune.cli import flag_table, main, parse
from preftune.commands import COMMANDS, LABEL_COMMANDS
from preftune.config import RLConfig, save_config

FLAG_TABLE = Path(__file__).parent / "data" / "flag_table.txt"


def test_the_flag_table_is_pinned():
    """Every command's flags. After a deliberate change, regenerate with
    ``python -c "from preftune.cli import flag_table; print(flag_table(), end='')" > tests/data/flag_table.txt``."""
    assert flag_table() == FLAG_TABLE.read_text()
    flags = [line.split()[1] for line in FLAG_TABLE.read_text().splitlines() if not line.startswith("label")]
    assert "--train.seed" in flags and "--gen.seed" in flags and "--seed" in flags  # the seed of a group says which group


def test_every_help_works_and_shows_every_flag_of_the_table(capsys):
    table = [line.split() for line in FLAG_TABLE.read_text().splitlines()]
    for argv in [[n] for n in COMMANDS] + [["label", n] for n in LABEL_COMMANDS]:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        out = capsys.readouterr()
        assert exit_.value.code == 0 and not out.err, (argv, out.err)
        flags = [row[len(argv)] for row in table if row[: len(argv)] == argv]
        assert flags and all(f in out.out for f in flags), argv
    rl_help = subprocess.run([sys.executable, "-m", "preftune", "rl", "--help"], capture_output=True, text=True)  # as a user runs it
    assert rl_help.returncode == 0 and "--algo {raft,reinforce,rloo,grpo,ppo}" in rl_help.stdout


def test_required_flags_and_replay(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["rl", "--model", "m", "--prompts", "p"])
    assert "--reward is required" in capsys.readouterr().err
    saved = tmp_path / "run_config.json"
    original = RLConfig(model="m", reward="gold", prompts="p", beta=0.3)
    save_config(original, saved, command="rl", preftune="0.1.0")
    _, replayed, _ = parse(["rl", "--config", str(saved)])
    assert replayed == original
    _, changed, _ = parse(["rl", "--config", str(saved), "--train.lr", "2e-4", "--no-whiten-rewards", "--gen.seed", "7"])
    assert changed.train.lr == 2e-4 and changed.gen.seed == 7 and changed.beta == 0.3 and changed.train.seed == 0
    with pytest.raises(SystemExit):
        parse(["dpo", "--config", str(saved)])
    assert "a config of `preftune rl`" in capsys.readouterr().err
    saved.write_text(json.dumps({"command": "rl", "model": "m", "betta": 1}))
    with pytest.raises(SystemExit):
        parse(["rl", "--config", str(saved)])
    assert "RLConfig has no field 'betta'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """world -> pretrain -> sft through the command line, with tiny budgets."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["world", "--out", str(d / "w"), "--corpus", "300", "--sft", "200", "--prompts", "50", "--heldout", "20"]) == 0
    common = ["--train.max-steps", "4", "--train.batch-size", "8", "--train.no-progress", "--tokens.max-length", "64"]
    pretrain = ["pretrain", "--data", str(d / "w/corpus.jsonl"), "--train.out", str(d / "base"), "--size", "micro", "--vocab-size", "400"]
    assert main([*pretrain, *common]) == 0
    assert main(["sft", "--model", str(d / "base"), "--data", str(d / "w/sft.jsonl"), "--train.out", str(d / "sft"), *common]) == 0
    return d


@pytest.mark.slow
def test_runs_write_config_metrics_and_a_loadable_model(trained):
    for run in ("base", "sft"):
        cfg = json.loads((trained / run / "run_config.json").read_text())
        assert cfg["train"]["max_steps"] == 4 and cfg["command"] == ("pretrain" if run == "base" else "sft")
        rows = [json.loads(line) for line in (trained / run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 4 and "eval/loss" in rows[-1]
        assert (trained / run / "config.json").exists() and (trained / run / "tokenizer.json").exists()
    _, replayed, _ = parse(["sft", "--config", str(trained / "sft/run_config.json")])  # the saved config replays the run
    assert replayed.train.max_steps == 4 and replayed.model == str(trained / "base")


@pytest.mark.slow
def test_eval_json_has_the_same_numbers_as_the_table(trained, capsys):
    args = ["eval", "--model", str(trained / "sft"), "--prompts", str(trained / "w/heldout.jsonl"), "--gen.max-new-tokens", "8"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sft = report["policies"][str(trained / "sft")]
    assert report["n_prompts"] == 20 and sft["n"] == 20
    assert set(report["policies"]) == {str(trained / "sft"), "demonstrator"}
    assert main(args) == 0
    table = capsys.readouterr().out
    assert f"{sft['gold']:.3f}" in table and f"{report['policies']['demonstrator']['gold']:.3f}" in table


@pytest.mark.slow
def test_bad_input_is_a_clear_error_not_a_traceback(trained, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": " c"}\n{"prompt": "p"}\n')
    assert (
        main(["sft", "--model", str(trained / "base"), "--data", str(bad), "--train.out", str(tmp_path / "x"), "--train.no-progress"]) == 2
    )
    assert f"{bad}:2: missing field 'completion'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--prompts", str(bad)]) == 2
    assert "no model here" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a device that is not there is named, not a traceback
        assert main(["sample", "--model", str(trained / "sft"), "--prompts", str(bad), "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_annotate_reward_score_dpo_rl_through_the_cli(trained, capsys):
    d = trained
    args = ["--model", str(d / "sft"), "--prompts", str(d / "w/prompts.jsonl"), "--k", "4", "--out", str(d / "s.jsonl")]
    assert main(["sample", *args, "--gen.max-new-tokens", "12"]) == 0
    sets = [json.loads(line) for line in (d / "s.jsonl").read_text().splitlines()]
    assert len(sets) == 50 and all(len(s["completions"]) == 4 == len(s["ended"]) for s in sets)
    assert main(["annotate", "--simulated", "--samples", str(d / "s.jsonl"), "--out", str(d / "pairs.jsonl"), "--minority", "0.5"]) == 0
    assert main(["annotate", "--simulated", "--samples", str(d / "s.jsonl"), "--out", str(d / "ranks.jsonl"), "--format", "rankings"]) == 0
    pairs = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 100 and {p["group"] for p in pairs} == {"majority", "minority"}
    ranks = [json.loads(line) for line in (d / "ranks.jsonl").read_text().splitlines()]
    assert all(sorted(r["ranking"]) == [0, 1, 2, 3] for r in ranks)

    # the reward model on every ranking (eval data = the same file), so its centring set is every compared completion
    common = ["--train.max-steps", "3", "--train.batch-size", "4", "--train.no-progress", "--train.eval-every", "0"]
    data = ["--data", str(d / "ranks.jsonl"), "--eval-data", str(d / "ranks.jsonl")]
    assert main(["reward", "--model", str(d / "sft"), *data, "--train.out", str(d / "rm"), *common]) == 0
    report = json.loads((d / "rm/eval.json").read_text())
    assert report["held_out_pairs"] == 50 * 6  # every pair of 50 rankings of 4
    completions = sorted({(r["prompt"], c) for r in ranks for c in r["completions"]})
    from_file = d / "completions.jsonl"
    from_file.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in completions))
    capsys.readouterr()
    assert main(["score", "--reward", str(d / "rm"), "--data", str(from_file)]) == 0
    scores = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == len(completions) and abs(sum(scores) / len(scores)) < 1e-4  # centred on exactly these

    for loss in ("dpo", "simpo", "unlikelihood"):
        assert (
            main(
                ["dpo", "--model", str(d / "sft"), "--data", str(d / "pairs.jsonl"), "--train.out", str(d / loss), "--loss", loss, *common]
            )
            == 0
        )
        assert (d / loss / "config.json").exists()
    assert len(list(Path(os.environ["PREFTUNE_CACHE"], "reference").glob("*.pt"))) == 1  # dpo's; simpo and unlikelihood use none
    rl = ["rl", "--model", str(d / "sft"), "--reward", str(d / "rm"), "--prompts", str(d / "w/prompts.jsonl"), "--iterations", "2"]
    rl += ["--prompts-per-iter", "4", "--gen.max-new-tokens", "8", "--train.batch-size", "8", "--train.no-progress"]
    assert main([*rl, "--algo", "grpo", "--train.out", str(d / "grpo")]) == 0
    rows = [json.loads(line) for line in (d / "grpo/iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
