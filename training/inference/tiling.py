"""Probabilities for a whole layer from the model, through the shared preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.inference.config import TILE_OVERLAP, TILE_SIZE, ModelConfig
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


@dataclass(frozen=True)
class Span:
    """One tile along one side of a layer: the pixels it holds (start..stop) and those it answers for
    (own_start..own_stop), which are the ones it holds deeper inside than any other tile does."""

    start: int
    stop: int
    own_start: int
    own_stop: int


def spans(length: int, tile: int, overlap: int, multiple: int) -> list[Span]:
    """How tiles cover one side of `length` pixels: as few as answer for at most `tile` pixels each, all of one
    size (a multiple of `multiple`, so that none is padded inside the layer), evenly spaced, neighbours sharing at
    least `overlap` pixels; each answers for its pixels up to the middle of its overlaps. A side that one tile
    covers is one span, whatever its length (the whole side is padded to the multiple)."""
    if tile < multiple or tile % multiple:
        raise ValueError(f"tile size must be a positive multiple of {multiple}, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be within 0..{tile - 1}, got {overlap}")
    count = -(-length // tile)
    side = -(-(length + (count - 1) * overlap) // count)
    side = -(-side // multiple) * multiple
    if count == 1 or side >= length:
        return [Span(0, length, 0, length)]
    starts = [round(k * (length - side) / (count - 1)) for k in range(count)]
    cuts = [0, *((after + side + before) // 2 for after, before in zip(starts[1:], starts, strict=False)), length]
    return [Span(start, start + side, cuts[k], cuts[k + 1]) for k, start in enumerate(starts)]


def padded(length: int, multiple: int) -> int:
    """A layer's side padded to the multiple the network needs (`preprocess.pad_to_multiple`)."""
    return -(-length // multiple) * multiple


def tile_shapes(height: int, width: int, config: ModelConfig, tile: int, overlap: int) -> set[tuple[int, int]]:
    """The (height, width) of the model inputs a layer of this size is run as."""
    m = config.size_multiple
    rows, columns = spans(padded(height, m), tile, overlap, m), spans(padded(width, m), tile, overlap, m)
    return {(y.stop - y.start, x.stop - x.start) for y in rows for x in columns}


@torch.inference_mode()
def warm_up(
    model: nn.Module, config: ModelConfig, side: int, tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP
) -> None:
    """Run the model once on each input shape a `side` x `side` layer is run as, so that the first such layers do
    not pay for what a backend prepares per shape (OpenVINO compiles its kernels for each new shape, a frozen
    TorchScript graph optimises on its first runs)."""
    for height, width in sorted(tile_shapes(side, side, config, tile, overlap)):
        model(torch.zeros(1, config.in_channels, height, width))


@torch.inference_mode()
def predict_tiled(
    model: nn.Module,
    stack: np.ndarray,
    config: ModelConfig,
    tile: int = TILE_SIZE,
    overlap: int = TILE_OVERLAP,
    device: str | torch.device = "cpu",
) -> Prediction:
    """The Prediction for a layer of any size, through tiles (`spans`) that answer for at most `tile` pixels a
    side; a layer that one tile covers goes through the model whole. The tiles cut the input of the whole layer
    (its statistics, its padding), and each answers for the pixels it holds deepest: a network's view ends at a
    tile's border, so no pixel is taken from near one where a neighbouring tile sees further around it."""
    m = config.size_multiple
    rows, columns = (spans(padded(n, m), tile, overlap, m) for n in stack.shape[:2])
    if len(rows) == len(columns) == 1:
        return predict_probabilities(model, stack, config, device)
    whole, (h, w) = model_input(stack, config)  # (1, C, H', W')
    out = torch.empty((1 + len(config.class_names), *whole.shape[2:]))
    for y in rows:
        for x in columns:
            p = probabilities(model(whole[:, :, y.start : y.stop, x.start : x.stop].contiguous().to(device)), config)
            own = p[0, :, y.own_start - y.start : y.own_stop - y.start, x.own_start - x.start : x.own_stop - x.start]
            out[:, y.own_start : y.own_stop, x.own_start : x.own_stop] = own.cpu()
    return prediction_of(out[:, :h, :w].numpy(), config)
