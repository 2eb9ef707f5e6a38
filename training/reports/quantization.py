"""docs/quantization.md: the int8 variants' agreement with float32 and their accuracy against exact truth, with the
calibration sweep when one was measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.inference.classes import class_label
from training.inference.images import write_atomic
from training.inference.variants import OPENVINO, PYTORCH
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch
    from training.learning.quantize import Quantization

AGREEMENT_TARGET = 0.98  # mask IoU of int8 with float32
CLASS_AGREEMENT_TARGET = 0.97  # the same for each class's pixels
F1_DROP_TARGET = 0.005  # F1 against truth lost by int8
VARIANT_ROWS = (
    ("PyTorch static int8 (FX, calibrated)", "static_int8"),
    ("OpenVINO int8 (NNCF post-training, same calibration layers)", "openvino_int8"),
    ("PyTorch dynamic int8 (prototype)", "dynamic_int8"),
)


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _sweep_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Calibration sweep (validation split)",
        "",
        "PyTorch: each activation observer at each number of calibration layers. OpenVINO: each way NNCF sets "
        "activation ranges (`--openvino-ranges`) at the calibration count used.",
        "",
        "| backend | observer / ranges | calibration layers | seconds | mask IoU with fp32 | decision agreement | "
        "F1 drop vs truth |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r.get('backend', 'pytorch')} | {r['observer']} | {r['images']} | {r['calibration_seconds']} | "
            f"{r['mask_iou']:.4f} | {r['decision_agreement']:.3f} | {r.get('f1_drop', float('nan')):.4f} |"
            for r in rows
        ],
        "",
    ]
    for backend in dict.fromkeys(r.get("backend", PYTORCH) for r in rows):
        own = [r for r in rows if r.get("backend", PYTORCH) == backend]
        best = max(own, key=lambda r: (round(r["mask_iou"], 4), -r["images"]))
        lines.append(f"Highest agreement, {backend}: `{best['observer']}` with {best['images']} layers (fewest "
                     "layers among equals).")  # fmt: skip
    return [*lines, ""]


def _class_lines(result: Quantization) -> list[str]:
    """Each class's agreement (IoU of the class's pixels in the two class maps), for a class model."""
    rows = [(name, getattr(result, key).get("class_iou")) for name, key in VARIANT_ROWS]
    rows = [(name, ious) for name, ious in rows if ious]
    if not rows:
        return []
    names = list(rows[0][1])
    lines = [
        "Per class: IoU of each class's pixels in the int8 and float32 class maps (each pixel of the mask takes its "
        f"most probable class; target >= {CLASS_AGREEMENT_TARGET}; n/a where neither marks the class).",
        "",
        "| variant | " + " | ".join(class_label(n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, ious in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(ious[n]) for n in names) + " |")
    return [*lines, ""]


def render(result: Quantization) -> str:
    """The Markdown of the report."""
    rows = []
    for name, key in VARIANT_ROWS:
        a = getattr(result, key)
        rows.append(
            f"| {name} | {_cell(a['mask_iou'])} | {_cell(a['decision_agreement'])} | {_cell(a.get('f1_float'))} | "
            f"{_cell(a.get('f1_int8'))} | {_cell(a.get('f1_drop'), 4)} | {_cell(a['max_probability_difference'])} |"
        )
    sizes = result.sizes_bytes
    settings = result.settings
    timings = result.engine_timings_ms
    engine_note = (
        "the fastest measured here: "
        + ", ".join(f"{e} {t['eager_ms']:.1f} ms eager / {t['frozen_ms']:.1f} ms frozen" for e, t in timings.items())
        + " per tile"
        if timings
        else "chosen by hand"
    )
    return "\n".join(
        [
            "# Quantization: int8 against float32",
            "",
            f"{produced_by('python -m training quantize')} Regenerate:",
            "",
            "```bash",
            result.command,
            "```",
            "",
            f"Checkpoint `{result.checkpoint}`; {result.layers} layers of the {result.split} split at the "
            f"model's threshold {result.threshold:.3f}. Static int8: engine `{settings.engine}` ({engine_note}), "
            f"observer `{settings.observer}`, {settings.calibration_images} calibration layers, kept in float: "
            f"{', '.join(settings.float_modules) or 'nothing'}. OpenVINO int8: NNCF's post-training quantization of "
            f"the converted float network on the same calibration layers, activation ranges `{settings.openvino_ranges}`, "
            "float modules likewise. Targets: mask IoU "
            f"with float32 >= {AGREEMENT_TARGET}, F1 drop <= {F1_DROP_TARGET}.",
            "",
            "| variant | mask IoU with fp32 | decision agreement | F1 fp32 vs truth | F1 int8 vs truth | F1 drop | "
            "max probability difference |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"State dicts: fp32 {sizes['fp32'] / 1e6:.2f} MB, int8 {sizes['int8'] / 1e6:.2f} MB "
            f"({sizes['fp32'] / sizes['int8']:.2f}x smaller). OpenVINO IR (xml and bin): fp32 "
            f"{sizes[f'{OPENVINO} fp32'] / 1e6:.2f} MB, int8 {sizes[f'{OPENVINO} int8'] / 1e6:.2f} MB.",
            "",
            *_class_lines(result),
            *_sweep_lines(result.calibration_sweep),
        ]
    )


def write_report(result: Quantization, path: Path) -> None:
    """Write the report to `path`."""
    write_atomic(path, render(result).encode())
