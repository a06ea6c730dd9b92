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
