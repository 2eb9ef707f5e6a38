"""The typed configuration carried by every checkpoint and archive; the model is rebuilt from it.

Everything that preprocessing, inference and postprocessing need (input scaling, normalisation, tile size,
light azimuths, decision threshold) lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ENCODERS = ("mobilenet_v2",)


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "mobilenet_v2"
    in_channels: int = 3
    classes: int = 1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per light channel, after scaling pixels to 0..1
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    tile_size: int = 512  # inference works on tiles of this size (larger images are tiled)
    size_multiple: int = 32  # the U-Net needs sides divisible by this; inputs are padded
    azimuths_deg: tuple[float, float, float] = (0.0, 120.0, 240.0)  # channel k is lit from azimuth k
    threshold: float = 0.5
    threshold_rule: str = "default"  # how the threshold was chosen, e.g. "max-f1 on val vs truth"
    label_source: str = "truth"
    training: dict[str, Any] = field(default_factory=dict)  # data summary: folder, layers, label density, ...
    quantization: dict[str, Any] | None = None  # set by `quantize` for int8 variants

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from: {', '.join(ENCODERS)}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise ValueError(f"mean and std need {self.in_channels} values each, std positive: {self.mean}, {self.std}")
        if self.tile_size % self.size_multiple:
            raise ValueError(f"tile size {self.tile_size} must be a multiple of {self.size_multiple}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {sorted(unknown)}; this checkpoint is from a newer version?"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
