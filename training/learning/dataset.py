"""Prepared layers as PyTorch datasets: random training crops with augmentation, and whole layers for
validation and evaluation. Reads `manifest.csv` written by `prepare`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from training.inference.config import ModelConfig
from training.inference.images import read_png_array
from training.inference.preprocess import model_channels

LABEL_SOURCES = ("heuristic", "truth", "masks")


@dataclass(frozen=True)
class LayerRecord:
    layer_id: str
    stack: np.ndarray  # (H, W, 3) uint8 or uint16, channel k = light k
    label: np.ndarray  # (H, W) uint8 0/1: what the model learns from
    truth: np.ndarray | None  # (H, W) uint8 class map when exact truth exists
    heuristic: np.ndarray  # (H, W) uint8 0/1: prepare's heuristic label
    pitch_um: float | None = None  # micrometres per pixel, as `prepare` recorded it; None when unknown


def read_manifest(data_dir: Path) -> list[dict[str, str]]:
    path = Path(data_dir) / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m training prepare --out {data_dir}` first")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def load_split(data_dir: Path, split: str, labels: str, masks_dir: Path | None = None) -> list[LayerRecord]:
    """Load every layer of a split into memory, with the chosen label source."""
    if labels not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {labels!r}; choose from: {', '.join(LABEL_SOURCES)}")
    if labels == "masks" and masks_dir is None:
        raise ValueError("--labels masks needs --masks DIR with one <layer_id>.png per layer (nonzero = defect)")
    data_dir = Path(data_dir)
    rows = [r for r in read_manifest(data_dir) if r["split"] == split]
    records = []
    for row in rows:
        stack = read_png_array(data_dir / row["image"])
        truth = read_png_array(data_dir / row["truth"]) if row["truth"] else None
        heuristic = (read_png_array(data_dir / row["mask"]) > 0).astype(np.uint8)
        if labels == "heuristic":
            label = heuristic > 0
        elif labels == "truth":
            if truth is None:
                raise ValueError(
                    f"layer {row['layer_id']} has no truth; prepare with --truth, or use --labels heuristic"
                )
            label = truth > 0
        else:
            path = Path(masks_dir) / f"{row['layer_id']}.png"
            if not path.exists():
                raise FileNotFoundError(f"no mask {path} for layer {row['layer_id']}")
            label = read_png_array(path) > 0
        if label.shape != stack.shape[:2]:
            raise ValueError(f"label of {row['layer_id']} is {label.shape}, its image {stack.shape[:2]}")
        pitch = float(row["pitch_um"]) if row.get("pitch_um") else None  # manifests before pitch had no column
        records.append(LayerRecord(row["layer_id"], stack, label.astype(np.uint8), truth, heuristic, pitch))
    return records


class TrainingCrops(Dataset):
    """Random augmented crops of the model's input and target; one epoch visits every layer `repeats` times. Each
    layer's input is derived once, from the whole layer (as inference does), and kept as float16 (H, W, C). The
    target is the label (0/1), or with `class_targets` the truth class map (0, or the class id 1..K)."""

    def __init__(
        self,
        records: list[LayerRecord],
        config: ModelConfig,
        transform: A.Compose,
        repeats: int = 1,
        class_targets: bool = False,
    ):
        if not records:
            raise ValueError("no training layers: is the train split empty? (check manifest.csv)")
        self.records, self.config, self.transform, self.repeats = records, config, transform, repeats
        self.inputs = [model_channels(r.stack, config).transpose(1, 2, 0).astype(np.float16) for r in records]
        self.targets = [r.truth if class_targets else r.label for r in records]

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = index % len(self.records)
        out = self.transform(image=self.inputs[k], mask=self.targets[k])
        image = np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32)  # (C, h, w)
        mask = out["mask"].astype(np.float32)[None]  # (1, h, w)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(np.ascontiguousarray(mask))}
