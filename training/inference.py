"""Probabilities for a whole layer from the model, through the shared preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.config import ModelConfig
from training.preprocess import normalize, pad_to_multiple, to_unit


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, stack: np.ndarray, config: ModelConfig, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(H, W, 3) uint8/uint16 stack -> (H, W) float32 defect probabilities."""
    chw, (h, w) = pad_to_multiple(normalize(to_unit(stack), config), config.size_multiple)
    logits = model(torch.from_numpy(chw)[None].to(device))  # (1, 1, H', W')
    return torch.sigmoid(logits.float())[0, 0, :h, :w].cpu().numpy()
