"""The training losses as pure tensor functions: Dice + BCE on the probability of any defect (for a class model the
BCE weighs a rare class's defect pixels more), and for a class model a class-weighted cross-entropy over the defect
classes on defect pixels (or, fine-tuning on labels without classes, a distillation term that keeps the starting
model's class distribution)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLASS_WEIGHT_RANGE = (0.25, 4.0)  # the class weights' clip: rare classes count more, none dominates


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch. logits, target: (N, 1, H, W); target in {0, 1}."""
    probs = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (probs.sum() + target.sum() + eps)


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy where a defect pixel weighs `pos_weight` times a background pixel, or, given
    `pixel_weight` (shaped like `target`, e.g. `defect_pixel_weights`), where each pixel weighs its own weight."""
    if pixel_weight is not None:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=pixel_weight)
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight)


def defect_pixel_weights(target: torch.Tensor, class_weights: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Each pixel's weight in the defect decision's BCE, for a class map target (N, 1, H, W) holding 0 or 1..K: 1 for
    background, `pos_weight` times max(1, its class's weight) for a defect pixel. A pit or a spatter particle is a
    few dozen pixels beside regions of thousands, so unweighted its pixels barely move the loss and the model learns
    to miss it. The floor at 1 keeps a common class from counting less than background: weighing incomplete
    spreading below 1 made the model unsure of large regions, and its chosen threshold fell far below even odds."""
    classes = target.long()
    table = torch.cat([torch.ones(1), class_weights.float().clamp(min=1.0) * pos_weight]).to(target.device)
    return table[classes]


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    return soft_dice_loss(logits, target) + weighted_bce(logits, target, pos_weight, pixel_weight)


def defect_logit(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> (N, 1, H, W) logit of any defect: for a class model (channel 0 = no defect)
    logsumexp of the class logits less the no-defect logit, whose sigmoid is 1 - P(no defect); a binary model's
    own logit otherwise. So a class model's defect decision is trained by the same loss as a binary model's."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return logits
    return torch.logsumexp(logits[:, 1:], dim=1, keepdim=True) - logits[:, :1]


def class_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy of the defect class given a defect, over the defect pixels of a class map target
    (N, 1, H, W) holding 0 (no defect) or 1..K; zero without defect pixels."""
    classes = target.long()[:, 0]  # (N, H, W)
    on = classes > 0
    if not bool(on.any()):
        return logits.sum() * 0.0
    index = (classes - 1).clamp(min=0)
    log_q = torch.log_softmax(logits.float()[:, 1:], dim=1)  # (N, K, H, W): the class given a defect
    nll = -log_q.gather(1, index[:, None])[:, 0]
    weight = class_weights.to(logits.device)[index]
    return (nll * weight)[on].sum() / weight[on].sum()


def class_distillation(logits: torch.Tensor, teacher: torch.Tensor, defect: torch.Tensor) -> torch.Tensor:
    """KL divergence of the class given a defect, from the starting model's (`teacher`) to this one's, on the
    labelled defect pixels: fine-tuning a class model on labels without classes keeps what it knew of classes."""
    on = defect[:, 0] > 0
    if not bool(on.any()):
        return logits.sum() * 0.0
    log_q = torch.log_softmax(logits.float()[:, 1:], dim=1)
    log_t = torch.log_softmax(teacher.float()[:, 1:], dim=1)
    kl = (log_t.exp() * (log_t - log_q)).sum(dim=1)  # (N, H, W)
    return kl[on].mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: float,
    class_weights: torch.Tensor | None = None,
    teacher: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss. `target` (N, 1, H, W) is a class map when `class_weights` is given (a class model
    learning classes), else 0/1; `teacher` is the starting model's logits when a class model learns from labels
    without classes."""
    defect = (target > 0).float()
    weight = None if class_weights is None else defect_pixel_weights(target, class_weights, pos_weight)
    loss = dice_bce_loss(defect_logit(logits), defect, pos_weight, weight)
    if class_weights is not None:
        loss = loss + class_loss(logits, target, class_weights)
    elif teacher is not None:
        loss = loss + class_distillation(logits, teacher, defect)
    return loss


def class_weights_from_pixels(pixels: list[int] | np.ndarray) -> list[float]:
    """Each defect class's weight from its pixel count in the training labels: median frequency over the class's
    frequency (Eigen and Fergus), square-rooted and clipped to CLASS_WEIGHT_RANGE; 1 for a class with no pixels."""
    pixels = np.asarray(pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        return [1.0] * len(pixels)
    median = float(np.median(pixels[present]))
    weights = np.ones_like(pixels)
    weights[present] = np.clip(np.sqrt(median / pixels[present]), *CLASS_WEIGHT_RANGE)
    return [round(float(w), 4) for w in weights]


def pos_weight_from_density(density: float, cap: float = 100.0) -> float:
    """Background-to-defect pixel ratio of the training labels, capped: the default BCE pos_weight."""
    if not 0.0 < density < 1.0:
        raise ValueError(f"label density must be strictly between 0 and 1 to derive pos_weight, got {density}")
    return float(min(cap, max(1.0, (1.0 - density) / density)))
