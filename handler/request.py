"""A serving request -> three encoded images and options: TorchServe's request dicts, whether multipart (the
ModelConfig's image fields, angle0..2, and the text fields of OPTION_FIELDS) or a JSON body
{"images": [b64 x 3], option: value, ...}.

`BadRequest` carries the HTTP status and a machine-readable reason with a message that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.inference.answer import BINARY_MASK, CLASS_MAP, MASK_FORMATS, UNKNOWN_SCALE, ErrorAnswer, Scale
from training.inference.classes import check_class_names
from training.inference.config import ModelConfig, check_pitch, image_field
from training.inference.layer import LIGHTS, LayerError
from training.inference.layer import REASONS as LAYER_REASONS
from training.inference.postprocess import check_threshold

IMAGE_FIELDS = tuple(image_field(k) for k in range(LIGHTS))  # a three-light model's fields (ModelConfig.image_fields)
OPTION_FIELDS = ("threshold", "return_mask", "mask_format", "ignore_classes", "pitch_um")
STATUS_PHRASES = {400: "Bad Request", 413: "Payload Too Large"}
# Every reason a request is refused for: the request's own, then the layer's (decode and checks).
REASONS: dict[str, str] = {
    "unexpected_field": "a field or JSON key the API does not know",
    "invalid_json": "the body is neither multipart nor the documented JSON object",
    "invalid_base64": "an image in a JSON body is not a base64 string",
    "invalid_option": f"an option ({', '.join(OPTION_FIELDS)}) has a value outside what is accepted",
    **LAYER_REASONS,
}


class BadRequest(ValueError):
    """A request this handler cannot answer, with the HTTP status and a machine-readable reason."""

    def __init__(self, message: str, reason: str, code: int = 400) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown bad-request reason {reason!r}; known: {', '.join(REASONS)}")
        super().__init__(message)
        self.reason, self.code = reason, code

    @property
    def phrase(self) -> str:
        return STATUS_PHRASES.get(self.code, "Bad Request")

    @classmethod
    def from_layer_error(cls, err: LayerError) -> BadRequest:
        return cls(str(err), err.reason, 413 if err.reason == "too_many_pixels" else 400)

    def answer(self) -> ErrorAnswer:
        return ErrorAnswer(self.code, "BadRequest", self.reason, str(self))


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false, got {_text(value)[:40]!r}", "invalid_option")


def _blob(value: Any, name: str) -> bytes:
    """A multipart field's content as bytes: a file arrives as bytes; a text field as str (decoded by TorchServe)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")  # the decoder will say it is not an image
    raise BadRequest(
        f"{name} arrived as {type(value).__name__} (sent with a JSON content type?), not as an image file", "unreadable"
    )


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string, got {type(value).__name__}", "invalid_base64")
    if value.startswith("data:") and "," in value:  # a data URL, as a browser's FileReader makes
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{name} is not valid base64: {err}", "invalid_base64") from err


def parse_request(
    request: dict[str, Any], fields: Sequence[str] = IMAGE_FIELDS
) -> tuple[list[bytes], list[str], dict[str, Any]]:
    """One TorchServe request -> (the image byte strings in channel order, their names, options). Multipart with
    the model's image `fields` (and form fields threshold, return_mask), or a JSON body
    {"images": [b64, b64, b64], "threshold": .., ...} whose image k is field k."""
    options = {k: request[k] for k in OPTION_FIELDS if k in request}
    if any(k in request for k in fields):
        unknown = sorted(set(request) - set(fields) - set(OPTION_FIELDS))
        if unknown:
            raise BadRequest(
                f"unexpected field(s) {unknown}; send {', '.join(fields)} and optionally {', '.join(OPTION_FIELDS)}",
                "unexpected_field",
            )
        missing = [k for k in fields if k not in request]
        if missing:
            raise BadRequest(f"missing image field(s) {missing}; a layer needs {', '.join(fields)}", "image_count")
        return [_blob(request[k], k) for k in fields], list(fields), options
    body = request.get("body", request.get("data"))
    if body is None:
        raise BadRequest(
            f'no images: send multipart fields {", ".join(fields)} or a JSON body {{"images": [b64, b64, b64]}}',
            "image_count",
        )
    if isinstance(body, (bytes, bytearray)) and not body.strip():
        raise BadRequest(
            f'the request is empty: send multipart fields {", ".join(fields)} or a JSON body {{"images": [b64, b64, b64]}}',
            "image_count",
        )
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRequest(
                f"the body is neither multipart nor valid JSON ({err}); send multipart fields "
                f'{", ".join(fields)} or {{"images": [b64, b64, b64]}}',
                "invalid_json",
            ) from err
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise BadRequest(
            f'the JSON body must be an object with "images": a list of {len(fields)} base64 strings', "invalid_json"
        )
    unknown = sorted(set(body) - {"images", *OPTION_FIELDS})
    if unknown:
        raise BadRequest(
            f"unexpected JSON key(s) {unknown}; allowed: images, {', '.join(OPTION_FIELDS)}", "unexpected_field"
        )
    images = body["images"]
    if len(images) != len(fields):
        raise BadRequest(f"got {len(images)} images; a layer needs {len(fields)}, one per light", "image_count")
    names = [f"images[{k}]" for k in range(len(fields))]
    options.update({k: body[k] for k in OPTION_FIELDS if k in body})
    return [_b64(v, n) for v, n in zip(images, names, strict=True)], names, options


@dataclass(frozen=True)
class Options:
    """What a request asks beyond its images, checked against the model that answers it."""

    threshold: float
    return_mask: bool = True
    mask_format: str = BINARY_MASK
    ignore_classes: tuple[str, ...] = ()
    scale: Scale = UNKNOWN_SCALE


def request_options(options: dict[str, Any], config: ModelConfig) -> Options:
    """A request's options: its own threshold (0..1) if it sent one, else the model's; whether to return the mask
    and in which format; classes to leave out of the decision (a class model's only); its own pitch, else the
    model's. BadRequest naming the field and what it accepts."""
    try:
        threshold = check_threshold(options["threshold"]) if "threshold" in options else config.threshold
        pitch = check_pitch(_text(options["pitch_um"]), "pitch_um") if "pitch_um" in options else None
    except ValueError as err:
        raise BadRequest(str(err), "invalid_option") from err
    return_mask = flag(options["return_mask"], "return_mask") if "return_mask" in options else True
    mask_format = _text(options.get("mask_format", BINARY_MASK)).strip()
    if mask_format not in MASK_FORMATS:
        raise BadRequest(
            f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format[:40]!r}", "invalid_option"
        )
    names = _class_list(options.get("ignore_classes", ()))
    if (names or mask_format == CLASS_MAP) and not config.class_names:
        field = "ignore_classes" if names else "mask_format classes"
        raise BadRequest(
            f"{field} needs a model with defect classes; this model answers without them", "invalid_option"
        )
    try:
        ignore = check_class_names(names, config.class_names, "ignore_classes class")
    except ValueError as err:
        raise BadRequest(str(err), "invalid_option") from err
    if pitch is not None:
        scale = Scale(pitch, "request", "")
    elif config.pitch_um is not None:
        scale = Scale(config.pitch_um, "model", "")
    else:
        scale = UNKNOWN_SCALE
    return Options(threshold, return_mask, mask_format, ignore, scale)


def _class_list(value: Any) -> tuple[str, ...]:
    """ignore_classes as names: a JSON list of strings, or comma-separated text (a multipart field)."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise BadRequest("ignore_classes must be a list of class names (strings)", "invalid_option")
        return tuple(v.strip() for v in value if v.strip())
    if isinstance(value, (str, bytes, bytearray)):
        return tuple(n.strip() for n in _text(value).split(",") if n.strip())
    raise BadRequest(
        f"ignore_classes must be a list of class names or comma-separated text, got {type(value).__name__}",
        "invalid_option",
    )
