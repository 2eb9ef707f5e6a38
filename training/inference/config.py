"""The typed configuration carried by every checkpoint and archive; the model is rebuilt from it.

Everything that preprocessing, inference and postprocessing need (input scaling, normalisation, tile size,
light azimuths, decision threshold) lives here and nowhere else. `train` writes a ModelConfig without a threshold
into the checkpoint; `evaluate` chooses one and writes it as a `Decision` into decision.json beside the
checkpoint (it never rewrites the checkpoint); `archive` derives the served ModelConfig from both.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.inference import serialize

ENCODERS = ("mobilenet_v2",)
# The lights our generator renders and `prepare` assumes when told nothing; a prepared folder records its own.
DEFAULT_AZIMUTHS_DEG = (0.0, 120.0, 240.0)
# Tiled inference of layers larger than the config's tile (the serving defaults in ServingConfig too).
TILE_OVERLAP = 64  # pixels shared by neighbouring tiles
TILE_BATCH = 4  # tiles per forward pass


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "mobilenet_v2"
    in_channels: int = 3
    classes: int = 1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per light channel, after scaling pixels to 0..1
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    tile_size: int = 512  # inference works on tiles of this size (larger images are tiled)
    size_multiple: int = 32  # the U-Net needs sides divisible by this; inputs are padded
    azimuths_deg: tuple[float, ...] = DEFAULT_AZIMUTHS_DEG  # channel k is lit from azimuth k
    threshold: float | None = None  # the decision threshold; None until `archive` folds in evaluate's Decision
    threshold_rule: str = ""  # how the threshold was chosen, e.g. "max-f1 on val vs truth"
    label_source: str = "truth"
    training: dict[str, Any] = field(default_factory=dict)  # data summary: folder, layers, label density, ...
    quantization: dict[str, Any] | None = None  # set by `quantize` for int8 variants

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from: {', '.join(ENCODERS)}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise ValueError(f"mean and std need {self.in_channels} values each, std positive: {self.mean}, {self.std}")
        if self.tile_size % self.size_multiple:
            raise ValueError(f"tile size {self.tile_size} must be a multiple of {self.size_multiple}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what checkpoints and archives carry."""
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict()` output; fields left out keep their defaults, unknown ones are refused."""
        return serialize.from_dict(cls, data, what="ModelConfig field")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_decision(self, decision: Decision) -> ModelConfig:
        """The served config: this one with the threshold `evaluate` chose."""
        return self.replace(threshold=decision.threshold, threshold_rule=decision.rule)

    @property
    def image_fields(self) -> tuple[str, ...]:
        """The request's image fields, in channel order: field k carries the image lit from azimuth k."""
        return tuple(image_field(k) for k in range(len(self.azimuths_deg)))


def image_field(k: int) -> str:
    """The name of the request field (multipart) that carries the image of light k."""
    return f"angle{k}"


DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class Decision:
    """The decision threshold `evaluate` chose for one checkpoint, with how, and for which weights."""

    threshold: float
    rule: str  # e.g. "max-f1 on val vs truth (P 0.9, R 0.8, F1 0.85)"
    weights_digest: str  # `model.state_digest` of the checkpoint's weights
    command: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")

    def write(self, checkpoint: Path) -> Path:
        from training.inference.images import write_json

        path = Path(checkpoint).parent / DECISION_FILE
        write_json(path, serialize.to_dict(self))
        return path

    @classmethod
    def read(cls, checkpoint: Path, weights_digest: str) -> Decision:
        """The decision beside `checkpoint`, checked to be for these weights; says which command to run if not."""
        path = Path(checkpoint).parent / DECISION_FILE
        evaluate = f"python -m training evaluate --checkpoint {checkpoint}"
        if not path.exists():
            raise FileNotFoundError(f"no decision threshold for {checkpoint} ({path} missing): run `{evaluate}`")
        decision = serialize.from_dict(cls, json.loads(path.read_text()), what=f"{DECISION_FILE} field")
        if decision.weights_digest != weights_digest:
            raise ValueError(
                f"{path} was chosen for other weights than {checkpoint}'s (trained again?): run `{evaluate}`"
            )
        return decision
