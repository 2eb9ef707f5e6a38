"""Flips and rotations that keep lighting consistent.

Mirroring or rotating an image also moves where its light appears to come from. A transform of the pixel grid
(one of the eight symmetries of the square) is allowed only if it maps the configured set of light azimuths onto
itself; the channels are then permuted so that channel k is again "lit from azimuth phi_k". With lights at
0/120/240 degrees only the identity and the mirror about light 0's axis (top <-> bottom) qualify, and the mirror
swaps channels 1 and 2. Nothing here is hard-coded per light layout: it is derived from the azimuths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Each element as a 2x2 matrix acting on (x, y) pixel offsets from the image centre (x right, y down), and the
# NumPy operation that moves pixel content accordingly on (H, W, ...) arrays.
_ELEMENTS: dict[str, tuple[tuple[tuple[int, int], tuple[int, int]], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (((1, 0), (0, 1)), lambda a: a),
    "rot90": (((0, 1), (-1, 0)), lambda a: np.rot90(a, 1)),  # counter-clockwise as seen on screen
    "rot180": (((-1, 0), (0, -1)), lambda a: np.rot90(a, 2)),
    "rot270": (((0, -1), (1, 0)), lambda a: np.rot90(a, 3)),
    "flip_left_right": (((-1, 0), (0, 1)), lambda a: a[:, ::-1]),
    "flip_top_bottom": (((1, 0), (0, -1)), lambda a: a[::-1]),
    "transpose": (((0, 1), (1, 0)), lambda a: np.swapaxes(a, 0, 1)),
    "anti_transpose": (((0, -1), (-1, 0)), lambda a: np.swapaxes(np.rot90(a, 2), 0, 1)),
}


@dataclass(frozen=True)
class LightingTransform:
    name: str
    matrix: tuple[tuple[int, int], tuple[int, int]]
    permutation: tuple[int, ...]  # channel k of the input becomes channel permutation[k] of the output

    def apply_to_stack(self, stack: np.ndarray) -> np.ndarray:
        """(H, W, C) -> transformed pixels, channels permuted to keep channel k lit from azimuth k; channels past
        the lights' (a representation's extra channels) move with the pixels only."""
        moved = _ELEMENTS[self.name][1](stack)
        out = np.array(moved)  # a copy: the extra channels keep their place
        for k, target in enumerate(self.permutation):
            out[..., target] = moved[..., k]
        return out

    def apply_to_map(self, array: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, ...) masks, height fields: moved, no channel permutation."""
        return np.ascontiguousarray(_ELEMENTS[self.name][1](array))


def transformed_azimuth(azimuth_deg: float, matrix: tuple[tuple[int, int], tuple[int, int]]) -> float:
    """Where a light at `azimuth_deg` appears to be after the grid transform `matrix`."""
    phi = math.radians(azimuth_deg)
    dx, dy = math.cos(phi), -math.sin(phi)  # towards the light, y down
    nx = matrix[0][0] * dx + matrix[0][1] * dy
    ny = matrix[1][0] * dx + matrix[1][1] * dy
    return math.degrees(math.atan2(-ny, nx)) % 360.0


def _angle_match(a: float, b: float, tolerance_deg: float) -> bool:
    return abs((a - b + 180.0) % 360.0 - 180.0) <= tolerance_deg


def allowed_transforms(azimuths_deg: Sequence[float], tolerance_deg: float = 0.5) -> list[LightingTransform]:
    """The grid symmetries that map the set of light azimuths onto itself, with their channel permutations."""
    allowed = []
    for name, (matrix, _) in _ELEMENTS.items():
        permutation = []
        for azimuth in azimuths_deg:
            moved = transformed_azimuth(azimuth, matrix)
            matches = [j for j, other in enumerate(azimuths_deg) if _angle_match(moved, other, tolerance_deg)]
            if not matches:
                break
            permutation.append(matches[0])
        if len(permutation) == len(azimuths_deg) and len(set(permutation)) == len(permutation):
            allowed.append(LightingTransform(name, matrix, tuple(permutation)))
    return allowed
