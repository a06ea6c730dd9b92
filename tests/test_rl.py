import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from preftune import losses, rl
from preftune.config import GenerateConfig, TrainConfig
from preftune.data import collate, write_jsonl
from preftune.logprobs import completion_logps
from preftune.models import build_reward_model, save_model
from preftune.rollout import sample
from preftune.world import lists

# ------------------------------------------------------------------------------------- the maths


def _gae_loop(rewards, values, gamma, lam):
    """GAE for one sequence, the textbook way."""
    T = len(rewards)
    adv = [0.0] * T
    last = 0.0
    for t in reversed(range(T)):
        next_v = values[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_a_plain_python_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 11
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    spans = [(0, 11), (3, 9), (2, 3), (5, 11), (1, 6)]  # prompt before, padding after
    for i, (a, b) in enumerate(spans):
        mask[i, a:b] = True
    adv, ret = losses.gae(rewards, values, mask, gamma, lam)
    for i, (a, b) in enumerate(spans):
        want_adv, want_ret = _gae_loop(rewards[i, a:b].tolist(), values[i, a:b].tolist(), gamma, lam)
        assert adv[i, a:b].tolist() == pytest.approx(want_adv, abs=1e-5)
        assert ret[i, a:b].tolist() == pytest.approx(want_ret, abs=1e-5)
        assert adv[i, :a].abs().sum() == 0 and adv[i, b:].abs().sum() == 0


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, -4.0]])
    b = losses.leave_one_out_baseline(r)
    assert b.flatten().tolist() == pytest.approx([11 / 3, 10 / 3, 3.0, 2.0, 0.0, 0.0, -4 / 3, 4 / 3])
    bumped = r.clone()
    bumped[0, 0] = 100.0  # a sample's own reward never enters its baseline
    assert losses.leave_one_out_baseline(bumped)[0, 0] == b[0, 0]
    assert (losses.leave_one_out_baseline(bumped)[0, 1:] != b[0, 1:]).all()
    with pytest.raises(ValueError):
        losses.leave_one_out_baseline(torch.ones(3, 1))


@pytest.mark.parametrize(
    "adv,ratio,zero",
    [(1.0, 1.5, True), (1.0, 1.1, False), (1.0, 0.5, False), (-1.0, 0.5, True), (-1.0, 0.9, False), (-1.0, 1.5, False)],
)
def test_ppo_gradient_is_zero_beyond_the_clip_range_in_the_favoured_direction(adv, ratio, zero):
    old = torch.tensor([[-1.0]])
    new = (old + math.log(ratio)).requires_grad_(True)
    loss, clipped = losses.ppo_clip(new, old, torch.tensor([[adv]]), clip=0.2)
    loss.sum().backward()
    assert (new.grad.abs().item() == 0.0) is zero
    assert bool(clipped.item()) is zero
    if not zero:  # the unclipped surrogate: d(-A·ρ)/d log π = -A·ρ
        assert new.grad.item() == pytest.approx(-adv * ratio)


def test_clipped_value_loss_hand_values():
    v, old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    # row 0: unclipped 0, clipped to 0.2 -> (0.2-1)^2 = 0.64, max -> 0.32; row 1: both 1 -> 0.5
    assert losses.clipped_value_loss(v, old, ret, 0.2).tolist() == pytest.approx([0.32, 0.5])


def test_k1_and_k3_are_unbiased_and_k3_is_never_negative():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    kl = float((p * (p / q).log()).sum())
    y = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[y], q.log()[y]
    k1, k3 = losses.kl_k1(lp, lq), losses.kl_k3(lp, lq)
    assert float(k1.mean()) == pytest.approx(kl, abs=0.005)
    assert float(k3.mean()) == pytest.approx(kl, abs=0.005)
    assert (k1 < 0).any() and (k3 >= 0).all()
    assert float(k3.var()) < float(k1.var())  # the reason to prefer it here
    grid = torch.linspace(-5, 5, 101)
    assert (losses.kl_k3(grid, torch.zeros_like(grid)) >= 0).all()


def test_policy_gradient_and_whiten():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses.policy_gradient(logps, torch.tensor([2.0, -1.0])).sum().backward()
    assert logps.grad.tolist() == [-2.0, 1.0]
    w = losses.whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([True, True, True, False]))
    assert w.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_best_of_n_picks_the_maximum_and_its_kl():
    scores = torch.tensor([0.1, 0.9, 0.3, -1.0, -2.0, -0.5, 4.0, 4.0, 1.0])
    assert rl.pick_best(scores, 3).tolist() == [1, 5, 6]  # a tie goes to the first
    assert rl.best_of_n_kl(1) == 0.0
    assert rl.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert rl.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_adaptive_kl_controller():
    assert rl.adaptive_beta(0.1, 12.0, 6.0, 1000, 10000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    assert rl.adaptive_beta(0.1, 5.4, 6.0, 1000, 10000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    assert rl.adaptive_beta(0.1, 6.0, 6.0, 1000, 10000) == 0.1


def test_per_token_sampling_logps_equal_the_training_forward(model, tokenizer):
    prompts = [r["prompt"] for r in lists.prompts(6, seed=3)]
    samples = sample(model, tokenizer, prompts, GenerateConfig(max_new_tokens=12, temperature=0.7, seed=1), n=2)
    lp = completion_logps(model, collate([s.encoded() for s in samples], tokenizer.pad_token_id), temperature=0.7)
    for i, s in enumerate(samples):
        assert lp.token_logps[i][lp.mask[i]].tolist() == pytest.approx(list(s.token_logps), abs=1e-4)


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
    return rl.RLConfig(
        model=str(d / "sft"),
        reward=str(d / "rm"),
        prompts=str(d / "prompts.jsonl"),
        algo=algo,
        iterations=3,
        prompts_per_iter=4,
        k=4,
        keep=2,
        gen=GenerateConfig(max_new_tokens=10),
        train=train,
        **kw,
    )


@pytest.mark.parametrize("algo", rl.ALGOS)
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
    if algo == "ppo":
        assert all("clipfrac" in s and "value_loss" in s and "ptx_nll" in s for s in steps)
        assert "explained_variance" in rows[0]
        assert rows[2]["beta"] != rows[0]["beta"]  # the adaptive controller moved β
    before, after = load_file(str(world_dir / "sft/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["rollout_s"] > 0


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
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


def test_bad_settings_fail_clearly(world_dir):
    with pytest.raises(ValueError, match="rloo needs --k 2"):
        rl.rl(replace(_cfg(world_dir, "rloo", world_dir / "x"), k=1))
    with pytest.raises(ValueError, match="--reward is required"):
        rl.Scorer("")


def test_best_of_n_command_on_gold_beats_one_sample(world_dir):
    common = dict(
        model=str(world_dir / "sft"), reward="gold", prompts=str(world_dir / "prompts.jsonl"), gen=GenerateConfig(max_new_tokens=10)
    )
    one = rl.best_of_n(rl.BestOfNCommand(n=1, **common))
    eight = rl.best_of_n(rl.BestOfNCommand(n=8, out=str(world_dir / "bon.jsonl"), **common))
    assert eight["gold"] > one["gold"] and eight["kl"] == pytest.approx(math.log(8) - 7 / 8) and one["kl"] == 0.0
    rows = [json.loads(line) for line in (world_dir / "bon.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and [r["score"] for r in rows] == pytest.approx(
        [lists.gold_reward(r["prompt"], r["completion"], r["ended"]) for r in rows]
    )
