"""A/B between served variants: a weighted split that is sticky per layer id, and shadow mode (both variants, the
primary's answer returned, the two compared).

TorchServe has no weighted routing of its own, so on one machine the split lives here; in a cluster the router
does it (k8s/: Gateway API HTTPRoute weights, or KServe's canaryTrafficPercent).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from client.client import DefectClient, ImageInput, Prediction
from training.inference.variants import model_names
from training.learning.metrics import confusion


def example_split() -> str:
    """A weighted split over the registered models, for help texts and messages: 'm1=0.9,m2=0.1'."""
    names = model_names()
    return f"{names[0]}=0.9,{names[-1]}=0.1" if len(names) > 1 else f"{names[0]}=1"


def parse_weights(text: str) -> dict[str, float]:
    """'a=0.9,b=0.1' -> {model: share}, shares normalised to sum to 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise ValueError(f"expected model=weight pairs such as {example_split()}; got {part!r}")
        if name.strip() in weights:
            raise ValueError(f"model {name.strip()!r} appears twice in {text!r}")
        weights[name.strip()] = weight
    total = sum(weights.values())
    if not weights or total <= 0:
        raise ValueError(f"the A/B weights must name at least one model with a positive weight; got {text!r}")
    return {name: w / total for name, w in weights.items()}


def bucket(layer_id: str) -> float:
    """A stable number in [0, 1) for a layer id (SHA-256, not Python's salted hash): the same id, the same bucket."""
    return int(hashlib.sha256(layer_id.encode()).hexdigest()[:15], 16) / 16**15


@dataclass(frozen=True)
class WeightedSplit:
    weights: dict[str, float]  # model -> share, summing to 1

    @classmethod
    def parse(cls, text: str) -> WeightedSplit:
        return cls(parse_weights(text))

    def choose(self, layer_id: str) -> str:
        """The model for a layer: the share of the unit interval its bucket falls in."""
        point, edge = bucket(layer_id), 0.0
        for name, share in self.weights.items():
            edge += share
            if point < edge:
                return name
        return next(reversed(self.weights))  # rounding left the top edge a hair under 1


def decode_mask(answer: dict[str, Any]) -> np.ndarray:
    """(H, W) bool from an answer's mask PNG, binary or class map."""
    if "mask" not in answer:
        raise ValueError("the answer has no mask: request it (return_mask) to compare masks")
    png = base64.b64decode(answer["mask"]["data"])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0  # binary 255, or a class id


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty (they agree)."""
    return confusion(a, b).iou()


def compare(primary: Prediction, shadow: Prediction) -> dict[str, Any]:
    """How the shadow variant's answer differs from the primary's for the same layer."""
    return {
        "primary": primary.model,
        "shadow": shadow.model,
        "mask_iou": round(mask_iou(decode_mask(primary.answer), decode_mask(shadow.answer)), 4),
        "decision_agreement": primary.answer["defect"] == shadow.answer["defect"],
        "defect_area_px": {
            primary.model: primary.answer["defect_area_px"],
            shadow.model: shadow.answer["defect_area_px"],
        },
        # each variant's wait as the caller saw it (retries and backoff included), asked one after the other
        "latency_ms": {primary.model: round(primary.latency_ms, 1), shadow.model: round(shadow.latency_ms, 1)},
    }


class ABClient:
    """Routes each layer by a weighted split (sticky per layer id), or shadows: both variants, primary answers."""

    def __init__(self, client: DefectClient, split: WeightedSplit | None = None, shadow: tuple[str, str] | None = None):
        if (split is None) == (shadow is None):
            raise ValueError("choose one A/B mode: a weighted split or a (primary, shadow) pair")
        self.client, self.split, self.shadow = client, split, shadow

    def predict(
        self, images: Sequence[ImageInput], layer_id: str, threshold: float | None = None, return_mask: bool = True
    ) -> tuple[Prediction, dict[str, Any] | None]:
        """(the answer that counts, the shadow comparison or None)."""
        if self.split is not None:
            model = self.split.choose(layer_id)
            return self.client.predict(images, model, threshold, return_mask, layer_id), None
        primary_model, shadow_model = self.shadow
        primary = self.client.predict(images, primary_model, threshold, True, layer_id)
        shadow = self.client.predict(images, shadow_model, threshold, True, layer_id)
        comparison = compare(primary, shadow)
        if not return_mask:
            primary = replace(primary, answer={k: v for k, v in primary.answer.items() if k != "mask"})
        return primary, comparison
