import json

import pytest
import torch

from preftune.alarms import Alarms, above, displaced, dpo_rules, fell, left_band, rl_rules, rose_with
from preftune.atomic import write_jsonl
from preftune.cli import main
from preftune.config import AlarmConfig, DPOConfig, SamplingConfig
from preftune.data import Comparison, collate
from preftune.logprobs import completion_logps
from preftune.methods.dpo import DirectPreference, PairData, SampleMonitor, last_token_logps, preference_loss, reference_logps
from preftune.world import lists


def test_each_rule_fires_once_at_the_step_its_condition_first_holds():
    alarms = Alarms(
        {
            "kl": above("kl", 2.0, "KL"),
            "eos": fell("eos", 0.2, "EOS rate"),
            "length": left_band("length", 0.5, "length"),
            "displacement": displaced("chosen", "margin", 3.0),
            "disagreement": rose_with("spread", "proxy", 1.0, "spread"),
        }
    )
    alarms.observe_start({"chosen": 0.0, "margin": 0.0})
    steps = [
        {"kl": 0.0, "eos": 1.0, "length": 8.0, "chosen": 0.0, "margin": 0.0, "spread": 0.1, "proxy": 0.0},
        {"kl": 1.9, "eos": 0.81, "length": 11.9, "chosen": -2.9, "margin": 5.0, "spread": 0.19, "proxy": 0.5},  # all just inside
        {"kl": 2.1, "eos": 0.79, "length": 12.1, "chosen": -3.1, "margin": -0.1, "spread": 0.19, "proxy": 0.5},  # kl, eos, length fire
        {"kl": 9.0, "eos": 0.1, "length": 3.9, "chosen": -3.1, "margin": 0.1, "spread": 0.21, "proxy": -0.1},  # displacement
        {"kl": 9.0, "eos": 0.1, "length": 3.9, "chosen": -9.0, "margin": 9.0, "spread": 0.3, "proxy": 0.1},  # disagreement
    ]
    fired = [alarms.check(step, values) for step, values in enumerate(steps)]
    assert [sorted(f) for f in fired] == [[], [], ["eos", "kl", "length"], ["displacement"], ["disagreement"]]
    assert fired[2]["kl"] == "KL is 2.1, above 2"
    assert fired[2]["eos"] == "EOS rate fell from 1 to 0.79"
    assert fired[2]["length"] == "length went from 8 to 12.1, outside ±50%"
    assert fired[3]["displacement"].startswith("likelihood displacement: log pi(chosen) fell 3.1 nats")
    assert alarms.fired == {"kl": 2, "eos": 2, "length": 2, "displacement": 3, "disagreement": 4}

    again = Alarms(alarms.rules)  # a resumed run: what fired before does not fire again
    again.load_state(json.loads(json.dumps(alarms.state())))
    assert again.check(5, steps[-1]) == {}


def test_a_threshold_of_zero_turns_its_rule_off():
    assert set(dpo_rules(AlarmConfig())) == {"displacement", "kl", "eos", "length"}
    assert set(rl_rules(AlarmConfig())) == {"kl", "eos", "length", "disagreement"}
    assert set(dpo_rules(AlarmConfig(kl=0, displacement=0))) == {"eos", "length"}


def _pairs(tokenizer, n=8):
    from preftune.commands.dpo import to_pairs

    rows = lists.sft_data(2 * n, seed=3)
    recs = [Comparison(a["prompt"], a["completion"], b["completion"]) for a, b in zip(rows[::2], rows[1::2])]
    return to_pairs(recs, tokenizer, DPOConfig().tokens), recs


def test_the_last_token_log_prob_is_each_chosen_completions_eos(model, tokenizer):
    pairs, _ = _pairs(tokenizer)
    lp = completion_logps(model, collate([p.chosen for p in pairs], tokenizer.pad_token_id))
    got = last_token_logps(lp)
    for i, p in enumerate(pairs):  # a naive loop: the model's log-prob of the EOS after prompt + completion
        ids = torch.tensor(p.chosen.input_ids)
        assert ids[-1] == tokenizer.eos_token_id
        with torch.no_grad():
            logits = model(ids[None, :-1]).logits[0, -1]
        assert got[i].item() == pytest.approx(torch.log_softmax(logits.float(), -1)[tokenizer.eos_token_id].item(), abs=1e-4)


def test_the_nll_term_adds_its_coefficient_times_each_chosen_completions_token_mean_nll(model, tokenizer):
    pairs, _ = _pairs(tokenizer)
    pairs = reference_logps(model, pairs, tokenizer.pad_token_id, False)
    cfg = DPOConfig(model="m", data="d", beta=0.5)
    data = PairData(pairs, pairs, tokenizer.pad_token_id, 8, 0)
    plain, rpo = DirectPreference(data, preference_loss(cfg), 0.5), DirectPreference(data, preference_loss(cfg), 0.5, nll_coef=0.7)
    with torch.no_grad():
        gap = rpo.loss(model, pairs).loss - plain.loss(model, pairs).loss
        nll = 0.0
        for p in pairs:  # one pair at a time: - sum log p(y_w) / |y_w|
            lp = completion_logps(model, collate([p.chosen], tokenizer.pad_token_id))
            nll += -lp.logps[0].item() / lp.n_tokens[0].item()
    assert gap.item() == pytest.approx(0.7 * nll, rel=1e-4)


def test_the_sample_monitor_of_the_reference_itself_has_kl_zero(model, tokenizer):
    """The sampler's log-probs of the tokens it drew and the training forward's agree, so pi_SFT's KL
    to itself is 0 to rounding; every sample is counted in length and EOS rate."""
    _, recs = _pairs(tokenizer)
    monitor = SampleMonitor(model, tokenizer, [r.prompt for r in recs], SamplingConfig(max_new_tokens=6, seed=1), 64)
    out = monitor(model)
    assert out["sample/kl"] == pytest.approx(0.0, abs=1e-4)
    assert 0 < out["sample/length"] <= 6 and 0.0 <= out["sample/eos_rate"] <= 1.0
    assert monitor(model) == out  # a fixed seed: evaluations differ only by the weights


@pytest.fixture()
def pairs_file(tmp_path):
    rows = lists.sft_data(64, seed=2)
    pairs = [{"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]} for a, b in zip(rows[::2], rows[1::2])]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    return tmp_path / "pairs.jsonl"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("stop", [True, False])
def test_a_dpo_run_driven_off_its_reference_raises_an_alarm_and_can_stop_there(tmp_path, saved_policy, pairs_file, capsys, stop):
    """β 0.01 and lr 1e-2 drive a micro policy far from pi_SFT within a few steps: the KL alarm prints
    one line, is in metrics.jsonl, and with --train.stop-on-alarm the run ends there, saved."""
    out = tmp_path / "dpo"
    args = ["dpo", "--model", saved_policy, "--data", str(pairs_file), "--beta", "0.01", "--train.lr", "1e-2", "--train.out", str(out)]
    args += ["--train.max-steps", "30", "--train.batch-size", "8", "--train.eval-every", "1", "--train.no-progress"]
    args += ["--alarm.kl", "3", "--monitor-prompts", "8", "--gen.max-new-tokens", "12"]
    assert main([*args, "--train.stop-on-alarm" if stop else "--train.no-stop-on-alarm"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ALARM")]
    assert len([line for line in printed if "[kl]" in line]) == 1, printed
    rows = _rows(out / "metrics.jsonl")
    at = [r["step"] for r in rows if "alarm/kl" in r]
    assert len(at) == 1 and rows[0]["eval/sample/kl"] <= 3 < next(r["eval/sample/kl"] for r in rows if "alarm/kl" in r)
    assert (rows[-1]["step"] == at[0]) if stop else (rows[-1]["step"] == 30 > at[0])
    assert (out / "model.safetensors").exists()
    from preftune.alarms import dpo_rules, replay
    from preftune.commands.plot import alarm_steps

    # replayed over the logged monitors, the same rules raise the same alarms at the same steps
    assert sorted(replay(rows, dpo_rules(AlarmConfig(kl=3)))) == sorted(alarm_steps(out)) != []
    assert ("kl" in dict((r, t) for t, r in alarm_steps(out))) and main(["plot", str(out)]) == 0 and (out / "curves.png").exists()
    assert {"logps/ref_chosen", "logps/eos_chosen", "eval/logratio/chosen", "eval/margin", "eval/sample/length"} <= set(rows[1])
    assert rows[0]["step"] == 0 and rows[0]["eval/sample/kl"] == pytest.approx(0.0, abs=1e-4)  # pi_SFT, measured before training


@pytest.mark.slow
def test_an_rl_run_driven_off_its_reference_stops_on_its_alarm_and_logs_the_monitors(tmp_path, saved_policy, capsys):
    from preftune.models import build_reward_model, save_model

    rm, tok = build_reward_model(saved_policy, seed=0)
    save_model(rm.model, tok, tmp_path / "rm")
    rm2, _ = build_reward_model(saved_policy, seed=1)
    save_model(rm2.model, tok, tmp_path / "rm2")
    write_jsonl(tmp_path / "prompts.jsonl", lists.prompts(32, seed=5))
    out = tmp_path / "rl"
    args = ["rl", "--model", saved_policy, "--reward", str(tmp_path / "rm"), "--prompts", str(tmp_path / "prompts.jsonl"), "--beta", "0"]
    args += ["--iterations", "12", "--prompts-per-iter", "8", "--gen.max-new-tokens", "10", "--train.lr", "1e-2", "--train.batch-size", "8"]
    args += ["--monitor-rewards", str(tmp_path / "rm2"), "--alarm.kl", "2", "--train.stop-on-alarm", "--train.no-progress"]
    assert main([*args, "--train.out", str(out)]) == 0
    assert any(line.startswith("ALARM rl step") and "[kl]" in line for line in capsys.readouterr().out.splitlines())
    rows = _rows(out / "iterations.jsonl")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4) and rows[0]["sampler_gap"] < 1e-4
    assert all(r["disagreement"] > 0 for r in rows)
    assert len(rows) < 13 and rows[-2]["kl"] > 2  # stopped on the rollout whose KL crossed, then the final one measured
    assert any("alarm/kl" in r for r in _rows(out / "metrics.jsonl"))


def test_a_run_went_wrong_when_gold_stood_the_fall_below_its_best_so_far_and_the_lead_counts_steps_before_that():
    from preftune.experiments.judge import alarm_outcome, alarm_summary

    collapse = [(0, 0.6), (40, 0.7), (80, 0.55), (120, -0.1), (160, 0.65)]  # best 0.7, then 0.15 and 0.8 below it; recovers
    a = alarm_outcome(collapse, 170, [(80, "kl"), (120, "eos"), (120, "length")], fall=0.2)
    assert a["went_wrong"] and a["drop_step"] == 120 and a["fell"] == pytest.approx(0.8)
    assert a["alarm_step"] == 80 and a["rules"] == ["kl"] and a["lead"] == 40 and a["peak"] == 0.7 and a["end"] == 0.65
    late = alarm_outcome(collapse, 170, [(160, "kl")], fall=0.2)
    assert late["lead"] == -40  # fired after gold had fallen
    drift = alarm_outcome([(0, 0.6), (40, 0.75), (80, 0.56), (120, 0.6)], 120, [], fall=0.2)  # 0.19 below its best: healthy
    assert not drift["went_wrong"] and drift["lead"] is None and not drift["flagged"]
    noisy = alarm_outcome([(0, 0.6), (40, 0.62)], 40, [(40, "length")], fall=0.2)
    assert alarm_summary([a, late, drift, noisy]) == {
        "runs": 4,
        "went_wrong": 2,
        "detected": 2,
        "healthy": 2,
        "false_alarms": 1,
        "lead_median": 0.0,
    }
