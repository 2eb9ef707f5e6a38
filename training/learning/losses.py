"""Dice + BCE with pos_weight, as pure tensor functions (with thin wrappers in train.py's use)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch. logits, target: (N, 1, H, W); target in {0, 1}."""
    probs = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (probs.sum() + target.sum() + eps)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Binary cross-entropy where a defect pixel weighs `pos_weight` times a background pixel."""
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight)


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float, dice_weight: float = 1.0
) -> torch.Tensor:
    return dice_weight * soft_dice_loss(logits, target) + weighted_bce(logits, target, pos_weight)


def pos_weight_from_density(density: float, cap: float = 100.0) -> float:
    """Background-to-defect pixel ratio of the training labels, capped: the default BCE pos_weight."""
    if not 0.0 < density < 1.0:
        raise ValueError(f"label density must be strictly between 0 and 1 to derive pos_weight, got {density}")
    return float(min(cap, max(1.0, (1.0 - density) / density)))
