"""Every complete triplet of a folder through the service: the same triplet rules as `prepare` (files named
<layer_id>_a<k>.<ext>), skipped files reported by reason, a progress bar, JSON lines per layer, a CSV summary and,
for a person, overlay PNGs.

Results are appended to `<out>.partial` as they come (a crash keeps what was answered) and renamed to `<out>` when
the batch ends; the CSV is written at the end. A layer's `latency_ms` is what the batch waited for its answer
(retries and backoff included); `attempt_ms` is the answering request alone. Failed layers are recorded with their
error and grouped by kind in the result (`BatchResult.failure_line`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.ab import ABClient
from client.client import DefectClient, ServiceError
from client.overlay import write_overlay
from training.inference.classes import DEFECT_CLASSES
from training.inference.images import write_csv
from training.preparation.triplets import group_files

log = logging.getLogger(__name__)

CLASS_COLUMNS = tuple(f"{name}_{what}" for name in DEFECT_CLASSES for what in ("components", "area_px", "area_mm2"))
SUMMARY_COLUMNS = (
    "layer_id", "status", "model", "defect", "max_confidence", "defect_area_pct", "defect_area_mm2", "bbox",
    "bbox_mm", "components_total", *CLASS_COLUMNS, "familiar", "unfamiliar_reasons", "latency_ms", "attempt_ms",
    "attempts", "mask_iou", "decision_agreement", "error_kind", "error",
)  # fmt: skip


@dataclass
class BatchResult:
    answered: int = 0
    failed: int = 0
    defects: int = 0
    unfamiliar: int = 0  # answered layers unlike the model's training layers (check the camera and lights)
    by_model: Counter = field(default_factory=Counter)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # files that do not form a triplet, with reasons
    errors: dict[str, list[str]] = field(default_factory=dict)  # error kind -> the layer ids that failed with it

    def line(self) -> str:
        models = ", ".join(f"{m} {n}" for m, n in sorted(self.by_model.items()))
        skipped = Counter(s["reason"] for s in self.skipped)
        return (
            f"{self.answered} layers answered ({self.defects} with defects, {self.unfamiliar} unlike the training "
            f"layers; {models or 'none'}), {self.failed} failed"
            + (f"; skipped files: {dict(skipped)}" if skipped else "")
        )

    def failure_line(self) -> str | None:
        """'3 of 40 layers failed: 2 x HTTP 400 unreadable (e.g. L7), 1 x no answer after 6 attempts (e.g. L9)',
        most frequent kind first; None when every layer was answered. Skipped files are not failures."""
        if not self.failed:
            return None
        kinds = sorted(self.errors.items(), key=lambda item: (-len(item[1]), item[0]))
        groups = ", ".join(f"{len(ids)} x {kind} (e.g. {min(ids)})" for kind, ids in kinds)
        return f"{self.failed} of {self.answered + self.failed} layers failed: {groups}"


def error_kind(err: Exception) -> str:
    """A failure without this layer's details, to group them: "HTTP 400 unreadable", "no answer after 6 attempts",
    "unreadable file (FileNotFoundError)"."""
    if isinstance(err, ServiceError):
        return err.kind
    return f"unreadable file ({type(err).__name__})"


def _record(layer_id: str, files: list[str], prediction=None, comparison=None, error: Exception | None = None) -> dict:
    record: dict[str, Any] = {"layer_id": layer_id, "files": files}
    if error is not None:
        return {**record, "status": "error", "error_kind": error_kind(error), "error": str(error)}
    answer = dict(prediction.answer)
    answer.pop("mask", None)  # overlays carry the mask for a person; the JSON lines stay small
    record.update(status="ok", model=prediction.model, latency_ms=round(prediction.latency_ms, 1),
                  attempt_ms=round(prediction.attempt_ms, 1), attempts=prediction.attempts, answer=answer)  # fmt: skip
    if comparison is not None:
        record["shadow"] = comparison
    return record


def _class_cells(answer: dict[str, Any]) -> dict[str, Any]:
    """The per-class columns: each class's regions, pixels and mm² (empty for a model without classes and for older
    servers' answers; an ignored class's regions are counted here too)."""
    cells = {}
    for summary in answer.get("class_summary", []):
        for what in ("components", "area_px", "area_mm2"):
            value = summary.get(what)
            cells[f"{summary['name']}_{what}"] = "" if value is None else value
    return cells


def _json_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    answer, shadow = record.get("answer", {}), record.get("shadow", {})
    familiarity = answer.get("familiarity", {})  # absent from error records and from older servers' answers
    return {
        **dict.fromkeys(CLASS_COLUMNS, ""), **_class_cells(answer),
        "defect_area_mm2": _json_cell(answer.get("defect_area_mm2")), "bbox_mm": _json_cell(answer.get("bbox_mm")),
        "layer_id": record["layer_id"], "status": record["status"], "model": record.get("model", ""),
        "defect": answer.get("defect", ""), "max_confidence": answer.get("max_confidence", ""),
        "defect_area_pct": answer.get("defect_area_pct", ""), "bbox": json.dumps(answer.get("bbox")) if answer else "",
        "components_total": answer.get("components_total", ""), "familiar": familiarity.get("familiar", ""),
        "unfamiliar_reasons": "; ".join(familiarity.get("reasons", [])), "latency_ms": record.get("latency_ms", ""),
        "attempt_ms": record.get("attempt_ms", ""), "attempts": record.get("attempts", ""),
        "mask_iou": shadow.get("mask_iou", ""), "decision_agreement": shadow.get("decision_agreement", ""),
        "error_kind": record.get("error_kind", ""), "error": record.get("error", ""),
    }  # fmt: skip


def run_batch(
    router: DefectClient | ABClient,
    raw_dir: Path,
    out: Path,
    summary: Path | None = None,
    overlays: Path | None = None,
    concurrency: int = 2,
    threshold: float | None = None,
    progress: bool = True,
) -> BatchResult:
    """Send every complete triplet of `raw_dir`; write JSON lines to `out`, the CSV to `summary`, overlays to a
    folder. A layer the service refuses (4xx) or never answers is recorded with its error and counted in the
    result's `failed` and `errors`; the rest go on. The caller decides what failures mean (the command exits 1)."""
    from tqdm import tqdm

    raw_dir, out = Path(raw_dir), Path(out)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir} is not a folder of layer images")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    triplets, dropped = group_files(raw_dir)
    result = BatchResult(skipped=[{"files": list(d.files), "reason": d.reason, "detail": d.detail} for d in dropped])
    for item in result.skipped:
        log.warning("skipped %s: %s (%s)", ", ".join(item["files"]), item["reason"], item["detail"])
    want_mask = overlays is not None

    def one(triplet) -> dict[str, Any]:
        files = [p.name for p in triplet.paths]
        try:
            if isinstance(router, ABClient):
                prediction, comparison = router.predict(triplet.paths, triplet.layer_id, threshold, want_mask)
            else:
                prediction, comparison = (
                    router.predict(triplet.paths, None, threshold, want_mask, triplet.layer_id),
                    None,
                )
        except (ServiceError, OSError) as err:
            return _record(triplet.layer_id, files, error=err)
        if overlays is not None:
            write_overlay(triplet.paths, prediction.answer, overlays / f"{triplet.layer_id}.png")
        return _record(triplet.layer_id, files, prediction, comparison)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    records = []
    with open(partial, "w") as sink, ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, t) for t in triplets]
        for future in tqdm(
            as_completed(futures), total=len(futures), desc="layers", unit="layer", disable=not progress
        ):
            record = future.result()
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            records.append(record)
            if record["status"] == "ok":
                result.answered += 1
                result.defects += bool(record["answer"]["defect"])
                result.unfamiliar += record["answer"].get("familiarity", {}).get("familiar") is False
                result.by_model[record["model"]] += 1
            else:
                result.failed += 1
                result.errors.setdefault(record["error_kind"], []).append(record["layer_id"])
                log.error("%s: %s", record["layer_id"], record["error"])
    os.replace(partial, out)
    if summary is not None:
        records.sort(key=lambda r: r["layer_id"])
        write_csv(summary, SUMMARY_COLUMNS, [_summary_row(r) for r in records])
    return result
