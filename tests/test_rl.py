"""RL: the algorithms on hand-built rollouts, then ``preftune rl`` and ``preftune best-of-n`` end to end."""

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from preftune import losses
from preftune.atomic import write_jsonl
from preftune.commands import rl
from preftune.config import RL_ALGORITHMS, BestOfNConfig, RLConfig, SamplingConfig, TrainConfig
from preftune.data import Batch
from preftune.logprobs import LogProbs, completion_logps
from preftune.methods.algorithms import ALGORITHMS, GRPO, PPO, RAFT, REINFORCE, RLOO, build_algorithm
from preftune.methods.rl import RLHF, Scorer
from preftune.models import add_lora, build_reward_model, load_policy, save_model
from preftune.rollout import Rollout
from preftune.world import lists


def _rollout(scores, kl=None, lengths=None, beta=0.5):
    """N right-padded rows: one prompt token, then a completion of lengths[i] tokens; T = 1 + max length."""
    n = len(scores)
    lengths = lengths or [3] * n
    T = 1 + max(lengths)
    attention = torch.tensor([[t < 1 + m for t in range(T)] for m in lengths])
    completion = attention.clone()
    completion[:, 0] = False
    mask = completion[:, 1:]
    kl = torch.zeros(n, T - 1) if kl is None else torch.tensor(kl) * mask
    scores = torch.tensor(scores)
    zeros = torch.zeros(n, T - 1)
    return Rollout(
        torch.arange(n * T).view(n, T) % 7,
        attention,
        completion,
        zeros,
        zeros,
        kl,
        scores,
        losses.kl_penalised_rewards(scores, kl, beta),
        beta,
    )


class FixedValues:
    """A value model whose token_scores are given: (N, T), position t values the prefix up to token t."""

    def __init__(self, values):
        self.values = torch.tensor(values)

    def token_scores(self, input_ids, attention_mask):
        return self.values[:, : input_ids.shape[1]]


def test_ppo_targets_on_a_hand_computed_rollout():
    """One completion of 3 tokens (a, b, EOS) after a 1-token prompt; kl = (0.2, -0.1, 0.3), score 1,
    β = 0.5 -> token rewards (-0.1, 0.05, -0.15 + 1): the score arrives on the last completion token
    and each token pays -β·kl. Values (0.5, 0.2, 0.4, 9.9) by prefix: the action at position t (token
    t+1) is valued by the prefix ending at t, so the value after EOS (9.9) is never used.
    γ = λ = 1: returns = rewards-to-go (0.8, 0.9, 0.85); advantages = returns - V = (0.3, 0.7, 0.45),
    then whitened: mean 0.48333, sd 0.20207."""
    rollout = _rollout([1.0], kl=[[0.2, -0.1, 0.3]], beta=0.5)
    ppo = PPO(FixedValues([[0.5, 0.2, 0.4, 9.9]]), clip=0.2, value_clip=0.2, value_coef=0.1, gamma=1.0, lam=1.0, epochs=2)
    targets, stats = ppo.targets(rollout, baseline=0.0)
    assert targets.values[0].tolist() == pytest.approx([0.5, 0.2, 0.4])
    assert targets.returns[0].tolist() == pytest.approx([0.8, 0.9, 0.85])
    mean, sd = 1.45 / 3, math.sqrt(((0.3 - 1.45 / 3) ** 2 + (0.7 - 1.45 / 3) ** 2 + (0.45 - 1.45 / 3) ** 2) / 2)
    assert targets.advantages[0].tolist() == pytest.approx([(a - mean) / sd for a in (0.3, 0.7, 0.45)], abs=1e-5)
    assert stats["value_mean"] == pytest.approx(1.1 / 3)
    more_kl = ppo.targets(_rollout([1.0], kl=[[1.2, -0.1, 0.3]], beta=0.5), 0.0)[0]  # kl at the first token +1 -> its return -0.5
    assert more_kl.returns[0, 0].item() == pytest.approx(0.8 - 0.5)


def test_grpo_advantages_are_relative_to_the_group_and_its_loss_gradient_is_minus_a_over_length():
    """Prompt 1's scores (1, 3): mean 2, sd √2 -> ∓1/√2; prompt 2's (0, 0): 0. At ratio 1 and π = π_ref,
    the loss is -A per token averaged over the sequence, so d loss / d log π(token) = -A_i / n_i."""
    grpo = GRPO(k=2, clip=0.2, scale_std=True)
    targets, _ = grpo.targets(_rollout([1.0, 3.0, 0.0, 0.0], lengths=[2, 4, 3, 3]), baseline=0.0)
    assert targets.advantages.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0], abs=1e-4)
    token_logps = targets.old_logps.clone().requires_grad_(True)
    mask = targets.mask
    total, count, metrics = grpo.loss(LogProbs((token_logps * mask).sum(-1), token_logps, mask), targets)
    total.backward()
    assert count == 4 and metrics["clipfrac"] == 0.0 and metrics["kl_ref"] == 0.0
    want = [[-a / n if m else 0.0 for m in row] for a, n, row in zip(targets.advantages.tolist(), (2, 4, 3, 3), mask.tolist())]
    torch.testing.assert_close(token_logps.grad, torch.tensor(want))
    # π moved off π_ref by +0.5 nats per token (π_old = π, so the ratio stays 1): on the rows with A = 0,
    # the gradient is the KL term's alone, β·d k3/d log π / n = β·(1 - e^-0.5) / n, pulling π back
    moved = replace(targets, old_logps=targets.old_logps + 0.5 * mask)
    token_logps = moved.old_logps.clone().requires_grad_(True)
    grpo.loss(LogProbs((token_logps * mask).sum(-1), token_logps, mask), moved)[0].backward()
    assert token_logps.grad[2][mask[2]].tolist() == pytest.approx([0.5 * (1 - math.exp(-0.5)) / 3] * 3)
    centred, _ = GRPO(k=2, clip=0.2, scale_std=False).targets(_rollout([1.0, 3.0, 0.0, 0.0]), 0.0)
    assert centred.advantages.tolist() == [-1.0, 1.0, 0.0, 0.0]  # Dr. GRPO


def test_sequence_algorithms_targets():
    """Rewards (score - β·Σkl, β = 0.5): (1, 3, 0, 2) - 0.5·(0, 2, 0, 0) = (1, 2, 0, 2), two prompts of 2."""
    rollout = _rollout([1.0, 3.0, 0.0, 2.0], kl=[[0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert rollout.rewards.tolist() == [1.0, 2.0, 0.0, 2.0]
    assert REINFORCE().targets(rollout, baseline=1.5)[0].advantages.tolist() == [-0.5, 0.5, -1.5, 0.5]
    assert RLOO(k=2).targets(rollout, 0.0)[0].advantages.tolist() == [-1.0, 1.0, -2.0, 2.0]
    kept, stats = RAFT(k=2, keep=1).targets(rollout, 0.0)
    assert kept.scores.tolist() == [3.0, 2.0] and stats["kept_score"] == 2.5
    with pytest.raises(ValueError, match="rloo needs --k 2"):
        RLOO(k=1)


def test_every_algorithm_name_is_registered_once():
    assert tuple(ALGORITHMS) == RL_ALGORITHMS


# ------------------------------------------------------------------------------- runs end to end


@pytest.fixture()
def world_dir(tmp_path, tokenizer):
    policy = build_model_dir(tmp_path / "sft", tokenizer)
    rm, _ = build_reward_model(policy, seed=0)
    save_model(rm.model, tokenizer, tmp_path / "rm")
    write_jsonl(tmp_path / "prompts.jsonl", lists.prompts(40, seed=5))
    write_jsonl(tmp_path / "corpus.jsonl", lists.corpus(40, seed=5))
    return tmp_path


def build_model_dir(path, tokenizer):
    from preftune.models import build_model

    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, path)
    return path


def _cfg(d, algo, out, **kw):
    train = TrainConfig(out=str(out), lr=1e-3, batch_size=8, warmup=0.0, schedule="constant", save_every=1, progress=False)
    return RLConfig(
        model=str(d / "sft"),
        reward=str(d / "rm"),
        prompts=str(d / "prompts.jsonl"),
        algo=algo,
        iterations=3,
        prompts_per_iter=4,
        k=4,
        keep=2,
        gen=SamplingConfig(max_new_tokens=10),
        train=train,
        **kw,
    )


@pytest.mark.slow
@pytest.mark.parametrize("algo", RL_ALGORITHMS)
def test_each_algorithm_runs_logs_every_iteration_and_moves_the_policy(world_dir, algo):
    out = world_dir / algo
    extra = {"ptx_data": str(world_dir / "corpus.jsonl"), "ptx_coef": 0.5, "target_kl": 1.0} if algo == "ppo" else {}
    rl.rl(_cfg(world_dir, algo, out, **extra))
    rows = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]  # 3 trained on + the final policy's rollout
    for key in ("score", "gold", "kl", "kl_k3", "entropy", "length", "eos_rate", "sample_s", "score_s"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is pi_SFT's own
    assert all("train_s" in r for r in rows[:-1])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("approx_kl" in s and "entropy" in s for s in steps)
    if algo == "grpo":
        assert all("clipfrac" in s and "kl_ref" in s for s in steps)
    if algo == "ppo":
        assert all("clipfrac" in s and "value_loss" in s and "ptx_nll" in s for s in steps)
        assert "explained_variance" in rows[0]
        assert rows[2]["beta"] != rows[0]["beta"]  # the adaptive controller moved β
    before, after = load_file(str(world_dir / "sft/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["rollout_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["reinforce", "grpo", "ppo"])
def test_a_resumed_run_equals_an_uninterrupted_one(world_dir, algo, monkeypatch):
    rl.rl(_cfg(world_dir, algo, world_dir / "whole"))

    class Killed(Exception):
        pass

    real_train = rl.train

    def train_then_die(model, method, cfg, on_step=None):
        def die(step):
            if step == 5:
                raise Killed

        return real_train(model, method, cfg, on_step=die)

    monkeypatch.setattr(rl, "train", train_then_die)
    with pytest.raises(Killed):
        rl.rl(_cfg(world_dir, algo, world_dir / "cut"))
    monkeypatch.setattr(rl, "train", real_train)
    cfg = _cfg(world_dir, algo, world_dir / "cut")
    rl.rl(replace(cfg, train=replace(cfg.train, resume=True)))
    a, b = load_file(str(world_dir / "whole/model.safetensors")), load_file(str(world_dir / "cut/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def rows(d):
        lines = (d / "iterations.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")} for x in lines]  # timings differ

    assert rows(world_dir / "whole") == rows(world_dir / "cut")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["rloo", "ppo"])
def test_lora_rl_trains_adapters_against_the_start_itself_its_own_adapter_included(world_dir, tokenizer, algo):
    """The start is a LoRA run's output (merged weights + adapter, B != 0). Under ``rl --lora`` the
    reference is that start, not the bare base under its adapter (TRL #1340/#3194) and not the policy
    as it trains: every rollout's reference log-probs equal a fresh load of the start's."""
    start = world_dir / "sft-lora"
    adapted = add_lora(load_policy(world_dir / "sft")[0], seed=3)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    save_model(adapted, tokenizer, start)
    out = world_dir / f"lora-{algo}"
    rl.rl(replace(_cfg(world_dir, algo, out, lora=True), model=str(start)))
    start_model, bare = load_policy(start)[0], load_policy(world_dir / "sft")[0]
    for it in (0, 3):
        r = Rollout(**torch.load(out / f"rollouts/iter-{it:05d}.pt", weights_only=False)["targets"])
        batch = Batch(r.input_ids, r.attention_mask, r.completion_mask)
        with torch.no_grad():
            want, under = (completion_logps(m, batch).token_logps[r.mask] for m in (start_model, bare))
        torch.testing.assert_close(r.ref_logps[r.mask], want, atol=1e-4, rtol=0)
        assert (r.ref_logps[r.mask] - under).abs().max() > 0.1  # the bare base would be far off
    rows = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4) and rows[-1]["kl_k3"] > 0
    after, before = load_file(str(out / "model.safetensors")), load_file(str(start / "model.safetensors"))
    assert set(after) == set(before) and any(not torch.equal(after[k], before[k]) for k in before)  # merged: plain weights
    assert (out / "adapter/adapter_config.json").exists()


@pytest.mark.slow
def test_untracked_kl_at_beta_zero_trains_the_same_policy_without_a_reference(world_dir, monkeypatch):
    """β = 0: the KL touches neither rewards nor GRPO's loss, so --no-track-kl (no reference loaded,
    no reference pass) gives bit-identical weights and scores; only the KL columns are gone."""
    rl.rl(_cfg(world_dir, "grpo", world_dir / "tracked", beta=0.0))
    loads = []
    real_load = rl.load_policy
    monkeypatch.setattr(rl, "load_policy", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    rl.rl(_cfg(world_dir, "grpo", world_dir / "untracked", beta=0.0, track_kl=False))
    assert len(loads) == 1  # the policy only
    a, b = load_file(str(world_dir / "tracked/model.safetensors")), load_file(str(world_dir / "untracked/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    tracked, untracked = (
        [json.loads(x) for x in (world_dir / d / "iterations.jsonl").read_text().splitlines()] for d in ("tracked", "untracked")
    )
    assert [r["score"] for r in tracked] == [r["score"] for r in untracked]
    assert all(r["kl"] is None and r["kl_k3"] is None for r in untracked)
    # tracked: the columns are there and the policy has moved (k3 >= 0 per token, 0 only where pi = pi_ref; the k1
    # Monte Carlo mean can fall below 0 on 32 samples)
    assert tracked[-1]["kl"] is not None and tracked[-1]["kl_k3"] > 0


@pytest.mark.parametrize("batch_size,whole", [(8, True), (6, False)])
def test_micro_batches_keep_each_prompts_rows_together_when_they_fit(tmp_path, batch_size, whole):
    """8 prompts × 4 samples, prompt-major: batches of 8 rows hold two whole prompts each (shuffled
    by prompt, differently per epoch); batches of 6 cannot, and rows shuffle one by one."""
    cfg = RLConfig(model="m", reward="gold", prompts="p", algo="rloo", k=4, prompts_per_iter=8, update_epochs=2)
    cfg = replace(cfg, train=replace(cfg.train, out=str(tmp_path), batch_size=batch_size))
    method = RLHF(cfg, build_algorithm(cfg), None, None, None, None, ["q"])
    method._rollout = lambda epoch: [None] * 32
    micro = method.batches(0)
    epochs = [sum(micro[: len(micro) // 2], []), sum(micro[len(micro) // 2 :], [])]
    assert all(sorted(e) == list(range(32)) for e in epochs) and epochs[0] != epochs[1]
    kept = all({i // 4 for i in b} == {i // 4 for i in b if all(j in b for j in range(i // 4 * 4, i // 4 * 4 + 4))} for b in micro)
    assert kept == whole


def test_bad_settings_fail_clearly(world_dir):
    with pytest.raises(ValueError, match="rloo needs --k 2"):
        rl.rl(replace(_cfg(world_dir, "rloo", world_dir / "x"), k=1))
    with pytest.raises(ValueError, match="--no-track-kl needs --beta 0"):
        rl.rl(replace(_cfg(world_dir, "grpo", world_dir / "x"), track_kl=False))
    with pytest.raises(ValueError, match="--reward is required"):
        Scorer("")


@pytest.mark.slow
def test_best_of_n_command_on_gold_beats_one_sample(world_dir):
    common = dict(
        model=str(world_dir / "sft"), reward="gold", prompts=str(world_dir / "prompts.jsonl"), gen=SamplingConfig(max_new_tokens=10)
    )
    one = rl.best_of_n(BestOfNConfig(n=1, **common))
    eight = rl.best_of_n(BestOfNConfig(n=8, out=str(world_dir / "bon.jsonl"), **common))
    assert eight["gold"] > one["gold"] and eight["kl"] == pytest.approx(math.log(8) - 7 / 8) and one["kl"] == 0.0
    rows = [json.loads(line) for line in (world_dir / "bon.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and [r["score"] for r in rows] == pytest.approx(
        [lists.gold_reward(r["prompt"], r["completion"], r["ended"]) for r in rows]
    )


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [False, True])
def test_ppo_starts_at_ratio_one_with_dropout_off(tmp_path, tokenizer, gpt2_with_dropout, dropout):
    """GPT-2 with dropout 0.1: rollouts are sampled without dropout, so a policy trained with it sees
    π/π_old ≠ 1 before any update. The RL trainer's default (dropout off) starts at ratio 1 (up to the
    KV cache's rounding) and clips nothing."""
    write_jsonl(tmp_path / "prompts.jsonl", lists.prompts(8, seed=5))
    assert RLConfig.__dataclass_fields__["train"].default.dropout is False
    train = TrainConfig(
        out=str(tmp_path / f"d{dropout}"), lr=0.0, batch_size=16, save_every=0, progress=False, log_every=1, dropout=dropout
    )
    cfg = RLConfig(
        model=str(gpt2_with_dropout), reward="gold", prompts=str(tmp_path / "prompts.jsonl"), algo="ppo", iterations=1,
        prompts_per_iter=4, k=4, gen=SamplingConfig(max_new_tokens=8), train=train,
    )  # fmt: skip
    rl.rl(cfg)
    first = json.loads((tmp_path / f"d{dropout}" / "metrics.jsonl").read_text().splitlines()[0])
    if dropout:
        assert first["approx_kl"] > 1e-4
    else:
        assert first["approx_kl"] < 1e-6 and first["clipfrac"] == 0.0
