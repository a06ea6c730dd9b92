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


def test_unlikelihood_hand_values():
    """p = 0.5 -> -log(0.5) = log 2 per token; p = 0.9 -> -log(0.1); masked tokens count nothing."""
    lp = torch.log(torch.tensor([[0.5, 0.9, 0.3]]))
    mask = torch.tensor([[True, True, False]])
    assert losses.unlikelihood(lp, mask).item() == pytest.approx(math.log(2) - math.log(0.1), abs=1e-5)
