"""Training augmentation with albumentations, on the model's input (see `preprocess.model_channels`): crops
biased towards defects (each defect class alike), lighting-consistent flips and rotations, and per-channel jitter.

Images enter as float (H, W, C) model input; masks as uint8 (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform

from training.learning.symmetry import LightingTransform, allowed_transforms


class ClassBalancedCrop(A.CropNonEmptyMaskIfExists):
    """A crop holding a labelled pixel, whose class is drawn first, uniformly among the classes the layer's mask
    holds, then one of its pixels (nnU-Net's foreground oversampling). Drawing a pixel of any class instead
    follows the pixel counts: an incomplete spreading holds a thousand times the pixels of a pit, and pits would
    almost never be in a crop's middle. A 0/1 mask has one class: any labelled pixel, as before."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        mask = data["mask"]
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=2)[1:]) + 1
        if len(present) < 2:
            return super().get_params_dependent_on_data(params, data)
        chosen = present[self.py_random.randrange(len(present))]
        return super().get_params_dependent_on_data(params, {**data, "mask": mask == chosen})


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


class InputJitter(ImageOnlyTransform):
    """Independent gain, Gaussian noise and slight blur for each channel of the model's input (in its units: robust
    standard deviations for shading). The renderer draws the physics of each layer; this adds variation within
    a layer's draw."""

    def __init__(
        self,
        gain: tuple[float, float] = (0.8, 1.25),
        noise_std: tuple[float, float] = (0.0, 0.3),
        blur_sigma: tuple[float, float] = (0.0, 0.8),
        p: float = 0.8,
    ):
        super().__init__(p=p)
        self.gain, self.noise_std, self.blur_sigma = gain, noise_std, blur_sigma

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {"seed": int(rng.integers(2**31))}

    def apply(self, img: np.ndarray, seed: int = 0, **params: Any) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty(img.shape, dtype=np.float32)
        for k in range(img.shape[2]):
            channel = img[:, :, k].astype(np.float32) * rng.uniform(*self.gain)
            sigma = rng.uniform(*self.blur_sigma)
            if sigma > 0.3:
                channel = cv2.GaussianBlur(channel, (0, 0), sigma)
            out[:, :, k] = channel + rng.normal(0.0, rng.uniform(*self.noise_std), channel.shape).astype(np.float32)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gain", "noise_std", "blur_sigma")


def training_transform(crop: int, azimuths_deg: Sequence[float], defect_crop_share: float = 0.5) -> A.Compose:
    """Random crop (a share of them around labelled pixels, each class alike), lighting symmetry, per-channel
    jitter."""
    crop_step = A.OneOf(
        [
            A.RandomCrop(crop, crop, p=1.0 - defect_crop_share),
            ClassBalancedCrop(crop, crop, p=defect_crop_share),
        ],
        p=1.0,
    )
    return A.Compose([crop_step, LightSymmetry(azimuths_deg), InputJitter()])
