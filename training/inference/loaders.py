"""Loaders of the registered variants (`variants.VARIANTS` names them): model files in, models ready for fast CPU
inference out.

float32: eager in channels_last memory format (the fastest float row of `python -m bench model`). int8: the FX graph
rebuilt from its ModelConfig and, when `quantize` measured it faster, traced and frozen as TorchScript.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.inference.config import ModelConfig
from training.inference.model import build_model
from training.inference.quantization import freeze, load_int8
from training.inference.variants import variant_of


class ChannelsLast(nn.Module):
    """Feeds the wrapped float model channels_last inputs (its weights were converted once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()


def float_channels_last(config: ModelConfig, state_dict: dict[str, Any]) -> nn.Module:
    model = build_model(config)
    model.load_state_dict(state_dict)
    return ChannelsLast(model.eval()).eval()


def static_int8(config: ModelConfig, state_dict: dict[str, Any]) -> nn.Module:
    model = load_int8(config, state_dict)
    if config.quantization.get("frozen"):
        side = config.size_multiple * 2
        model = freeze(model, torch.zeros(1, config.in_channels, side, side))
    return model


def read_model_file(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, state dict) of a model file written by `quantize` (or a checkpoint); no code runs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "model_config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a model file of this project (no model_config / state_dict)")
    return ModelConfig.from_dict(payload["model_config"]), payload["state_dict"]


def load_variant(path: Path, config: ModelConfig | None = None) -> tuple[ModelConfig, nn.Module]:
    """(config, model ready for inference) from a model file. `config` (an archive's model_config.json, which adds
    the decision threshold) replaces the one stored beside the weights."""
    stored, state_dict = read_model_file(path)
    config = config or stored
    return config, variant_of(config).load(config, state_dict)
