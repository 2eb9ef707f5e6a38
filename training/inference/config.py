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
from training.inference.classes import DEFECT_CLASSES
from training.inference.variants import BACKENDS, PYTORCH

ENCODERS = ("mobilenet_v2",)
# What the model sees (see `preprocess`), with the number of input channels of each.
REPRESENTATIONS = {"shading": 3, "shading+albedo": 4, "intensity": 3}
# smp's default U-Net decoder (the prototype's): most of the 13.4 GMAC of a 512 x 512 frame.
SMP_DECODER = (256, 128, 64, 32, 16)
# Ours: 3.7 GMAC a frame (`bench.model.conv_macs` counts them), so many more training steps per minute on a CPU.
DECODER = (64, 32, 16, 16, 8)
# The lights our generator renders and `prepare` assumes when told nothing; a prepared folder records its own.
DEFAULT_AZIMUTHS_DEG = (0.0, 120.0, 240.0)
SIZE_MULTIPLE = 32  # the U-Net halves a side five times: sides must divide by 32 (inputs are padded to it)
# Tiled inference of large layers (`tiling.spans`; the serving defaults in ServingConfig too). The network's view
# ends at a tile's border and reaches far (five halvings), so the fewer borders and the wider the overlap, the closer
# a layer's answer is to the whole layer's; a tile's memory bounds its side.
TILE_SIZE = 2048  # pixels a side a tile answers for, at most: a 2048 x 2048 layer runs whole, 4096 x 4096 in four
TILE_OVERLAP = 256  # pixels shared by neighbouring tiles, at least


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "mobilenet_v2"
    decoder_channels: tuple[int, ...] = DECODER  # U-Net decoder widths, deepest first
    # The defect classes the model names (output channel k + 1 is class_names[k], channel 0 no defect); empty for a
    # binary model (one output: the probability of a defect), which answers without classes.
    class_names: tuple[str, ...] = ()
    representation: str = "shading+albedo"  # the model's input, derived from the three images (see `preprocess`)
    background_sigma_px: float = 32.0  # shading: the scale of the background taken out of each channel
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # intensity: per light channel, pixels scaled to 0..1
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    size_multiple: int = SIZE_MULTIPLE
    azimuths_deg: tuple[float, ...] = DEFAULT_AZIMUTHS_DEG  # channel k is lit from azimuth k
    threshold: float | None = None  # the decision threshold; None until `archive` folds in evaluate's Decision
    threshold_rule: str = ""  # how the threshold was chosen, e.g. "max-f1 on val vs truth"
    label_source: str = "truth"
    # Micrometres per pixel of the camera the model serves: answers give mm and mm^2 with it. None when unknown
    # (answers then carry null mm fields unless the request states its pitch).
    pitch_um: float | None = None
    training: dict[str, Any] = field(default_factory=dict)  # data summary: folder, layers, label density, ...
    quantization: dict[str, Any] | None = None  # set by `quantize` for int8 variants
    backend: str = PYTORCH  # what runs this model file (`variants.BACKENDS`)
    # How `archive` chose the backend it serves: each candidate's latency on the machine that built the archive
    # (`training.serving.archive.time_builds`); None in model files, and when the backend was chosen by hand.
    backend_choice: dict[str, Any] | None = None
    # Each capture statistic's range over the training layers (`familiarity.statistics_range`), recorded at
    # training time; None for models trained before it was: serving then checks only the flagged share.
    input_ranges: dict[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from: {', '.join(ENCODERS)}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(
                f"unknown input representation {self.representation!r}; choose from: {', '.join(REPRESENTATIONS)}"
            )
        lights = len(self.azimuths_deg)
        if len(self.mean) != lights or len(self.std) != lights or min(self.std) <= 0:
            raise ValueError(f"mean and std need {lights} values each, std positive: {self.mean}, {self.std}")
        if self.background_sigma_px < 4:
            raise ValueError(f"background sigma must be at least 4 pixels, got {self.background_sigma_px}")
        if len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1:
            raise ValueError(f"decoder channels need 5 positive widths, deepest first, got {self.decoder_channels}")
        if self.class_names not in ((), DEFECT_CLASSES):  # a class map's id k + 1 is class_names[k] = DEFECT_CLASSES[k]
            raise ValueError(
                f"class_names must be empty (a binary model) or the defect classes in their order "
                f"({', '.join(DEFECT_CLASSES)}), got {self.class_names}"
            )
        if self.pitch_um is not None:
            check_pitch(self.pitch_um, "ModelConfig pitch_um")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from: {', '.join(BACKENDS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what checkpoints and archives carry."""
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict()` output; fields left out keep their defaults, unknown ones are refused. A config
        written before models had classes carries `classes: 1` (one output): that is a binary model. One written
        before tiles became a serving setting (`ServingConfig.tile_size`) carries the tile it was served with: a
        property of serving, not of the model, so it is dropped."""
        if "classes" in data:
            if data["classes"] != 1:
                raise ValueError(f"a ModelConfig with classes={data['classes']!r} predates class names: train it again")
            data = {k: v for k, v in data.items() if k != "classes"}
        if "tile_size" in data:
            data = {k: v for k, v in data.items() if k != "tile_size"}
        return serialize.from_dict(cls, data, what="ModelConfig field")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_decision(self, decision: Decision) -> ModelConfig:
        """The served config: this one with the threshold `evaluate` chose."""
        return self.replace(threshold=decision.threshold, threshold_rule=decision.rule)

    @property
    def out_channels(self) -> int:
        """Outputs of the network: one defect logit for a binary model, else no-defect plus one per class."""
        return 1 + len(self.class_names) if self.class_names else 1

    @property
    def in_channels(self) -> int:
        """Channels of the model's input: fixed by the representation."""
        return REPRESENTATIONS[self.representation]

    @property
    def image_fields(self) -> tuple[str, ...]:
        """The request's image fields, in channel order: field k carries the image lit from azimuth k."""
        return tuple(image_field(k) for k in range(len(self.azimuths_deg)))


MAX_PITCH_UM = 1000.0  # a millimetre per pixel: coarser than any layer camera


def check_pitch(value: Any, name: str = "pitch_um") -> float:
    """A pitch in micrometres per pixel as a float in (0, MAX_PITCH_UM], or a ValueError that says what came."""
    if isinstance(value, bool):
        value = str(value)
    try:
        pitch = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number of micrometres per pixel, got {value!r}") from err
    if not 0.0 < pitch <= MAX_PITCH_UM:  # NaN fails this too
        raise ValueError(f"{name} must be above 0 and at most {MAX_PITCH_UM:g} micrometres per pixel, got {value!r}")
    return pitch


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
