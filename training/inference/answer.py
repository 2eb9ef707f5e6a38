"""The answer for one layer, as typed objects: what the handler returns (HTTP 200) and what a bad request gets
(HTTP 4xx). Built in one place (`postprocess.detect`, then `Answer.of` in the handler) and serialised by `serialize.to_dict`;
`docs/response.schema.json`
is generated from these classes (`python -m training schema`), so the documented fields are these fields.

Standard library only: the factory client and the page server read these names without numpy or torch. Field
metadata carries the schema's descriptions and bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from training.inference.classes import DEFECT_CLASSES
from training.inference.serialize import OMIT_NONE
from training.inference.variants import BACKENDS, VARIANTS

BBOX = "[x, y, width, height] in pixels; x to the right, y down, from the top-left corner"
BBOX_MM = "the box in millimetres on the bed ([x, y, width, height] times the pitch); null when the pitch is unknown"
AREA_MM2 = "square millimetres on the bed; null when the pitch is unknown"
MASK_FORMATS = ("binary", "classes")
BINARY_MASK, CLASS_MAP = MASK_FORMATS  # 255 = defect; or each defect pixel's class id
PITCH_SOURCES = ("request", "model")


def _info(description: str = "", default: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A field's schema metadata: its description and JSON Schema keywords such as minimum; `default` is the
    Python default only (every field is in every answer)."""
    return field(default=default, metadata={"description": description, **bounds})


@dataclass(frozen=True)
class Component:
    """One 8-connected defect region."""

    bbox: tuple[int, int, int, int] = _info(BBOX, minimum=0)
    area_px: int = _info("pixels in the region", minimum=1)
    max_confidence: float = _info("highest defect probability in the region", minimum=0, maximum=1)
    class_name: str | None = _info("the defect class holding most of the region's probability; null from a model "
                                   "without classes", None, enum=list(DEFECT_CLASSES))  # fmt: skip
    class_confidence: float | None = _info("share of the region's defect probability in that class; null from a "
                                           "model without classes", None, minimum=0, maximum=1)  # fmt: skip
    area_mm2: float | None = _info(AREA_MM2, None, minimum=0)
    bbox_mm: tuple[float, float, float, float] | None = _info(BBOX_MM, None, minimum=0)


@dataclass(frozen=True)
class ClassSummary:
    """One defect class's regions in the layer (every class of the model is listed, zeros included)."""

    name: str = _info("the class", enum=list(DEFECT_CLASSES))
    components: int = _info("regions of this class", minimum=0)
    area_px: int = _info("pixels in those regions", minimum=0)
    area_mm2: float | None = _info(AREA_MM2, minimum=0)
    counted: bool = _info("false when the request listed the class in ignore_classes: its regions are left out of "
                          "the decision, mask, areas, boxes and components")  # fmt: skip


@dataclass(frozen=True)
class Scale:
    """The pixel pitch the millimetres are computed with."""

    pitch_um: float | None = _info("micrometres per pixel on the bed; null when unknown", exclusiveMinimum=0)
    source: str | None = _info("where the pitch came from: the request's pitch_um, else the model's (recorded "
                               "with its training data); null when neither", enum=list(PITCH_SOURCES))  # fmt: skip
    note: str = _info("why millimetres are missing, when they are; empty otherwise")

    @property
    def mm_per_px(self) -> float | None:
        return None if self.pitch_um is None else self.pitch_um / 1000.0


UNKNOWN_SCALE = Scale(None, None, "the pixel pitch is unknown: send pitch_um with the request, or prepare the "
                      "training data with --pitch")  # fmt: skip


@dataclass(frozen=True)
class MaskImage:
    """The decision mask as a PNG."""

    format: str = _info("always png", const="png")
    encoding: str = _info("always base64", const="base64")
    width: int = _info("", minimum=1)
    height: int = _info("", minimum=1)
    data: str = _info("8-bit PNG the size of the input images: binary, 255 = defect, 0 = clean; classes, 0 = clean "
                      "and k = the model's class k (1-based, the order of class_summary)",
                      contentEncoding="base64", contentMediaType="image/png")  # fmt: skip
    kind: str = _info("binary, or classes (the request's mask_format)", BINARY_MASK, enum=list(MASK_FORMATS))


@dataclass(frozen=True)
class Light:
    """Which light the model assumes for a request field."""

    field: str = _info("request field (multipart) or position in images[] (JSON)")
    azimuth_deg: float = _info("azimuth of the light the model assumes for this image, counter-clockwise from +x")


@dataclass(frozen=True)
class ModelInfo:
    name: str = _info("the served model name")
    variant: str = _info("the registered variant", enum=[v.key for v in VARIANTS])
    backend: str = _info("what runs the variant", enum=list(BACKENDS))
    version: str = _info("the archive's version")


@dataclass(frozen=True)
class Timing:
    decode: float = _info("ms to read and check the three images", minimum=0)
    inference: float = _info("ms in the model, all tiles", minimum=0)
    postprocess: float = _info("ms from probabilities to this answer", minimum=0)


@dataclass(frozen=True)
class Familiarity:
    """Whether the layer is like the layers the model was trained on: how it was captured (exposure, saturation,
    contrast between the lights, ...) against the training range, and how much of it the model flags. The defect
    decision is not changed by it; an unfamiliar layer's decision is in doubt (training/inference/familiarity.py)."""

    familiar: bool = _info("false when any reason is given: check the camera and lights before trusting the result")
    reasons: tuple[str, ...] = _info("why the layer is unlike the training layers, each a sentence that says what "
                                     "to check; empty when it is familiar")  # fmt: skip
    statistics: dict[str, float] = _info("the layer's capture statistics by name (the table in "
                                         "training/inference/familiarity.py)")  # fmt: skip
    statistics_checked: bool = _info("false for a model trained before the statistics' ranges were recorded: then "
                                     "only the share of the layer flagged as defect is judged")  # fmt: skip


@dataclass(frozen=True)
class Detection:
    """What the probabilities say, at a threshold: the part of the answer that evaluation shares."""

    defect: bool = _info(
        "true when the mask holds a region: pixels at or above the threshold, of which one at least reaches even odds"
    )
    max_confidence: float = _info("highest defect probability in the layer (regions of ignored classes included)",
                                  minimum=0, maximum=1)  # fmt: skip
    threshold: float = _info("decision threshold used: the request's, else the model's",
                             exclusiveMinimum=0, exclusiveMaximum=1)  # fmt: skip
    defect_area_px: int = _info("defect pixels", minimum=0)
    defect_area_pct: float = _info("defect pixels as a percentage of the layer", minimum=0, maximum=100)
    bbox: tuple[int, int, int, int] | None = _info(f"box around every defect pixel, {BBOX}; null for a clean layer",
                                                   minimum=0)  # fmt: skip
    components: tuple[Component, ...] = _info("8-connected defect regions, largest first (at most the server's "
                                              "max_components)")  # fmt: skip
    components_total: int = _info("number of components, listed or not", minimum=0)
    mask: MaskImage | None = _info("the decision mask; left out when the request set return_mask false",
                                   **{OMIT_NONE: True})  # fmt: skip
    classes_available: bool = _info("false for a model without classes: components carry no class and "
                                    "class_summary is empty", False)  # fmt: skip
    class_summary: tuple[ClassSummary, ...] = _info("regions and area per class, in the model's class order", ())
    ignored_classes: tuple[str, ...] = _info("classes the request asked to leave out of the decision", ())
    scale: Scale = _info("the pitch behind the millimetre fields", UNKNOWN_SCALE)
    defect_area_mm2: float | None = _info(AREA_MM2, None, minimum=0)
    bbox_mm: tuple[float, float, float, float] | None = _info(BBOX_MM, None, minimum=0)

    @property
    def flagged_px(self) -> int:
        """Pixels the model marks as defect, ignored classes included (what the familiarity check judges)."""
        return sum(c.area_px for c in self.class_summary) if self.class_summary else self.defect_area_px


@dataclass(frozen=True, kw_only=True)
class Answer(Detection):
    """The answer to one request: the detection, the input as the model read it, the model, timings, and whether
    the layer is like the training layers."""

    converted_from_colour: tuple[str, ...] = _info("images that arrived in colour and were converted to gray")
    lights: tuple[Light, ...] = _info("the light the model assumes for each image, in channel order")
    model: ModelInfo = _info("which model answered")
    timing_ms: Timing = _info("time spent in the worker")
    familiarity: Familiarity = _info("whether the layer is like the layers the model was trained on")

    @classmethod
    def of(cls, detection: Detection, **context: Any) -> Answer:
        """The detection with the request's context (converted_from_colour, lights, model, timing_ms,
        familiarity)."""
        return cls(**{f.name: getattr(detection, f.name) for f in dataclasses.fields(Detection)}, **context)


@dataclass(frozen=True)
class ErrorAnswer:
    """A request the handler cannot answer (HTTP 4xx): what was wrong, in words and as a machine-readable reason."""

    code: int = _info("the HTTP status", minimum=400, maximum=499)
    type: str = _info("always BadRequest", const="BadRequest")
    reason: str = _info("machine-readable cause; handler/request.py lists them")
    message: str = _info("what was wrong and what is accepted", minLength=1)
