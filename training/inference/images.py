"""Files: images decoded to grayscale with clear errors, lossless stacks, and atomic writes (bytes, JSON, CSV).

Part of the input contract shared by preparation, training and serving: it depends on NumPy and OpenCV only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: new files get the usual permissions (mkstemp alone would make them owner-only)

cv2.setLogLevel(1)  # errors only: a corrupt file is reported by our own message, not by libpng's warnings


class ImageError(ValueError):
    """An image that cannot be used, with a message that says why."""


@dataclass(frozen=True)
class GrayImage:
    pixels: np.ndarray  # (H, W) uint8 or uint16
    converted_from_colour: bool

    @property
    def bit_depth(self) -> int:
        return 8 if self.pixels.dtype == np.uint8 else 16


def decode_gray(data: bytes, name: str = "image") -> GrayImage:
    """Decode PNG, TIFF, BMP or JPEG bytes (8 or 16 bit, gray or colour) into one grayscale channel."""
    if len(data) == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise ImageError(
            f"{name} is not a readable PNG, TIFF, BMP or JPEG image ({len(data)} bytes; corrupt or truncated?)"
        )
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{name} has {pixels.dtype} pixels; expected 8- or 16-bit unsigned integers")
    colour = False
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels == 1:
            pixels = pixels[:, :, 0]
        elif channels in (3, 4):
            code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
            pixels = cv2.cvtColor(pixels, code)
            colour = True
        else:
            raise ImageError(f"{name} has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return GrayImage(np.ascontiguousarray(pixels), colour)


def read_gray(path: str | Path) -> GrayImage:
    path = Path(path)
    return decode_gray(path.read_bytes(), name=path.name)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a (H, W) or (H, W, 3) uint8/uint16 array; channel order is kept as given (RGB)."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 pixels, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[:, :, ::-1]  # OpenCV writes BGR: reverse so the file's R, G, B are our channels 0, 1, 2
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError(f"could not encode a {pixels.shape} {pixels.dtype} array as PNG")
    return buf.tobytes()


def read_png_array(path: str | Path) -> np.ndarray:
    """Read a PNG written by `encode_png` back into the same array (channel order included)."""
    path = Path(path)
    pixels = cv2.imdecode(np.frombuffer(path.read_bytes(), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"{path} is not a readable PNG")
    return pixels[:, :, ::-1].copy() if pixels.ndim == 3 else pixels


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes so that readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    """Indented JSON with a final newline, written atomically."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=sort_keys) + "\n").encode())


def write_csv(path: str | Path, columns: Sequence[str], rows: list[dict]) -> None:
    """A CSV table with a header row, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())
