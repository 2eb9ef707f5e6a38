import math

import pytest
import torch

from training.learning.losses import (
    CLASS_WEIGHT_RANGE,
    class_distillation,
    class_loss,
    class_weights_from_pixels,
    defect_logit,
    defect_pixel_weights,
    dice_bce_loss,
    pos_weight_from_density,
    segmentation_loss,
    soft_dice_loss,
    weighted_bce,
)


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


def test_a_class_models_defect_logit_is_one_minus_no_defect():
    logits = torch.randn(2, 7, 4, 5)
    p = torch.softmax(logits, dim=1)
    torch.testing.assert_close(torch.sigmoid(defect_logit(logits)), 1 - p[:, :1])
    binary = torch.randn(2, 1, 4, 5)
    assert defect_logit(binary) is not None and torch.equal(defect_logit(binary), binary)


def test_class_loss_counts_defect_pixels_only_with_their_weights():
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 1, 0, 0] = 5.0  # the pixel of class 1 is confidently right
    target = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
    weights = torch.tensor([1.0, 3.0, 1.0])
    right, uniform = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[0], torch.log(torch.tensor(3.0))
    expected = (1.0 * right + 3.0 * uniform) / 4.0
    torch.testing.assert_close(class_loss(logits, target, weights), expected)
    assert class_loss(logits, torch.zeros_like(target), weights) == 0  # no defect pixel, no class to learn


def test_distillation_is_zero_for_the_teachers_own_classes_and_positive_otherwise():
    teacher = torch.randn(1, 7, 3, 3)
    defect = torch.ones(1, 1, 3, 3)
    assert class_distillation(teacher, teacher, defect) == pytest.approx(0.0, abs=1e-6)
    assert class_distillation(torch.randn(1, 7, 3, 3), teacher, defect) > 0
    assert class_distillation(torch.randn(1, 7, 3, 3), teacher, torch.zeros_like(defect)) == 0


def test_segmentation_loss_of_a_binary_model_is_dice_bce():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    torch.testing.assert_close(segmentation_loss(logits, target, 2.0), dice_bce_loss(logits, target, 2.0))


def test_class_weights_favour_rare_classes_within_the_clip():
    weights = class_weights_from_pixels([1000, 10, 0, 1000, 100000, 1000])
    assert weights[2] == 1.0 and weights[0] == weights[3] == weights[5] == 1.0
    assert weights[1] == CLASS_WEIGHT_RANGE[1] and weights[4] == pytest.approx(0.25, abs=1e-3)
    assert class_weights_from_pixels([0, 0]) == [1.0, 1.0]


def test_defect_pixels_of_rare_classes_weigh_more_and_none_less_than_background():
    target = torch.tensor([[[[0, 1, 2, 3]]]])
    weights = defect_pixel_weights(target, torch.tensor([0.25, 4.0, 1.5]), pos_weight=2.0)
    torch.testing.assert_close(weights, torch.tensor([[[[1.0, 2.0, 8.0, 3.0]]]]))


def test_a_class_models_decision_loss_is_dice_bce_when_no_class_is_rare():
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 1, 8, 8))
    common = torch.tensor([0.5, 1.0, 0.25])  # every class at or below the floor of 1
    defect = (target > 0).float()
    expected = dice_bce_loss(defect_logit(logits), defect, 3.0) + class_loss(logits, target, common)
    torch.testing.assert_close(segmentation_loss(logits, target, 3.0, common), expected)
    rare = torch.tensor([0.5, 4.0, 0.25])
    assert segmentation_loss(logits, target, 3.0, rare) > expected  # the rare class's defect pixels count 4x
