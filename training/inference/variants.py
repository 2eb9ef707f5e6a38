"""The registry of served variants: one entry per variant (its key, the model name it is served under, and one
build per backend that can run it: the model file `quantize` writes and the loader that makes it ready). `archive`
times each variant's builds on the machine it runs on and packs the fastest. Quantize, archive, serve, the
benchmarks, the client's defaults and the page all read this table; adding a variant or a backend is an entry here
(and its loader in `loaders`).

Nothing here imports torch: the factory client reads the model names without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from training.inference.config import ModelConfig

MODEL_PREFIX = "defect"  # served model names are <prefix>_<variant key>
PYTORCH, OPENVINO = "pytorch", "openvino"
BACKENDS = (PYTORCH, OPENVINO)  # what can run a variant; the one serving it is reported in every answer


@dataclass(frozen=True)
class Build:
    """One way to run a variant."""

    backend: str  # one of BACKENDS
    file: str  # the model file `quantize` writes beside the checkpoint
    loader: str  # the function of `training.inference.loaders` that makes it ready for inference


@dataclass(frozen=True)
class Variant:
    key: str  # "fp32", "int8"
    label: str  # for people: "float32"
    builds: tuple[Build, ...]  # one per backend

    def build(self, backend: str) -> Build:
        for b in self.builds:
            if b.backend == backend:
                return b
        raise ValueError(
            f"the {self.key} variant has no {backend!r} build; choose from: {', '.join(b.backend for b in self.builds)}"
        )

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(b.file for b in self.builds)

    @property
    def model_name(self) -> str:
        return f"{MODEL_PREFIX}_{self.key}"

    @property
    def archive(self) -> str:
        return f"{self.model_name}.mar"

    def load(self, config: ModelConfig, payload: Any, threads: int) -> nn.Module:
        """The model ready for inference on `threads` threads from its ModelConfig (whose `backend` picks the
        build) and the content of its model file (`loaders.read_model_file`)."""
        from training.inference import loaders

        return getattr(loaders, self.build(config.backend).loader)(config, payload, threads)


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "float32", (
        Build(PYTORCH, "model_fp32.pt", "float_channels_last"),
        Build(OPENVINO, "model_fp32.xml", "openvino_ir"),
    )),
    Variant("int8", "int8", (
        Build(PYTORCH, "model_int8.pt", "static_int8"),
        Build(OPENVINO, "model_int8.xml", "openvino_ir"),
    )),
)  # fmt: skip
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
