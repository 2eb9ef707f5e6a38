"""What the loop is fed: the train and val layers of a prepared folder, the ModelConfig they imply (input
statistics, light azimuths, label density and the BCE weight of defect pixels), and the stream of augmented
training crops with the random generators that draw them (`Feed`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.preprocess import channel_statistics
from training.learning.augment import training_transform
from training.learning.dataset import LayerRecord, TrainingCrops, load_split
from training.learning.devices import Processes
from training.learning.losses import class_weights_from_pixels, pos_weight_from_density
from training.learning.schedule import TrainConfig

log = logging.getLogger(__name__)


def dataset_azimuths(data_dir: Path) -> tuple[float, ...]:
    """The light azimuths `prepare` recorded for this folder (channel k is lit from azimuth k)."""
    report = Path(data_dir) / "prepare_report.json"
    azimuths = json.loads(report.read_text()).get("azimuths_deg") if report.exists() else None
    if not azimuths:
        raise ValueError(f"{report} records no light azimuths: run `python -m training prepare` on this folder again")
    return tuple(azimuths)


def load_records(
    data_dir: Path, labels: str, masks_dir: Path | None, max_val_layers: int | None
) -> tuple[list[LayerRecord], list[LayerRecord]]:
    """The train split and the first `max_val_layers` layers of the val split."""
    train_records = load_split(data_dir, "train", labels, masks_dir)
    val_records = load_split(data_dir, "val", labels, masks_dir)[:max_val_layers]
    if not val_records:
        raise ValueError(f"the val split of {data_dir} is empty: prepare more layers or change --split")
    return train_records, val_records


def class_pixels(records: list[LayerRecord]) -> list[int]:
    """Pixels of each defect class in the records' truth class maps; ValueError when a map holds an id that is no
    class (a plain 0/255 mask given as truth, say)."""
    counts = np.zeros(len(DEFECT_CLASSES) + 1, dtype=np.int64)
    for r in records:
        found = np.bincount(r.truth.ravel(), minlength=len(counts))
        if len(found) > len(counts):
            raise ValueError(
                f"the truth of layer {r.layer_id} holds the value {len(found) - 1}; class maps hold 0 and the class "
                f"ids 1..{len(DEFECT_CLASSES)}: train with --binary, or give plain masks with --labels masks"
            )
        counts += found
    return [int(c) for c in counts[1:]]


def model_pitch(records: list[LayerRecord], given: float | None) -> float | None:
    """The pitch the model records: the one given (the camera it will serve), else the training layers' pitch when
    they all share one, else None (said in the log, with how to give it)."""
    if given is not None:
        return given
    pitches = {r.pitch_um for r in records}
    if len(pitches) == 1:
        return pitches.pop()
    known = sorted(p for p in pitches if p is not None)
    if not known:
        what = "no recorded pitch"
    elif None in pitches:
        what = f"a pitch on some ({known[0]:g}-{known[-1]:g} um) and none on others"
    else:
        what = f"pitches {known[0]:g}-{known[-1]:g} um"
    log.info("the training layers have %s: the model records no pitch (answers give no millimetres unless a "
             "request states its pitch); give the camera's with `train --pitch UM`", what)  # fmt: skip
    return None


def initial_config(
    data_dir: Path,
    train_records: list[LayerRecord],
    val_records: list[LayerRecord],
    labels: str,
    profile: TrainConfig,
    seed: int,
    pos_weight: float | None,
    pretrained: bool,
    classes: bool = True,
    pitch_um: float | None = None,
) -> tuple[ModelConfig, float, float]:
    """The new model's config (input statistics of the training layers, light azimuths, pitch, the defect classes
    when it learns from exact truth and `classes`, training facts), the label density of the training layers and
    the BCE weight of defect pixels (given, else the profile's, else from that density)."""
    density = float(np.mean([r.label.mean() for r in train_records]))
    given = pos_weight if pos_weight is not None else profile.pos_weight
    weight = given if given is not None else pos_weight_from_density(density)
    model = {"representation": profile.representation} if profile.representation else {}
    if profile.decoder_channels:
        model["decoder_channels"] = profile.decoder_channels
    if ModelConfig(**model).representation == "intensity":
        model["mean"], model["std"] = channel_statistics([r.stack for r in train_records])
    training = {"data": str(data_dir), "profile": profile.profile, "train_layers": len(train_records),
                "val_layers": len(val_records), "label_density": round(density, 6), "pos_weight": round(weight, 3),
                "seed": seed, "pretrained": pretrained}  # fmt: skip
    if classes and labels == "truth":
        model["class_names"] = DEFECT_CLASSES
        pixels = class_pixels(train_records)
        training["class_pixels"] = dict(zip(DEFECT_CLASSES, pixels, strict=True))
        training["class_weights"] = class_weights_from_pixels(pixels)
    config = ModelConfig(**model, azimuths_deg=dataset_azimuths(data_dir), label_source=labels,
                         pitch_um=model_pitch(train_records, pitch_um), training=training)  # fmt: skip
    return config, density, weight


def _reseed_worker(_worker_id: int) -> None:
    """DataLoader workers get copies of the transform with the same random state: give each its own stream."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(int(torch.initial_seed() % 2**32))


@dataclass
class Feed:
    """The training crops and the random streams that draw them."""

    transform: A.Compose
    generator: torch.Generator
    sampler: Sampler
    loader: DataLoader

    @classmethod
    def build(
        cls,
        records: list[LayerRecord],
        config: ModelConfig,
        profile: TrainConfig,
        processes: Processes,
        seed: int,
        workers: int,
        class_targets: bool = False,
    ) -> Feed:
        transform = training_transform(profile.crop, config.azimuths_deg, profile.defect_crop_share)
        transform.set_random_seed(seed + processes.rank)
        crops = TrainingCrops(records, config, transform, profile.repeats, class_targets)
        generator = torch.Generator().manual_seed(seed)
        sampler = (
            DistributedSampler(crops, processes.world, processes.rank, seed=seed)
            if processes.distributed
            else RandomSampler(crops, generator=generator)
        )
        loader = DataLoader(
            crops,
            batch_size=profile.batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=_reseed_worker if workers > 0 else None,
            generator=generator,
            drop_last=len(crops) >= profile.batch_size,
        )
        return cls(transform, generator, sampler, loader)

    def reseed(self, epoch: int, seed: int, processes: Processes) -> None:
        """Crops and their order depend on (seed, rank, epoch) only, so a resumed run continues the same sequence."""
        self.transform.set_random_seed(seed + processes.rank + 1000 * epoch)
        self.generator.manual_seed(seed + 1000 * epoch)
        if processes.distributed:
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
