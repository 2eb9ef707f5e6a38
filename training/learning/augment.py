"""Training augmentation with albumentations: crops biased towards defects, lighting-consistent flips and
rotations, and photometric drift that differs per light (gain, gamma, noise, blur), as real lights drift.

Images enter as float32 (H, W, 3) in 0..1 (see `preprocess.to_unit`); masks as uint8 (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform

from training.learning.symmetry import LightingTransform, allowed_transforms


class LightSymmetry(DualTransform):
    """Apply one of the grid symmetries allowed by the light azimuths (uniformly), permuting channels."""

    def __init__(self, azimuths_deg: Sequence[float], p: float = 1.0):
        super().__init__(p=p)
        self.azimuths_deg = tuple(azimuths_deg)
        self.transforms: list[LightingTransform] = allowed_transforms(self.azimuths_deg)

    def get_params(self) -> dict[str, Any]:
        return {"index": int(self.random_generator.integers(len(self.transforms)))}

    def apply(self, img: np.ndarray, index: int = 0, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(self.transforms[index].apply_to_stack(img))

    def apply_to_mask(self, mask: np.ndarray, index: int = 0, **params: Any) -> np.ndarray:
        return self.transforms[index].apply_to_map(mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("azimuths_deg",)


class PerLightDrift(ImageOnlyTransform):
    """Independent gain, gamma, Gaussian noise and slight blur for each light channel (float images in 0..1)."""

    def __init__(
        self,
        gain: tuple[float, float] = (0.85, 1.15),
        gamma: tuple[float, float] = (0.85, 1.2),
        noise_std: tuple[float, float] = (0.0, 0.02),
        blur_sigma: tuple[float, float] = (0.0, 0.8),
        p: float = 0.8,
    ):
        super().__init__(p=p)
        self.gain, self.gamma, self.noise_std, self.blur_sigma = gain, gamma, noise_std, blur_sigma

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {"seed": int(rng.integers(2**31))}

    def apply(self, img: np.ndarray, seed: int = 0, **params: Any) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty_like(img, dtype=np.float32)
        for k in range(img.shape[2]):
            channel = np.clip(img[:, :, k].astype(np.float32), 0.0, 1.0)
            channel = rng.uniform(*self.gain) * channel ** rng.uniform(*self.gamma)
            sigma = rng.uniform(*self.blur_sigma)
            if sigma > 0.3:
                channel = cv2.GaussianBlur(channel, (0, 0), sigma)
            channel = channel + rng.normal(0.0, rng.uniform(*self.noise_std), channel.shape).astype(np.float32)
            out[:, :, k] = np.clip(channel, 0.0, 1.0)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain", "gamma", "noise_std", "blur_sigma")


def training_transform(crop: int, azimuths_deg: Sequence[float], defect_crop_share: float = 0.5) -> A.Compose:
    """Random crop (a share of them centred on labelled pixels), lighting symmetry, per-light drift."""
    crop_step = A.OneOf(
        [
            A.RandomCrop(crop, crop, p=1.0 - defect_crop_share),
            A.CropNonEmptyMaskIfExists(crop, crop, p=defect_crop_share),
        ],
        p=1.0,
    )
    return A.Compose([crop_step, LightSymmetry(azimuths_deg), PerLightDrift()])
