"""The two served variants, float32 and int8: load either artifact and make it ready for fast CPU inference.

float32: eager in channels_last memory format (the fastest float row of `bench`). int8: the FX graph rebuilt from
its ModelConfig and, when `quantize` measured it faster, traced and frozen as TorchScript.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from training.inference.config import ModelConfig

VARIANTS = ("fp32", "int8")


def variant_of(config: ModelConfig) -> str:
    return "int8" if config.quantization else "fp32"


class ChannelsLast(nn.Module):
    """Feeds the wrapped float model channels_last inputs (its weights were converted once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()


def load_variant(path: Path, config: ModelConfig | None = None) -> tuple[ModelConfig, nn.Module]:
    """(config, model ready for inference) from a model_fp32.pt / model_int8.pt written by `quantize`. `config`,
    when given (the archive's model_config.json), must agree with the one stored beside the weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "model_config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a model file of this project (no model_config / state_dict)")
    stored = ModelConfig.from_dict(payload["model_config"])
    if config is not None and json.dumps(config.to_dict(), sort_keys=True) != json.dumps(
        stored.to_dict(), sort_keys=True
    ):
        raise ValueError(f"the ModelConfig given for {path.name} differs from the one stored with its weights")
    if stored.quantization:
        from training.inference.quantization import freeze, load_int8

        model = load_int8(stored, payload["state_dict"])
        if stored.quantization.get("frozen"):
            side = stored.size_multiple * 2
            model = freeze(model, torch.zeros(1, stored.in_channels, side, side))
        return stored, model
    from training.inference.model import build_model

    model = build_model(stored)
    model.load_state_dict(payload["state_dict"])
    return stored, ChannelsLast(model.eval()).eval()
