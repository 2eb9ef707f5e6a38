"""int8 quantization in PyTorch: static post-training (FX graph mode, per-channel weights, fused conv-bn-relu,
calibrated) and dynamic (the prototype's method, kept as a comparison). `QuantizationConfig` also holds what the
OpenVINO int8 model is made with (`openvino_backend.quantize`).

Every use of `torch.ao.quantization` is in this module: it is deprecated upstream, and a move to torchao's PT2E
flow should touch this file only.

An int8 checkpoint holds the converted model's state dict and the ModelConfig, whose `quantization` field says how
it was made. `load_int8` rebuilds the same int8 graph from the config (prepare + convert of the float model) and
loads the state dict into it; the scales and zero points are buffers of that graph, so `torch.load(...,
weights_only=True)` is enough and no pickled code is needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.inference import serialize
from training.inference.config import ModelConfig
from training.inference.model import build_model

ENGINES = ("x86", "onednn", "fbgemm")
OBSERVERS = ("minmax", "histogram")
# How NNCF sets the OpenVINO int8 model's activation ranges from the calibration layers: the whole range seen
# (minmax), a histogram's error-minimising range (histogram), or the mean of each layer's extremes (mean_minmax,
# NNCF's default, which clips the rare strongest activations).
OPENVINO_RANGES = ("minmax", "histogram", "mean_minmax")


@dataclass(frozen=True)
class QuantizationConfig:
    method: str = "static"  # "static" or "dynamic"
    engine: str = "x86"  # quantized kernels: x86, onednn or fbgemm
    observer: str = "histogram"  # activation observer for calibration
    calibration_images: int = 32
    float_modules: tuple[str, ...] = ()  # module names kept in float32 (e.g. "segmentation_head")
    openvino_ranges: str = "minmax"  # the OpenVINO int8 model's activation ranges (OPENVINO_RANGES)

    def __post_init__(self) -> None:
        if self.method not in ("static", "dynamic"):
            raise ValueError(f"quantization method must be 'static' or 'dynamic', got {self.method!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown quantized engine {self.engine!r}; choose from: {', '.join(ENGINES)}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"unknown observer {self.observer!r}; choose from: {', '.join(OBSERVERS)}")
        if self.openvino_ranges not in OPENVINO_RANGES:
            raise ValueError(
                f"unknown OpenVINO activation ranges {self.openvino_ranges!r}; choose from: {', '.join(OPENVINO_RANGES)}"
            )
        if self.calibration_images < 1:
            raise ValueError(f"calibration needs at least one image, got {self.calibration_images}")

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationConfig:
        return serialize.from_dict(cls, data, what="quantization setting")


def available_engines() -> list[str]:
    return [e for e in ENGINES if e in torch.backends.quantized.supported_engines]


def use_engine(engine: str) -> None:
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized engine {engine!r} is not available in this PyTorch build; available: {available_engines()}"
        )
    torch.backends.quantized.engine = engine


def _qconfig_mapping(config: QuantizationConfig):
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, default_per_channel_weight_observer

    mapping = get_default_qconfig_mapping(config.engine)  # per-channel weights; histogram activations
    if config.observer == "minmax":
        activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=config.engine in ("x86", "fbgemm"))
        mapping = mapping.set_global(QConfig(activation=activation, weight=default_per_channel_weight_observer))
    for name in config.float_modules:
        mapping = mapping.set_module_name(name, None)
    return mapping


def _prepare(model: nn.Module, config: QuantizationConfig, example: torch.Tensor) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    use_engine(config.engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the reason this module exists
        return prepare_fx(model.eval(), _qconfig_mapping(config), example_inputs=(example,))


def _convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


@torch.no_grad()
def quantize_static(model: nn.Module, calibration: Iterable[torch.Tensor], config: QuantizationConfig) -> nn.Module:
    """Fuse conv-bn-relu, observe activations on calibration batches (N, 3, H, W), convert to int8."""
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("static quantization needs calibration images; got none")
    prepared = _prepare(model, config, first)
    prepared(first)
    for batch in batches:
        prepared(batch)
    return _convert(prepared)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """The prototype's method: int8 weights for Linear layers only (a U-Net has none worth speaking of)."""
    from torch.ao.quantization import quantize_dynamic as dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


@torch.no_grad()
def build_int8(model_config: ModelConfig) -> nn.Module:
    """The int8 graph for a config, with placeholder scales: load an int8 state dict into it."""
    if not model_config.quantization:
        raise ValueError("this ModelConfig has no quantization settings: it describes a float model")
    config = QuantizationConfig.from_dict(model_config.quantization["settings"])
    example = torch.zeros(1, model_config.in_channels, model_config.size_multiple * 2, model_config.size_multiple * 2)
    prepared = _prepare(build_model(model_config), config, example)
    prepared(example)  # observers need one pass to produce (placeholder) scales
    return _convert(prepared)


def load_int8(model_config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    model = build_int8(model_config)
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def freeze(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace and freeze for inference (constant folding, fused quantized ops)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model.eval(), example))
