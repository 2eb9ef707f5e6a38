"""The corpus of malformed (and awkward but valid) requests, each with the status the service must answer.

`build(good)` gets three good 8-bit gray PNGs of one layer and returns keyword arguments for `requests.post`
(files / data / headers), without the authorization header. `reason` is the handler's reason when the handler
answers; None when TorchServe's frontend answers (unknown model, a body over the limit) or when the request is valid.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from tests.images_for_tests import encode, png_header_only
from training.serving.launcher import CONFIG, read_properties

MAX_REQUEST = int(read_properties(CONFIG)["max_request_size"])


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    reason: str | None
    build: Callable[[list[bytes]], dict[str, Any]]
    model: str | None = None  # another model than the one under test (e.g. one that does not exist)
    message: bool = True  # False: TorchServe's frontend answers with an empty body (its request-size limit)


def files(*blobs: bytes, names: tuple[str, ...] | None = None) -> list[tuple[str, tuple[str, bytes]]]:
    names = names or tuple(f"angle{k}" for k in range(len(blobs)))
    return [(n, (f"{n}.png", b)) for n, b in zip(names, blobs, strict=True)]


def as_json(body: Any) -> dict[str, Any]:
    return {"data": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gray(size: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 4095
    return np.random.default_rng(seed).integers(0, top, (size, size)).astype(dtype)


def tiff(pixels: np.ndarray) -> bytes:
    return encode(pixels, ".tif")


def rgba(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.dstack([pixels, pixels, pixels, np.full_like(pixels, 255)]))
    assert ok
    return buf.tobytes()


CASES: list[Case] = [
    # images that are not images
    Case("zero-byte file", 400, "unreadable", lambda g: {"files": files(g[0], b"", g[2])}),
    Case("truncated png", 400, "unreadable", lambda g: {"files": files(g[0], g[1][: len(g[1]) // 3], g[2])}),
    Case("png signature only", 400, "unreadable", lambda g: {"files": files(g[0], g[1][:8], g[2])}),
    Case("text renamed .png", 400, "unreadable", lambda g: {"files": files(g[0], b"just some notes", g[2])}),
    Case("gif (unsupported format)", 400, "unreadable", lambda g: {"files": files(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", g[1], g[2])}),
    Case("png header of width 0", 400, "unreadable", lambda g: {"files": files(png_header_only(0, 64), g[1], g[2])}),
    Case("image sent as a text field", 400, "unreadable", lambda g: {"files": files(g[0], g[2]), "data": {"angle2": "not a file"}}),
    # how many images
    Case("two images", 400, "image_count", lambda g: {"files": files(g[0], g[1])}),
    Case("four images", 400, "unexpected_field", lambda g: {"files": files(*g, g[0])}),
    Case("one image", 400, "image_count", lambda g: {"files": files(g[0])}),
    Case("duplicated field, one light missing", 400, "image_count",
         lambda g: {"files": files(g[0], g[1], g[1], names=("angle0", "angle1", "angle1"))}),
    Case("duplicated field, all lights present (TorchServe keeps the last)", 200, None,
         lambda g: {"files": files(g[0], g[0], g[1], g[2], names=("angle0", "angle0", "angle1", "angle2"))}),
    Case("unknown extra field", 400, "unexpected_field", lambda g: {"files": files(*g), "data": {"colour": "red"}}),
    Case("empty body", 400, "image_count", lambda g: {"data": b""}),
    Case("one raw png as the body", 400, "invalid_json", lambda g: {"data": g[0], "headers": {"Content-Type": "image/png"}}),
    # sizes and depths
    Case("sizes differ", 400, "size_mismatch", lambda g: {"files": files(g[0], g[1], encode(gray(48)))}),
    Case("bit depths differ", 400, "bit_depth_mismatch", lambda g: {"files": files(g[0], g[1], encode(gray(64, np.uint16)))}),
    Case("1x1 images", 400, "too_small", lambda g: {"files": files(*(encode(gray(1, seed=k)) for k in range(3)))}),
    Case("31x31 images", 400, "too_small", lambda g: {"files": files(*(encode(gray(31, seed=k)) for k in range(3)))}),
    Case("decompression bomb header 30000x30000", 413, "too_many_pixels", lambda g: {"files": files(g[0], png_header_only(30000, 30000), g[2])}),
    Case("header over the pixel limit 5000x5000", 413, "too_many_pixels", lambda g: {"files": files(png_header_only(5000, 5000), g[1], g[2])}),
    # accepted formats
    Case("16-bit gray pngs", 200, None, lambda g: {"files": files(*(encode(gray(64, np.uint16, k)) for k in range(3)))}),
    Case("rgba pngs", 200, None, lambda g: {"files": files(*(rgba(gray(64, seed=k)) for k in range(3)))}),
    Case("16-bit tiffs", 200, None, lambda g: {"files": files(*(tiff(gray(64, np.uint16, k)) for k in range(3)))}),
    Case("jpegs", 200, None, lambda g: {"files": files(*(encode(gray(64, seed=k), ".jpg") for k in range(3)))}),
    # JSON bodies
    Case("malformed json", 400, "invalid_json", lambda g: {"data": b'{"images": [', "headers": {"Content-Type": "application/json"}}),
    Case("json array instead of an object", 400, "invalid_json", lambda g: as_json([b64(x) for x in g])),
    Case("json images not a list", 400, "invalid_json", lambda g: as_json({"images": b64(g[0])})),
    Case("json with two images", 400, "image_count", lambda g: as_json({"images": [b64(g[0]), b64(g[1])]})),
    Case("json with four images", 400, "image_count", lambda g: as_json({"images": [b64(x) for x in (*g, g[0])]})),
    Case("invalid base64", 400, "invalid_base64", lambda g: as_json({"images": [b64(g[0]), "@@not base64@@", b64(g[2])]})),
    Case("image given as a number", 400, "invalid_base64", lambda g: as_json({"images": [b64(g[0]), 12345, b64(g[2])]})),
    Case("base64 of text", 400, "unreadable", lambda g: as_json({"images": [b64(g[0]), b64(b"hello"), b64(g[2])]})),
    Case("unknown json key", 400, "unexpected_field", lambda g: as_json({"images": [b64(x) for x in g], "tile": 256})),
    Case("valid json", 200, None, lambda g: as_json({"images": [b64(x) for x in g], "return_mask": False})),
    # options
    Case("threshold above 1", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"threshold": "1.5"}}),
    Case("threshold 0", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"threshold": "0"}}),
    Case("negative threshold", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"threshold": "-0.2"}}),
    Case("threshold not a number", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"threshold": "high"}}),
    Case("threshold NaN", 400, "invalid_option", lambda g: as_json({"images": [b64(x) for x in g], "threshold": "NaN"})),
    Case("threshold true", 400, "invalid_option", lambda g: as_json({"images": [b64(x) for x in g], "threshold": True})),
    Case("return_mask not a flag", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"return_mask": "maybe"}}),
    Case("pitch 0", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"pitch_um": "0"}}),
    Case("negative pitch", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"pitch_um": "-25"}}),
    Case("pitch not a number", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"pitch_um": "fine"}}),
    Case("pitch infinite", 400, "invalid_option", lambda g: as_json({"images": [b64(x) for x in g], "pitch_um": "inf"})),
    Case("unknown class to ignore", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"ignore_classes": "spatter,crack"}}),
    Case("classes to ignore not names", 400, "invalid_option", lambda g: as_json({"images": [b64(x) for x in g], "ignore_classes": [1, 2]})),
    Case("unknown mask format", 400, "invalid_option", lambda g: {"files": files(*g), "data": {"mask_format": "rgb"}}),
    Case("pitch, ignored classes and a class map", 200, None,
         lambda g: {"files": files(*g), "data": {"pitch_um": "25", "ignore_classes": "spatter, pit", "mask_format": "classes"}}),
    Case("json with classes to ignore", 200, None, lambda g: as_json({"images": [b64(x) for x in g], "ignore_classes": ["spatter"], "pitch_um": 30})),
    # what the frontend answers
    Case("body over max_request_size", 413, None, lambda g: {"data": b"0" * (MAX_REQUEST + 1), "headers": {"Content-Type": "application/octet-stream"}},
         message=False),  # Netty refuses it before TorchServe's code: a bare 413, no JSON (documented in docs/api.md)
    Case("unknown model", 404, None, lambda g: {"files": files(*g)}, model="defect_int16"),
]  # fmt: skip
