"""Probabilities for a whole layer from the model, through the shared preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.inference.config import TILE_BATCH, TILE_OVERLAP, ModelConfig
from training.inference.postprocess import Prediction
from training.inference.preprocess import model_channels, pad_to_multiple


def probabilities(logits: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """(N, out_channels, H, W) logits -> (N, 1 + K, H, W) float32: channel 0 the probability of any defect, then
    one channel per defect class (none for a binary model). A class model's probability of any defect is
    1 - P(no defect), so its decision and threshold mean what a binary model's do."""
    logits = logits.float()
    if not config.class_names:
        return torch.sigmoid(logits)
    p = torch.softmax(logits, dim=1)
    p[:, 0].neg_().add_(1.0)  # in place: no second (N, 1 + K, H, W) tensor on the served path
    return p


def prediction_of(stacked: np.ndarray, config: ModelConfig) -> Prediction:
    """(1 + K, H, W) probabilities -> Prediction."""
    return Prediction(stacked[0], stacked[1:] if config.class_names else None, config.class_names)


def model_input(stack: np.ndarray, config: ModelConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8/uint16 stack -> (1, C, H', W') padded model input and the (H, W) to crop back to."""
    chw, size = pad_to_multiple(model_channels(stack, config), config.size_multiple)
    return torch.from_numpy(chw)[None], size


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, stack: np.ndarray, config: ModelConfig, device: str | torch.device = "cpu"
) -> Prediction:
    """(H, W, 3) uint8/uint16 stack -> the model's Prediction for it, whole (no tiles)."""
    x, (h, w) = model_input(stack, config)
    logits = model(x.to(device))  # (1, out_channels, H', W')
    return prediction_of(probabilities(logits, config)[0, :, :h, :w].cpu().numpy(), config)


def predict_layers(model: nn.Module, stacks: list[np.ndarray], config: ModelConfig) -> list[Prediction]:
    """The Prediction for each stack, in order."""
    return [predict_probabilities(model, stack, config) for stack in stacks]


def defect_probabilities(model: nn.Module, stacks: list[np.ndarray], config: ModelConfig) -> list[np.ndarray]:
    """The (H, W) probability of any defect for each stack, in order."""
    return [p.defect for p in predict_layers(model, stacks, config)]


@torch.inference_mode()
def warm_up(model: nn.Module, config: ModelConfig, batch_size: int = TILE_BATCH) -> None:
    """Run the model once on each input shape most layers bring (one tile; a batch of tiles), so that the first
    requests do not pay for what a backend prepares per shape (OpenVINO compiles its kernels for each new shape, a
    frozen TorchScript graph optimises on its first runs)."""
    for n in sorted({1, batch_size}):
        model(torch.zeros(n, config.in_channels, config.tile_size, config.tile_size))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering 0..length with at least `overlap` pixels shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) weights that ramp linearly over `overlap` pixels at the borders, so overlapping tiles blend."""
    ramp = np.minimum(1.0, (np.arange(tile) + 0.5) / max(overlap, 1))
    ramp = np.minimum(ramp, ramp[::-1]).astype(np.float32)
    return np.outer(ramp, ramp)


@torch.inference_mode()
def predict_tiled(
    model: nn.Module,
    stack: np.ndarray,
    config: ModelConfig,
    overlap: int = TILE_OVERLAP,
    batch_size: int = TILE_BATCH,
    device: str | torch.device = "cpu",
) -> Prediction:
    """The Prediction for a layer of any size: tiles of config.tile_size, overlapping by `overlap` pixels, blended.
    Layers no larger than one tile go through the model whole."""
    h, w = stack.shape[:2]
    tile = config.tile_size
    if h <= tile and w <= tile:
        return predict_probabilities(model, stack, config, device)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be within 0..{tile - 1}, got {overlap}")
    chw = model_channels(stack, config)  # (C, H, W), statistics of the whole layer
    ph, pw = max(0, tile - h), max(0, tile - w)  # a side shorter than a tile is padded up to one
    if ph or pw:
        chw = np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    height, width = chw.shape[1:]
    weights = blend_weights(tile, overlap)
    total = np.zeros((1 + len(config.class_names), height, width), np.float32)
    norm = np.zeros((height, width), np.float32)
    corners = [(y, x) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]
    for i in range(0, len(corners), batch_size):
        group = corners[i : i + batch_size]
        batch = torch.from_numpy(np.stack([chw[:, y : y + tile, x : x + tile] for y, x in group]))
        probs = probabilities(model(batch.to(device)), config).cpu().numpy()  # (n, 1 + K, tile, tile)
        for (y, x), p in zip(group, probs, strict=True):
            total[:, y : y + tile, x : x + tile] += p * weights
            norm[y : y + tile, x : x + tile] += weights
    return prediction_of(total[:, :h, :w] / norm[:h, :w], config)
