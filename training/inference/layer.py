"""Three light images of one layer -> the (H, W, 3) stack the model reads: the input contract shared by `prepare`,
evaluation and the serving handler.

Every check raises `LayerError` with a `reason` (a key of `REASONS`) and a message that names the image and says
what was expected, so `prepare` can drop a triplet under a named reason and the handler can answer a 4xx.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from training.inference.images import GrayImage, ImageError, decode_gray

LIGHTS = 3  # images per layer, one per light; image k is channel k of the stack

REASONS: dict[str, str] = {
    "image_count": f"a layer needs exactly {LIGHTS} images, one per light",
    "unreadable": "a file is empty, corrupt, truncated or not an image",
    "too_many_pixels": "an image header declares more pixels than allowed",
    "too_small": "an image is smaller than the model's minimum side",
    "size_mismatch": "the three images do not have the same width and height",
    "bit_depth_mismatch": "the three images do not have the same bit depth",
}


class LayerError(ValueError):
    """Why three images cannot become a layer; `reason` is a key of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown layer error reason {reason!r}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Layer:
    stack: np.ndarray  # (H, W, 3) uint8 or uint16, channel k = light k
    converted_from_colour: tuple[bool, ...]  # per image: was it colour (converted to gray)?

    @property
    def bit_depth(self) -> int:
        return 8 if self.stack.dtype == np.uint8 else 16


def declared_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from the image header alone, without decoding the pixels (a decompression bomb is caught
    here, before any memory is spent on it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: our limit is checked by the caller
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as err:
        raise LayerError("too_many_pixels", f"{name}: {err}") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for bad headers
        raise LayerError(
            "unreadable", f"{name} is not a readable PNG, TIFF, BMP or JPEG image ({len(data)} bytes): {err}"
        ) from err


def stack_images(images: Sequence[GrayImage], names: Sequence[str], min_side: int = 1) -> Layer:
    """Check that decoded images form one layer (count, size, bit depth) and stack them as channels."""
    if len(images) != LIGHTS:
        raise LayerError("image_count", f"got {len(images)} images; a layer needs {LIGHTS}, one per light")
    shapes = [im.pixels.shape for im in images]
    if len(set(shapes)) > 1:
        sizes = ", ".join(f"{n} {w}x{h}" for n, (h, w) in zip(names, shapes, strict=True))
        raise LayerError("size_mismatch", f"the three images must have the same size (W x H); got {sizes}")
    depths = [im.bit_depth for im in images]
    if len(set(depths)) > 1:
        listed = ", ".join(f"{n} {d}-bit" for n, d in zip(names, depths, strict=True))
        raise LayerError("bit_depth_mismatch", f"the three images must have the same bit depth; got {listed}")
    h, w = shapes[0]
    if min(h, w) < min_side:
        raise LayerError("too_small", f"images are {w}x{h}; the model needs at least {min_side}x{min_side}")
    stack = np.stack([im.pixels for im in images], axis=-1)  # (H, W, 3)
    return Layer(stack, tuple(im.converted_from_colour for im in images))


def decode_layer(
    blobs: Sequence[bytes], names: Sequence[str] | None = None, max_pixels: int | None = None, min_side: int = 1
) -> Layer:
    """Encoded image bytes (PNG, TIFF, BMP, JPEG; 8 or 16 bit; gray or colour) of the three lights -> a Layer.
    With `max_pixels`, each header is read first and an image declaring more pixels is refused before decoding.
    The three images are decoded at once, on threads (OpenCV lets go of the GIL while it decodes); a bad image is
    reported as it would be one after the other: the first in order."""
    names = list(names or [f"angle{k}" for k in range(len(blobs))])
    if len(blobs) != LIGHTS:
        raise LayerError("image_count", f"got {len(blobs)} images; a layer needs {LIGHTS}, one per light")
    for data, name in zip(blobs, names, strict=True):
        if not data:
            raise LayerError("unreadable", f"{name} is empty (0 bytes)")
        if max_pixels is not None:
            w, h = declared_size(data, name)
            if w * h > max_pixels:
                raise LayerError(
                    "too_many_pixels",
                    f"{name} declares {w}x{h} = {w * h} pixels; this server accepts at most {max_pixels}",
                )
    images = []
    for decoding in [
        _decoders(os.getpid()).submit(decode_gray, data, name) for data, name in zip(blobs, names, strict=True)
    ]:
        try:
            images.append(decoding.result())
        except ImageError as err:
            raise LayerError("unreadable", str(err)) from err
    return stack_images(images, names, min_side)


@functools.cache
def _decoders(pid: int) -> ThreadPoolExecutor:
    """The threads that decode a layer's images, made once per process (a forked child has none of its parent's
    threads, so it makes its own)."""
    return ThreadPoolExecutor(max_workers=LIGHTS, thread_name_prefix="decode")
