"""Probabilities for a whole layer from the model, through the shared preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.config import ModelConfig
from training.preprocess import normalize, pad_to_multiple, to_unit


def model_input(stack: np.ndarray, config: ModelConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8/uint16 stack -> (1, 3, H', W') normalised, padded input and the (H, W) to crop back to."""
    chw, size = pad_to_multiple(normalize(to_unit(stack), config), config.size_multiple)
    return torch.from_numpy(chw)[None], size


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, stack: np.ndarray, config: ModelConfig, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(H, W, 3) uint8/uint16 stack -> (H, W) float32 defect probabilities."""
    x, (h, w) = model_input(stack, config)
    logits = model(x.to(device))  # (1, 1, H', W')
    return torch.sigmoid(logits.float())[0, 0, :h, :w].cpu().numpy()


def predict_layers(model: nn.Module, stacks: list[np.ndarray], config: ModelConfig) -> list[np.ndarray]:
    """Probabilities for each stack, in order."""
    return [predict_probabilities(model, stack, config) for stack in stacks]
