"""The registry of served variants: one entry per variant (its key, the model file `quantize` writes, the model
name it is served under, the backend that runs it and the loader that makes it ready). Quantize, archive, serve,
the benchmarks, the client's defaults and the page all read this table; adding a variant or a backend is one entry
here (and its loader in `loaders`).

Nothing here imports torch: the factory client reads the model names without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from training.inference.config import ModelConfig

MODEL_PREFIX = "defect"  # served model names are <prefix>_<variant key>


@dataclass(frozen=True)
class Variant:
    key: str  # "fp32", "int8"
    label: str  # for people: "float32"
    file: str  # the model file `quantize` writes beside the checkpoint
    backend: str  # what runs it, reported in every answer
    loader: str  # the function of `training.inference.loaders` that makes it ready for inference

    @property
    def model_name(self) -> str:
        return f"{MODEL_PREFIX}_{self.key}"

    @property
    def archive(self) -> str:
        return f"{self.model_name}.mar"

    def load(self, config: ModelConfig, state_dict: dict[str, Any]) -> nn.Module:
        """The model ready for inference (eval mode) from its ModelConfig and state dict."""
        from training.inference import loaders

        return getattr(loaders, self.loader)(config, state_dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "float32", "model_fp32.pt", "pytorch", "float_channels_last"),
    Variant("int8", "int8", "model_int8.pt", "pytorch", "static_int8"),
)
DEFAULT = "int8"  # what the client asks when told nothing: the fastest variant that agrees with fp32


def variant(key: str) -> Variant:
    """The registered variant with this key, or a ValueError that lists the keys."""
    for v in VARIANTS:
        if v.key == key:
            return v
    raise ValueError(f"unknown variant {key!r}; choose from: {', '.join(v.key for v in VARIANTS)}")


def variant_of(config: ModelConfig) -> Variant:
    """The variant a ModelConfig describes: int8 when it records a quantization, else fp32."""
    return variant("int8" if config.quantization else "fp32")


def model_names() -> tuple[str, ...]:
    return tuple(v.model_name for v in VARIANTS)


def default_model() -> str:
    return variant(DEFAULT).model_name
