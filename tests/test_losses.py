import math

import pytest
import torch

from training.learning.losses import dice_bce_loss, pos_weight_from_density, soft_dice_loss, weighted_bce


def test_dice_is_near_zero_for_a_confident_match_and_near_one_for_a_confident_miss():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    match = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert soft_dice_loss(match, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(-match, target, eps=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_of_uncertain_logits_by_hand():
    logits, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # probabilities 0.5 everywhere: intersection 1, sums 2 + 2 -> dice (2 + 1) / (4 + 1)
    assert soft_dice_loss(logits, target, eps=1.0).item() == pytest.approx(1 - 3 / 5)


def test_pos_weight_scales_the_loss_on_defect_pixels_only():
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]]])
    # BCE at p = 0.5 is ln 2 per pixel; the defect pixel counts pos_weight times
    assert weighted_bce(logits, target, 1.0).item() == pytest.approx(math.log(2))
    assert weighted_bce(logits, target, 40.0).item() == pytest.approx((40 * math.log(2) + math.log(2)) / 2)


def test_dice_bce_is_the_sum_and_has_gradients():
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    loss = dice_bce_loss(logits, target, 3.0)
    assert loss.item() == pytest.approx(
        soft_dice_loss(logits, target).item() + weighted_bce(logits, target, 3.0).item()
    )
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 0, 0, 0] < 0 < logits.grad[0, 0, 1, 1]


@pytest.mark.parametrize(("density", "expected"), [(0.5, 1.0), (0.2, 4.0), (0.024, 40.666), (0.001, 100.0)])
def test_pos_weight_from_density(density, expected):
    assert pos_weight_from_density(density) == pytest.approx(expected, rel=1e-3)


def test_pos_weight_needs_some_labels():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        pos_weight_from_density(0.0)
