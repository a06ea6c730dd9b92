import math

import pytest
import torch

from preftune import losses


def test_bradley_terry_hand_values_and_gradient_sign():
    """Equal rewards: -log sigmoid(0) = log 2. r_w - r_l = 2: -log sigmoid(2) = log(1 + e^-2)
    = 0.126928. A margin of 2 turns that back into log 2; weight 0.5 halves it."""
    chosen = torch.tensor([0.0, 3.0, 3.0, 3.0], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0, 1.0, 1.0], requires_grad=True)
    margin = torch.tensor([0.0, 0.0, 2.0, 0.0])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.5])
    loss = losses.bradley_terry(chosen, rejected, margin, weight)
    expected = [math.log(2), math.log1p(math.exp(-2)), math.log(2), 0.5 * math.log1p(math.exp(-2))]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_w, lowers r_l
    assert chosen.grad[0].item() == pytest.approx(-0.5)  # d/dr_w = -(1 - sigmoid(0)) = -0.5


def test_ranking_expansion_gives_every_pair_once():
    pairs = losses.ranking_pairs((2, 0, 3, 1))
    assert len(pairs) == len(set(pairs)) == 6
    assert pairs == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    assert {frozenset(p) for p in pairs} == {frozenset((a, b)) for a in range(4) for b in range(a + 1, 4)}


def test_plackett_luce_reduces_to_bradley_terry_and_matches_hand_value():
    s = torch.tensor([0.3, 1.2])
    bt = losses.bradley_terry(s[1:], s[:1])
    assert losses.plackett_luce(s, torch.tensor([1, 0])).item() == pytest.approx(bt.item())
    # K = 3, scores (1, 2, 3), order (2, 1, 0): -log[e^3/(e^1+e^2+e^3) · e^2/(e^1+e^2)]
    s = torch.tensor([1.0, 2.0, 3.0])
    e = math.exp
    hand = -math.log(e(3) / (e(1) + e(2) + e(3)) * e(2) / (e(1) + e(2)))
    assert losses.plackett_luce(s, torch.tensor([2, 1, 0])).item() == pytest.approx(hand, abs=1e-6)


def test_dpo_family_hand_values():
    """Δ = 0: DPO = log 2, IPO = (1/(2β))², hinge = 1, cDPO = log 2 for any ε.
    β = 0.1, Δ = 20: DPO = log(1 + e^-2); hinge = 0 (past the margin βΔ = 1)."""
    zero = torch.zeros(1)
    assert losses.dpo(zero, 0.1).item() == pytest.approx(math.log(2))
    assert losses.ipo(zero, 0.1).item() == pytest.approx(25.0)
    assert losses.hinge(zero, 0.1).item() == pytest.approx(1.0)
    assert losses.cdpo(zero, 0.1, 0.3).item() == pytest.approx(math.log(2))
    d = torch.tensor([20.0])
    assert losses.dpo(d, 0.1).item() == pytest.approx(math.log1p(math.exp(-2)))
    assert losses.hinge(torch.tensor([10.0, 15.0, 5.0]), 0.1).tolist() == pytest.approx([0.0, 0.0, 0.5])


def test_preference_delta_is_the_difference_of_log_ratios():
    delta = losses.preference_delta(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]))
    assert delta.item() == pytest.approx((-3 + 4) - (-5 + 4.5))  # 1 - (-0.5) = 1.5


def test_ipo_minimum_is_at_half_inverse_beta():
    beta = 0.25
    grid = torch.linspace(-5, 5, 10001)
    assert grid[losses.ipo(grid, beta).argmin()].item() == pytest.approx(1 / (2 * beta), abs=1e-3)


def test_cdpo_with_zero_smoothing_is_dpo_and_soft_with_certain_target_is_dpo():
    d = torch.linspace(-10, 10, 21)
    torch.testing.assert_close(losses.cdpo(d, 0.5, 0.0), losses.dpo(d, 0.5))
    torch.testing.assert_close(losses.soft_dpo(d, 0.5, torch.ones(21)), losses.dpo(d, 0.5))
    # a soft target p has its minimum where sigmoid(βΔ) = p
    p = torch.tensor(0.75)
    grid = torch.linspace(-10, 10, 20001)
    best = grid[losses.soft_dpo(grid, 0.5, p).argmin()]
    assert torch.sigmoid(0.5 * best).item() == pytest.approx(0.75, abs=1e-3)


def test_preference_gradients_push_chosen_up_and_rejected_down():
    for fn in (
        lambda d: losses.dpo(d, 0.1),
        lambda d: losses.ipo(d, 0.1),
        lambda d: losses.hinge(d, 0.1),
        lambda d: losses.cdpo(d, 0.1, 0.1),
    ):
        chosen = torch.tensor([-4.0], requires_grad=True)
        rejected = torch.tensor([-4.0], requires_grad=True)
        fn(losses.preference_delta(chosen, rejected, torch.tensor([-4.0]), torch.tensor([-4.0]))).sum().backward()
        assert chosen.grad.item() < 0 < rejected.grad.item()  # descent raises log π(y_w), lowers log π(y_l)


def test_simpo_hand_values_and_margin():
    """Δ̄ = 0, γ = 0: log 2. β = 2, Δ̄ = 0.5, γ = 1: the margin cancels, log 2 again. β = 2, Δ̄ = 1,
    γ = 0.5: -log σ(1.5) = log(1 + e^-1.5). The margin γ shifts the minimum-gradient point."""
    assert losses.simpo(torch.zeros(1), 2.0, 0.0).item() == pytest.approx(math.log(2))
    assert losses.simpo(torch.tensor([0.5]), 2.0, 1.0).item() == pytest.approx(math.log(2))
    assert losses.simpo(torch.tensor([1.0]), 2.0, 0.5).item() == pytest.approx(math.log1p(math.exp(-1.5)))
    d = torch.tensor([0.3], requires_grad=True)
    losses.simpo(d, 2.0, 1.0).sum().backward()  # d/dΔ̄ = -β·(1 - σ(βΔ̄ - γ)) = -2·(1 - σ(-0.4))
    assert d.grad.item() == pytest.approx(-2.0 * (1 - 1 / (1 + math.exp(0.4))))


def test_unlikelihood_hand_values():
    """p = 0.5 -> -log(0.5) = log 2 per token; p = 0.9 -> -log(0.1); masked tokens count nothing."""
    lp = torch.log(torch.tensor([[0.5, 0.9, 0.3]]))
    mask = torch.tensor([[True, True, False]])
    assert losses.unlikelihood(lp, mask).item() == pytest.approx(math.log(2) - math.log(0.1), abs=1e-5)


# ------------------------------------------------------------------------ reinforcement learning


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
    assert losses.pick_best(scores, 3).tolist() == [1, 5, 6]  # a tie goes to the first
    assert losses.best_of_n_kl(1) == 0.0
    assert losses.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert losses.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_adaptive_kl_controller():
    assert losses.adaptive_beta(0.1, 12.0, 6.0, 1000, 10000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    assert losses.adaptive_beta(0.1, 5.4, 6.0, 1000, 10000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    assert losses.adaptive_beta(0.1, 6.0, 6.0, 1000, 10000) == 0.1


def test_kl_penalised_and_token_rewards_hand_values():
    """Two completions: row 0's completion is tokens 1..2 (kl 0.5, 1.5), row 1's is tokens 0..2
    (kl 1, -1, 2); scores 2 and 1; β = 0.1. Sequence rewards: 2 - 0.1·2 = 1.8 and 1 - 0.1·2 = 0.8.
    Per token: -0.1·kl, with the score added at the last completion token (index 2 in both)."""
    mask = torch.tensor([[False, True, True, False], [True, True, True, False]])
    kl = torch.tensor([[0.0, 0.5, 1.5, 0.0], [1.0, -1.0, 2.0, 0.0]])
    scores = torch.tensor([2.0, 1.0])
    assert losses.kl_penalised_rewards(scores, kl, 0.1).tolist() == pytest.approx([1.8, 0.8])
    rewards = losses.token_rewards(scores, kl, mask, 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 2.0 - 0.15, 0.0], [-0.1, 0.1, 1.0 - 0.2, 0.0]]))
    # the sign of the penalty: more KL, less reward
    assert (losses.token_rewards(scores, kl + mask.float(), mask, 0.1) < rewards)[mask].all()


def test_token_entropy_hand_values():
    """Uniform over 4: log 4. One-hot (logits 0 and -inf): 0. Temperature 2 on logits (0, log 3·2):
    p = (1/4, 3/4), H = -(¼ log ¼ + ¾ log ¾)."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9]]])
    assert losses.token_entropy(logits).tolist()[0] == pytest.approx([math.log(4), 0.0], abs=1e-6)
    two = torch.tensor([[[0.0, 2 * math.log(3)]]])
    assert losses.token_entropy(two, temperature=2.0).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_top_k_per_group_keeps_each_groups_best_in_order():
    rewards = torch.tensor([0.1, 0.9, 0.5, -1.0, 3.0, 2.0])  # two groups of 3
    assert losses.top_k_per_group(rewards, 3, 1).tolist() == [1, 4]
    assert losses.top_k_per_group(rewards, 3, 2).tolist() == [1, 2, 4, 5]
    assert losses.top_k_per_group(rewards, 3, 5).tolist() == [0, 1, 2, 3, 4, 5]  # keep > k keeps all


def test_group_advantages_normalise_within_each_group():
    """Group (1, 2, 3): mean 2, std 1 -> (-1, 0, 1) (up to eps). Group (0, 0, 6): mean 2, std √12
    -> (-2, -2, 4)/√12. Without std scaling (Dr. GRPO): the centred rewards. A constant group: 0."""
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0], [5.0, 5.0, 5.0]])
    adv = losses.group_advantages(r, eps=0.0 + 1e-12)
    assert adv[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert adv[1].tolist() == pytest.approx([-2 / math.sqrt(12), -2 / math.sqrt(12), 4 / math.sqrt(12)])
    assert adv[2].tolist() == [0.0, 0.0, 0.0]
    assert losses.group_advantages(r, scale_std=False)[1].tolist() == pytest.approx([-2.0, -2.0, 4.0])
    shifted = losses.group_advantages(r + torch.tensor([[10.0], [-3.0], [0.0]]))  # a per-prompt offset changes nothing
    torch.testing.assert_close(shifted, losses.group_advantages(r))
    with pytest.raises(ValueError):
        losses.group_advantages(torch.ones(2, 1))


def test_explained_variance_hand_values():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert losses.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert losses.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # V = R + (1, -1, 0): Var[R - V] = Var(-1, 1, 0) = 1 against Var[R] = 1 -> 0
    assert losses.explained_variance(returns + torch.tensor([[1.0, -1.0, 0.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    assert math.isnan(losses.explained_variance(returns, torch.ones_like(returns), mask))
