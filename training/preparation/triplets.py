"""Raw layer files as a machine writes them, grouped into triplets (one image per light) and checked.

A raw folder holds `<layer_id>_a<k>.<png|tif|tiff|bmp|jpg|jpeg>` with k = 0, 1, 2 for the three lights. Anything
that cannot become a usable layer is dropped with a named reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.inference.images import SUPPORTED_EXTENSIONS, ImageError, read_gray
from training.inference.layer import REASONS as LAYER_REASONS
from training.inference.layer import LayerError, stack_images

NAME = re.compile(r"^(?P<layer>.+)_a(?P<k>[0-9]+)(?P<ext>\.[A-Za-z0-9]+)$")

REASONS: dict[str, str] = {
    "unrecognised_name": "the file name is not <layer_id>_a<0|1|2>.<png|tif|tiff|bmp|jpg|jpeg>",
    "incomplete_triplet": "one or more of the three light images is missing",
    "ambiguous_angle": "two files claim the same layer and light (e.g. .png and .tif)",
    **{reason: LAYER_REASONS[reason] for reason in ("unreadable", "size_mismatch", "bit_depth_mismatch")},
    "blank": "an image has (almost) no contrast: lights off, lens cap, or a flat fill",
    "saturated": "an image has too many pixels at full scale: overexposed",
    "identical_images": "two lights gave pixel-identical images: a light did not switch",
    "duplicate_layer": "pixel-identical to another layer kept under an earlier id",
    "truth_mismatch": "the layer's truth mask is unreadable or not the size of its images",
}


@dataclass(frozen=True)
class Triplet:
    layer_id: str
    paths: tuple[Path, Path, Path]


@dataclass(frozen=True)
class Dropped:
    name: str  # layer id, or the file name for files that belong to no layer
    reason: str
    detail: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualityLimits:
    min_contrast: float = 0.02  # p99.5 - p0.5 as a fraction of full scale
    max_saturated: float = 0.10  # fraction of pixels at full scale


def group_files(raw_dir: Path) -> tuple[list[Triplet], list[Dropped]]:
    """Group the files of a raw folder into triplets by layer id; name what cannot be grouped and why."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw folder {raw_dir} does not exist or is not a folder")
    by_layer: dict[str, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    dropped: list[Dropped] = []
    for path in sorted(p for p in raw_dir.iterdir() if p.is_file()):
        match = NAME.match(path.name)
        if not match or match["ext"].lower() not in SUPPORTED_EXTENSIONS or int(match["k"]) > 2:
            dropped.append(Dropped(path.name, "unrecognised_name", REASONS["unrecognised_name"], (path.name,)))
            continue
        by_layer[match["layer"]][int(match["k"])].append(path)
    triplets = []
    for layer_id in sorted(by_layer):
        angles = by_layer[layer_id]
        files = tuple(p.name for k in sorted(angles) for p in angles[k])
        missing = [k for k in range(3) if k not in angles]
        doubled = [k for k in sorted(angles) if len(angles[k]) > 1]
        if missing:
            detail = f"missing light(s) {', '.join(f'a{k}' for k in missing)}"
            dropped.append(Dropped(layer_id, "incomplete_triplet", detail, files))
        elif doubled:
            detail = f"more than one file for light(s) {', '.join(f'a{k}' for k in doubled)}"
            dropped.append(Dropped(layer_id, "ambiguous_angle", detail, files))
        else:
            triplets.append(Triplet(layer_id, (angles[0][0], angles[1][0], angles[2][0])))
    return triplets, dropped


@dataclass(frozen=True)
class LoadedTriplet:
    layer_id: str
    stack: np.ndarray  # (H, W, 3) uint8 or uint16, channel k = light k
    digest: str  # hash of the pixels, to find duplicate layers
    converted_from_colour: bool


def effective_full_scale(images: list) -> int:
    """Largest value the camera can write: 255 for 8-bit files; for 16-bit files the smallest 2^b - 1 (b >= 10)
    that holds the data, since 10-, 12- and 14-bit cameras store their pixels in 16-bit files."""
    if images[0].pixels.dtype == np.uint8:
        return 255
    peak = max(int(im.pixels.max()) for im in images)
    bits = max(10, peak.bit_length())
    return (1 << bits) - 1


def load_triplet(triplet: Triplet, limits: QualityLimits = QualityLimits()) -> LoadedTriplet | Dropped:
    """Decode and check one triplet; returns the stacked pixels, or why the layer cannot be used."""
    files = tuple(p.name for p in triplet.paths)

    def drop(reason: str, detail: str) -> Dropped:
        return Dropped(triplet.layer_id, reason, detail, files)

    images = []
    for path in triplet.paths:
        try:
            images.append(read_gray(path))
        except (ImageError, OSError) as err:
            return drop("unreadable", str(err))
    try:
        stack = stack_images(images, [p.name for p in triplet.paths]).stack  # (H, W, 3)
    except LayerError as err:
        return drop(err.reason, str(err))
    full = effective_full_scale(images)
    for k, im in enumerate(images):
        low, high = np.percentile(im.pixels, [0.5, 99.5])
        if (high - low) < limits.min_contrast * full:
            return drop("blank", f"a{k}: 99% of pixels within {int(high - low)} of {full} levels")
        saturated = float(np.count_nonzero(im.pixels == full)) / im.pixels.size
        if saturated > limits.max_saturated:
            return drop("saturated", f"a{k}: {saturated:.1%} of pixels at full scale {full}")
    digests = [hashlib.sha256(im.pixels.tobytes()).hexdigest() for im in images]
    for i in range(3):
        for j in range(i + 1, 3):
            if digests[i] == digests[j]:
                return drop("identical_images", f"a{i} and a{j} are pixel-identical")
    digest = hashlib.sha256("".join(digests).encode() + str(stack.shape).encode()).hexdigest()
    return LoadedTriplet(triplet.layer_id, stack, digest, any(im.converted_from_colour for im in images))
