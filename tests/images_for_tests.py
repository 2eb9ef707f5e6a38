"""Encoded test images: real files in every accepted format, and crafted bad ones (headers that lie)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from training.inference.images import encode_png


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit gray) followed by one tiny IDAT: a decompression bomb's
    header without the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def encode(pixels: np.ndarray, ext: str = ".png") -> bytes:
    """Bytes of an image file; (H, W, 3) arrays are written as colour (RGB order)."""
    if ext == ".png":
        return encode_png(pixels)
    if pixels.ndim == 3:
        pixels = pixels[:, :, ::-1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(pixels))
    assert ok, ext
    return buf.tobytes()


def triplet(size: int = 64, dtype=np.uint8, seed: int = 0) -> list[np.ndarray]:
    """Three different gray images (H, W) of the given size and dtype."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 4095
    return [rng.integers(0, top, (size, size)).astype(dtype) for _ in range(3)]


def lit_layer(seed: int = 0, size: int = 128, level: float = 0.45, dtype=np.uint8) -> np.ndarray:
    """(size, size, 3) a rough surface under three lights (azimuths 0, 120, 240 degrees) captured at one exposure:
    each image is `level` x (1 + the slope toward its light), with a little sensor noise. Layers of one `level`
    look like layers of one camera setting."""
    rng = np.random.default_rng(seed)
    height = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), 3.0)
    gy, gx = np.gradient(height)
    gx, gy = gx / gx.std(), gy / gy.std()
    full = np.iinfo(dtype).max
    images = []
    for azimuth in np.deg2rad([0.0, 120.0, 240.0]):
        shade = 1.0 + 0.15 * (np.cos(azimuth) * gx + np.sin(azimuth) * gy)
        signal = level * shade * (1.0 + 0.02 * rng.normal(size=(size, size)))
        images.append(np.clip(np.round(signal * full), 0, full).astype(dtype))
    return np.stack(images, axis=-1)
