import json

import pytest

from preftune.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """world -> pretrain -> sft through the command line, with tiny budgets."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["world", "--out", str(d / "w"), "--corpus", "300", "--sft", "200", "--prompts", "50", "--heldout", "20"]) == 0
    common = ["--max-steps", "4", "--batch-size", "8", "--no-progress", "--max-length", "64"]
    assert (
        main(["pretrain", "--data", str(d / "w/corpus.jsonl"), "--out", str(d / "base"), "--size", "micro", "--vocab-size", "400", *common])
        == 0
    )
    assert main(["sft", "--model", str(d / "base"), "--data", str(d / "w/sft.jsonl"), "--out", str(d / "sft"), *common]) == 0
    return d


def test_runs_write_config_metrics_and_a_loadable_model(trained):
    for run in ("base", "sft"):
        cfg = json.loads((trained / run / "run_config.json").read_text())
        assert cfg["train"]["max_steps"] == 4 and cfg["command"] == ("pretrain" if run == "base" else "sft")
        rows = [json.loads(line) for line in (trained / run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 4 and "eval/loss" in rows[-1]
        assert (trained / run / "config.json").exists() and (trained / run / "tokenizer.json").exists()


def test_eval_json_has_the_same_numbers_as_the_table(trained, capsys):
    args = ["eval", "--model", str(trained / "sft"), "--prompts", str(trained / "w/heldout.jsonl"), "--max-new-tokens", "8"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sft = report["policies"][str(trained / "sft")]
    assert report["n_prompts"] == 20 and sft["n"] == 20
    assert set(report["policies"]) == {str(trained / "sft"), "demonstrator"}
    assert main(args) == 0
    table = capsys.readouterr().out
    assert f"{sft['gold']:.3f}" in table and f"{report['policies']['demonstrator']['gold']:.3f}" in table


def test_bad_input_is_a_clear_error_not_a_traceback(trained, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": " c"}\n{"prompt": "p"}\n')
    assert main(["sft", "--model", str(trained / "base"), "--data", str(bad), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert f"{bad}:2: missing field 'completion'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--prompts", str(bad)]) == 2
    assert "no model here" in capsys.readouterr().err


def test_sample_annotate_reward_score_dpo_through_the_cli(trained, capsys):
    d = trained
    assert (
        main(
            [
                "sample",
                "--model",
                str(d / "sft"),
                "--prompts",
                str(d / "w/prompts.jsonl"),
                "--k",
                "4",
                "--out",
                str(d / "s.jsonl"),
                "--max-new-tokens",
                "12",
            ]
        )
        == 0
    )
    sets = [json.loads(line) for line in (d / "s.jsonl").read_text().splitlines()]
    assert len(sets) == 50 and all(len(s["completions"]) == 4 == len(s["ended"]) for s in sets)
    assert main(["annotate", "--simulated", "--samples", str(d / "s.jsonl"), "--out", str(d / "pairs.jsonl"), "--minority", "0.5"]) == 0
    assert main(["annotate", "--simulated", "--samples", str(d / "s.jsonl"), "--out", str(d / "ranks.jsonl"), "--format", "rankings"]) == 0
    pairs = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 100 and {p["group"] for p in pairs} == {"majority", "minority"}
    ranks = [json.loads(line) for line in (d / "ranks.jsonl").read_text().splitlines()]
    assert all(sorted(r["ranking"]) == [0, 1, 2, 3] for r in ranks)

    common = ["--max-steps", "3", "--batch-size", "4", "--no-progress", "--eval-every", "0"]
    assert main(["reward", "--model", str(d / "sft"), "--data", str(d / "ranks.jsonl"), "--out", str(d / "rm"), *common]) == 0
    report = json.loads((d / "rm/eval.json").read_text())
    assert 0.5 <= report["bayes_optimal_accuracy"] <= 1.0 and -1.0 <= report["spearman_gold"] <= 1.0
    capsys.readouterr()
    assert main(["score", "--reward", str(d / "rm"), "--data", str(d / "w/sft.jsonl")]) == 0
    scores = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == 200 and abs(sum(scores) / len(scores)) < 5.0

    for loss in ("dpo", "unlikelihood"):
        assert (
            main(["dpo", "--model", str(d / "sft"), "--data", str(d / "pairs.jsonl"), "--out", str(d / loss), "--loss", loss, *common]) == 0
        )
        assert (d / loss / "config.json").exists()
    assert (d / "dpo/ref_logps.pt").exists() and not (d / "unlikelihood/ref_logps.pt").exists()
