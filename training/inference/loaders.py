"""Loaders of the registered variants' builds (`variants.VARIANTS` names them): model files in, models ready for
fast CPU inference out, each a torch module taking a float32 batch (N, C, H, W).

PyTorch float32: eager in channels_last memory format (the fastest PyTorch float row of `python -m bench model`).
PyTorch int8: the FX graph rebuilt from its ModelConfig and, when `quantize` measured it faster, traced and frozen
as TorchScript. OpenVINO (float32 or int8): the IR compiled for the CPU (`openvino_backend`).
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


def float_channels_last(config: ModelConfig, state_dict: dict[str, Any], threads: int) -> nn.Module:
    model = build_model(config)
    model.load_state_dict(state_dict)
    return ChannelsLast(model.eval()).eval()


def static_int8(config: ModelConfig, state_dict: dict[str, Any], threads: int) -> nn.Module:
    model = load_int8(config, state_dict)
    if config.quantization.get("frozen"):
        side = config.size_multiple * 2
        model = freeze(model, torch.zeros(1, config.in_channels, side, side))
    return model


def openvino_ir(config: ModelConfig, model: Any, threads: int) -> nn.Module:
    from training.inference.openvino_backend import OpenVINOModel

    return OpenVINOModel(model, threads).eval()


def model_files(path: Path) -> tuple[Path, ...]:
    """The files a model file is made of: itself, and for an OpenVINO IR (.xml) its weights (.bin) beside it."""
    if Path(path).suffix == ".xml":
        from training.inference.openvino_backend import ir_files

        return ir_files(path)
    return (Path(path),)


def read_model_file(path: Path) -> tuple[ModelConfig, Any]:
    """(ModelConfig, content) of a model file written by `quantize` (or a checkpoint): a state dict from a PyTorch
    file, an OpenVINO model from an IR (.xml); no pickled code runs."""
    path = Path(path)
    if path.suffix == ".xml":
        from training.inference import openvino_backend

        return openvino_backend.read(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "model_config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a model file of this project (no model_config / state_dict)")
    return ModelConfig.from_dict(payload["model_config"]), payload["state_dict"]


def load_variant(
    path: Path, config: ModelConfig | None = None, threads: int | None = None
) -> tuple[ModelConfig, nn.Module]:
    """(config, model ready for inference) from a model file. `config` (an archive's model_config.json, which adds
    the decision threshold and the backend choice) replaces the one stored beside the weights; `threads`: the
    backend's threads (default: torch's)."""
    stored, payload = read_model_file(path)
    config = config or stored
    if config.backend != stored.backend:
        raise ValueError(f"{path} is a {stored.backend} model file, but its config names {config.backend}")
    return config, variant_of(config).load(config, payload, threads or torch.get_num_threads())
