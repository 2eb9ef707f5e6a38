"""The JSON Schema of every answer, generated from the typed answer (`training.inference.answer`) and the
request's refusal reasons (`handler.request.REASONS`): `python -m training schema` writes docs/response.schema.json,
and a test checks that the committed file is what these classes say."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from handler.request import REASONS
from training.inference.answer import Answer, ErrorAnswer
from training.inference.serialize import OMIT_NONE
from training.inference.variants import model_names

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "response.schema.json"
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}
_KEYWORDS = ("description", OMIT_NONE)  # metadata that is not a bound of the value itself


def _value_schema(tp: Any, bounds: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one type; `bounds` (minimum, enum, const, ...) go on its scalar values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        (only,) = inner
        return {"oneOf": [_value_schema(only, bounds, defs), {"type": "null"}]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _value_schema(args[0], bounds, defs)}
        return {"type": "array", "items": _value_schema(args[0], bounds, defs), "minItems": len(args),
                "maxItems": len(args)}  # fmt: skip
    if origin is dict:
        return {"type": "object", "additionalProperties": _value_schema(args[1], bounds, defs)}
    if dataclasses.is_dataclass(tp):
        return _ref(tp, defs)
    if tp in _SCALARS:
        if "const" in bounds or "enum" in bounds:
            return dict(bounds)
        return {"type": _SCALARS[tp], **bounds}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _ref(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    name = cls.__name__
    if name not in defs:
        defs[name] = {}  # reserved before recursing
        hints = typing.get_type_hints(cls)
        properties, required = {}, []
        for f in dataclasses.fields(cls):
            bounds = {k: v for k, v in f.metadata.items() if k not in _KEYWORDS}
            bounds.update(_EXTRA.get(f"{name}.{f.name}", {}))
            tp = hints[f.name]
            if f.metadata.get(OMIT_NONE):
                (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
            else:
                required.append(f.name)
            prop = _value_schema(tp, bounds, defs)
            if f.metadata.get("description"):
                prop = {**prop, "description": f.metadata["description"]}
            properties[f.name] = prop
        defs[name] = {"type": "object", "additionalProperties": False, "required": required, "properties": properties}
        if cls.__doc__ and not cls.__doc__.startswith(f"{name}("):
            defs[name]["description"] = " ".join(cls.__doc__.split())
    return {"$ref": f"#/$defs/{name}"}


_EXTRA = {"ErrorAnswer.reason": {"enum": list(REASONS)}}  # the reasons live with the request parser


def response_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    one_of = [_ref(Answer, defs), _ref(ErrorAnswer, defs)]
    paths = " and ".join(f"POST /predictions/{m}" for m in model_names())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Defect detection answer for one layer",
        "description": f"What {paths} return: the answer (HTTP 200) or an error (HTTP 4xx from the handler). "
        "Generated from training/inference/answer.py by `python -m training schema`; see docs/api.md.",
        "oneOf": one_of,
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(response_schema(), indent=2, ensure_ascii=False) + "\n"
