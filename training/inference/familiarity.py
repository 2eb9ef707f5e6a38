"""Is a layer like the layers the model was trained on? A few cheap statistics of how a layer was captured,
compared with their range over the training layers, and a check on how much of the layer the model flags.

A camera or light that changed (exposure, gain, a new response curve, a light that went out) moves every layer
outside what the model has seen, and a model that has not seen such input may flag defects everywhere. The
answer then says so in words ("check the camera"), next to the unchanged defect decision.

The statistics (their names: `STATISTICS`, one entry each), each taken on every 4th pixel of every 4th row
(`preprocess.STATISTICS_STRIDE`), so they cost a few milliseconds at 512x512, a small part of the model's time:

| name | meaning |
|---|---|
| `exposure_<k>` | median level of light k's image as a share of full scale (k = 0, 1, 2: one per light) |
| `saturated` | share of pixels at full scale, all three images |
| `black` | share of pixels at zero, all three images |
| `contrast` | robust spread (1.4826 x MAD) of the log ratio of each light's image to the geometric mean of the three, less its large-scale background: how strongly the shading differs between the lights (`preprocess.shading_channels` divides by it) |
| `input_tail` | share of the model's input beyond 4 in absolute value (`preprocess.model_channels`, computed on the strided sample with the background scale shrunk by the stride) |

The rule (`unfamiliar`): a statistic is out of range when it lies outside its training range widened on each side
by half the range's width plus the statistic's floor (`Statistic.floor`: the absolute part, so a statistic that
barely varied in training, such as `saturated` on well-exposed layers, is not tripped by noise). A layer is also
doubtful when the model flags more than `MAX_FLAGGED_SHARE` of its pixels as defect. Defects are sized in
micrometres, so their share depends on the field of view: a camera over a whole build plate (hundreds of
millimetres) sees far more powder around even the largest missing-powder region than it covers, so a model that
flags most of such a layer more likely reads a changed input than powder. The synthetic layers are small fields
(512 pixels at the pitches `PhysicsRanges` draws): there the largest incomplete spreading (`defects.DEFAULT_SPECS`)
can cover most of a genuine layer, and this rule then calls it unfamiliar. On a small field (a crop, a fine pitch)
raise the limit. Models trained before the ranges were recorded (`ModelConfig.input_ranges` None) get the
flagged-share rule only.

numpy and the shared preprocessing, no torch: this module ships in every archive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from training.inference.answer import Familiarity
from training.inference.config import ModelConfig
from training.inference.preprocess import (
    STATISTICS_STRIDE,
    log_ratios,
    model_channels,
    robust_spread,
    to_unit,
)

MAX_FLAGGED_SHARE = 0.6  # of the layer's pixels marked as defect; above it the input is in doubt (see above)
MARGIN_OF_WIDTH = 0.5  # the training range is widened on each side by this share of its width, plus the floor
TAIL = 4.0  # model input values beyond this (in robust standard deviations) count as tail
PERCENTILE_LAYERS = 100  # with at least this many training layers the range is the 1st-99th percentile, else min-max


@dataclass(frozen=True)
class Statistic:
    """How one statistic (its meaning: the table above) is judged and worded."""

    shown: str  # how a value reads in a reason, with {value}, {low} and {high} formatted alike
    floor: float  # the absolute part of the margin around the training range
    advice: str  # what an operator should check when it is out of range


PER_LIGHT = "exposure"  # the statistic taken once per light, named exposure_0, exposure_1, ...
STATISTICS = {
    PER_LIGHT: Statistic(
        "median level {value:.2f} of full scale, trained on {low:.2f}-{high:.2f}",
        0.05,
        "check the camera (exposure, gain) or the lights",
    ),
    "saturated": Statistic(
        "{value:.1%} of pixels at full scale, trained on {low:.1%}-{high:.1%}",
        0.01,
        "check the camera's exposure and gain (bright pixels clip)",
    ),
    "black": Statistic(
        "{value:.1%} of pixels black, trained on {low:.1%}-{high:.1%}",
        0.01,
        "check the camera's exposure and black level, and that every light fires",
    ),
    "contrast": Statistic(
        "contrast between the lights {value:.3f}, trained on {low:.3f}-{high:.3f}",
        0.02,
        "check the camera's response curve (gamma) and the lights' power and angle",
    ),
    "input_tail": Statistic(
        "{value:.2%} of the model's input in the tails, trained on {low:.2%}-{high:.2%}",
        0.005,
        "check the lights for glare or shadows and the camera's focus",
    ),
}


def statistic_names(lights: int = 3) -> tuple[str, ...]:
    """The statistics' names in answer order, the per-light one expanded: exposure_0, ..., saturated, ..."""
    return tuple(
        name_k
        for name in STATISTICS
        for name_k in ([f"{name}_{k}" for k in range(lights)] if name == PER_LIGHT else [name])
    )


def _kind(name: str) -> Statistic:
    """The Statistic a name stands for (exposure_1 -> the exposure entry)."""
    return STATISTICS.get(name) or STATISTICS[name.rpartition("_")[0]]


def layer_statistics(stack: np.ndarray, config: ModelConfig) -> dict[str, float]:
    """The capture statistics of one (H, W, lights) uint8/uint16 layer, on its strided sample."""
    lights = len(config.azimuths_deg)
    if stack.ndim != 3 or stack.shape[2] != lights:
        raise ValueError(f"expected an (H, W, {lights}) stack, one image per light, got shape {stack.shape}")
    sample = np.ascontiguousarray(stack[::STATISTICS_STRIDE, ::STATISTICS_STRIDE])  # (h, w, lights)
    unit = to_unit(sample)  # refuses anything but 8- and 16-bit pixels
    full_scale = np.iinfo(stack.dtype).max
    exposure = np.median(sample.reshape(-1, lights).T, axis=1) / full_scale  # (lights,)
    sigma = config.background_sigma_px / STATISTICS_STRIDE  # the sample's pixels are the stride apart
    ratios, _ = log_ratios(unit, sigma)
    # The model input of the sample, with the background scale shrunk by the stride (the intensity input is per
    # pixel, so exactly the sample of the layer's input).
    model_input = model_channels(sample, config, background_sigma_px=sigma)
    values = {
        **{f"{PER_LIGHT}_{k}": float(exposure[k]) for k in range(lights)},
        "saturated": float(np.mean(sample >= full_scale)),
        "black": float(np.mean(sample == 0)),
        "contrast": robust_spread(ratios),
        "input_tail": float(np.mean(np.abs(model_input) > TAIL)),
    }
    return {name: round(value, 6) for name, value in values.items()}


def statistics_range(stacks: Iterable[np.ndarray], config: ModelConfig) -> dict[str, tuple[float, float]]:
    """Each statistic's range over the training layers, for `ModelConfig.input_ranges`: the 1st to 99th
    percentile over layers with PERCENTILE_LAYERS layers or more (a stray layer does not widen it), min to max
    with fewer."""
    rows = [layer_statistics(stack, config) for stack in stacks]
    if not rows:
        raise ValueError("no training layers to take the statistics' ranges from")
    q = (1, 99) if len(rows) >= PERCENTILE_LAYERS else (0, 100)
    ranges = {}
    for name in rows[0]:
        low, high = np.percentile([row[name] for row in rows], q)
        ranges[name] = (round(float(low), 6), round(float(high), 6))
    return ranges


def unfamiliar(
    statistics: dict[str, float],
    ranges: dict[str, tuple[float, float]] | None,
    flagged_share: float | None = None,
    max_flagged_share: float = MAX_FLAGGED_SHARE,
) -> list[str]:
    """The reasons, in an operator's words, why a layer is unlike the training layers; empty when it is not.
    A statistic without a recorded range (or all of them, with `ranges` None) is not judged."""
    reasons = []
    for name, value in statistics.items():
        if ranges is None or name not in ranges:
            continue
        low, high = ranges[name]
        kind = _kind(name)
        margin = MARGIN_OF_WIDTH * (high - low) + kind.floor
        if not low - margin <= value <= high + margin:
            reasons.append(f"{name}: {kind.shown.format(value=value, low=low, high=high)}: {kind.advice}")
    if flagged_share is not None and flagged_share > max_flagged_share:
        reasons.append(
            f"flagged share: {flagged_share:.0%} of the layer marked as defect, more than {max_flagged_share:.0%}: "
            "check the camera and lights before the powder"
        )
    return reasons


def assess(stack: np.ndarray, config: ModelConfig, flagged_share: float) -> Familiarity:
    """The answer's familiarity part for one layer: its statistics, judged against the model's training ranges."""
    statistics = layer_statistics(stack, config)
    reasons = unfamiliar(statistics, config.input_ranges, flagged_share)
    return Familiarity(not reasons, tuple(reasons), statistics, config.input_ranges is not None)
