"""ab-report: the served variants side by side over a labeled set, through the real service.

For each variant, `requests` layers are sent one at a time (the set repeated as needed): latency percentiles (what
the caller waited per layer, retries and backoff included) and throughput per variant, F1 against truth over the
distinct layers, how many of those layers the variant found unlike its training layers, and the agreement between
the first two variants (mask IoU per layer, same defect / no-defect decision).
"""

from __future__ import annotations

import csv
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.ab import decode_mask, mask_iou
from client.client import DefectClient
from training.inference import serialize
from training.inference.images import encode_png, read_png_array, write_json
from training.learning.metrics import Counts, confusion
from training.preparation.triplets import group_files


@dataclass(frozen=True)
class LabeledLayer:
    layer_id: str
    blobs: list[bytes]  # the three light images as files
    truth: np.ndarray | None  # (H, W) bool, or None when the set has no truth for the layer


def load_labeled(data: Path, split: str | None = "test") -> list[LabeledLayer]:
    """Layers of a prepared folder (manifest.csv; `split` of it, all when None) or of a synthetic folder (raw/ and
    truth/, as `synth` writes)."""
    data = Path(data)
    if (data / "manifest.csv").exists():
        with open(data / "manifest.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
        layers = []
        for row in rows:
            stack = read_png_array(data / row["image"])  # (H, W, 3), channel k = light k
            truth = read_png_array(data / row["truth"]) > 0 if row.get("truth") else None
            layers.append(LabeledLayer(row["layer_id"], [encode_png(stack[:, :, k]) for k in range(3)], truth))
    elif (data / "raw").is_dir():
        triplets, _ = group_files(data / "raw")
        layers = []
        for t in triplets:
            truth_path = data / "truth" / f"{t.layer_id}.png"
            truth = read_png_array(truth_path) > 0 if truth_path.exists() else None
            layers.append(LabeledLayer(t.layer_id, [p.read_bytes() for p in t.paths], truth))
    else:
        raise FileNotFoundError(f"{data} has neither manifest.csv (prepared) nor raw/ (synthetic)")
    if not layers:
        raise ValueError(f"no layers in {data}" + (f" for split {split!r}" if split else ""))
    return layers


@dataclass(frozen=True)
class ABReport:
    """What `ab-report` measured, written as its --json (these fields, in this order); training/reports/ab.py renders
    it."""

    command: str
    service: str  # the service that answered, in words
    models: dict[str, dict[str, Any]]  # variant -> requests, p50/p95/p99_ms, throughput_per_s, f1_vs_truth,
    # unfamiliar_layers (None when the service's answers do not say), ...
    agreement: dict[str, Any]  # of the first two variants: pair, layers, mask IoU pooled / mean / min, decisions

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_ab_report(
    client: DefectClient, layers: list[LabeledLayer], models: list[str], requests: int, command: str = ""
) -> ABReport:
    if len(models) < 2:
        raise ValueError(f"an A/B report needs two variants, got {models}")
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    per_model: dict[str, dict[str, Any]] = {}
    masks: dict[str, dict[str, np.ndarray]] = {}
    decisions: dict[str, dict[str, bool]] = {}
    found: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # model -> layer -> class -> its class_summary entry
    for model in models:
        latencies, masks[model], decisions[model], found[model] = [], {}, {}, {}
        counts = Counts()
        judged, unfamiliar = 0, 0  # distinct layers whose answer says whether they are familiar, and how many are not
        started = time.perf_counter()
        for i in range(requests):
            layer = layers[i % len(layers)]
            prediction = client.predict(layer.blobs, model, return_mask=True, layer_id=layer.layer_id)
            latencies.append(prediction.latency_ms)  # the caller's wait, retries and backoff included
            if layer.layer_id not in masks[model]:
                mask = decode_mask(prediction.answer)
                masks[model][layer.layer_id] = mask
                decisions[model][layer.layer_id] = bool(prediction.answer["defect"])
                found[model][layer.layer_id] = {c["name"]: c for c in prediction.answer.get("class_summary", [])}
                familiarity = prediction.answer.get("familiarity")  # absent from older servers' answers
                if familiarity is not None:
                    judged += 1
                    unfamiliar += not familiarity["familiar"]
                if layer.truth is not None:
                    counts = counts + confusion(mask, layer.truth)
        seconds = time.perf_counter() - started
        per_model[model] = {
            "requests": requests,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "throughput_per_s": requests / seconds,
            "f1_vs_truth": counts.f1() if counts.total else None,
            "layers_scored": len(masks[model]),
            "unfamiliar_layers": unfamiliar if judged else None,
            "classes": class_totals(found[model].values()),
            "latencies_ms": latencies,
        }
    a, b = models[0], models[1]
    shared = sorted(set(masks[a]) & set(masks[b]))
    ious = [mask_iou(masks[a][i], masks[b][i]) for i in shared]
    pooled = sum((confusion(masks[b][i], masks[a][i]) for i in shared), Counts())
    agreement = {
        "pair": [a, b],
        "layers": len(shared),
        "mask_iou_pooled": pooled.iou(),
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_min": float(np.min(ious)),
        "decision_agreement": float(np.mean([decisions[a][i] == decisions[b][i] for i in shared])),
        "classes": class_agreement(found[a], found[b], shared),
    }
    return ABReport(command, f"the service at {client.url}", per_model, agreement)


def class_totals(layers: Any) -> dict[str, dict[str, int]]:
    """Per class over a variant's distinct layers (each a class -> class_summary entry mapping): regions, pixels
    and the layers it was found on. Empty for a model without classes."""
    totals: dict[str, dict[str, int]] = {}
    for classes in layers:
        for name, c in classes.items():
            t = totals.setdefault(name, {"components": 0, "area_px": 0, "layers": 0})
            t["components"] += c["components"]
            t["area_px"] += c["area_px"]
            t["layers"] += c["components"] > 0
    return totals


def class_agreement(a: dict[str, dict], b: dict[str, dict], layers: list[str]) -> dict[str, float]:
    """Per class: the share of the shared layers on which both variants agree whether the class is there."""

    def present(side: dict[str, dict], layer: str, name: str) -> bool:
        return side[layer].get(name, {}).get("components", 0) > 0

    names = sorted({n for i in layers for n in (*a[i], *b[i])})
    return {n: float(np.mean([present(a, i, n) == present(b, i, n) for i in layers])) for n in names}


def save(result: ABReport, path: Path) -> None:
    write_json(path, result.to_dict())


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "client", *argv])
