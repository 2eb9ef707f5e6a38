"""How long training runs and how fast it learns: the training profiles (`TrainConfig`, `PROFILES`), the
learning-rate schedule (linear warm-up, then cosine decay) and the wall-clock budget.

Pure functions of numbers: the loop asks them for the learning rate of a step and whether to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TRAINING_SHARE = 0.9  # of the time budget spent training; the rest is left for the last validation and save


@dataclass(frozen=True)
class TrainConfig:
    profile: str
    epochs: int
    repeats: int  # crops drawn from each training layer per epoch
    batch_size: int
    crop: int
    lr: float
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    patience: int = 10  # epochs without a better validation F1 before stopping
    max_minutes: float | None = None  # wall-clock budget for the loop (validation included)
    defect_crop_share: float = 0.5
    max_val_layers: int | None = None
    average_decay: float = 0.99  # exponential moving average of the weights per step (0: none); see averaging
    pos_weight: float | None = 1.0  # BCE weight of defect pixels; None: the labels' background/defect ratio
    representation: str | None = None  # the model's input; None: ModelConfig's default
    decoder_channels: tuple[int, ...] | None = None  # U-Net decoder widths; None: ModelConfig's default

    def __post_init__(self) -> None:
        if self.crop % 32 or self.crop < 32:
            raise ValueError(f"crop must be a positive multiple of 32 (the U-Net's stride), got {self.crop}")
        if min(self.epochs, self.repeats, self.batch_size) < 1:
            raise ValueError(f"epochs, repeats and batch size must be at least 1, got {self}")

    @property
    def budget_seconds(self) -> float | None:
        """The time budget in seconds, or None when the run has none."""
        return self.max_minutes * 60 if self.max_minutes else None


PROFILES: dict[str, TrainConfig] = {
    # Fits in 4 minutes on 2 CPU cores (setup and the final save included): for the demo and the tests. The time
    # budget ends it, long before 40 epochs on a CPU; the learning-rate schedule follows the budget.
    "quick": TrainConfig(
        "quick",
        epochs=40,
        repeats=4,
        batch_size=8,
        crop=160,
        lr=3e-3,
        warmup_fraction=0.1,
        patience=40,
        max_minutes=3.5,
        max_val_layers=12,
    ),
    # The documented recipe for a better model (a GPU makes it short).
    "full": TrainConfig("full", epochs=120, repeats=8, batch_size=16, crop=320, lr=1e-3, patience=20),
}


def check_profile(name: str) -> TrainConfig:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from: {', '.join(PROFILES)}")
    return PROFILES[name]


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over the first `warmup` share of training, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))))


def progress(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """How far training is, from 0 to 1 (or past it): over the epochs or, when there is a time budget, over
    whichever ends first."""
    done = step / total_steps
    if budget:
        done = max(done, elapsed / (TRAINING_SHARE * budget))
    return done


def out_of_time(elapsed: float, budget: float | None) -> bool:
    """True once the training share of the budget is spent: stop and leave room for validation and the save."""
    return budget is not None and elapsed > budget * TRAINING_SHARE


def budget_spent(used_seconds: float, budget: float | None) -> bool:
    """True when a run to be resumed has no useful time left in its budget."""
    return budget is not None and used_seconds >= TRAINING_SHARE * budget
