"""One (de)serialiser for the typed config dataclasses that artifacts carry (checkpoints, archives, JSON records,
model-config.yaml).

`to_dict` turns a dataclass into plain JSON-ready values; `from_dict` rebuilds it from such values, guided by the
class's type hints: lists become tuples where a field is a tuple, nested mappings become nested dataclasses, keys
left out keep their defaults, and unknown keys are refused by name (an artifact from a newer version must not load
as something it is not). Checking values is left to each class's `__post_init__`.

Standard library only: this package ships to TorchServe workers.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
OMIT_NONE = "omit_none"  # field metadata: leave the field out of `to_dict` while it is None


def to_dict(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance as JSON-ready values: nested dataclasses as dicts, tuples as lists; a
    field whose metadata sets OMIT_NONE is left out while it is None."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(obj).__name__}")
    return {
        f.name: _plain(getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if not (getattr(obj, f.name) is None and f.metadata.get(OMIT_NONE))
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, what: str | None = None) -> T:
    """Rebuild dataclass `cls` from `to_dict` output (or JSON/YAML read back from it).

    `what` names one key in error messages, e.g. "synth config key" (default: "<Class> field"). Raises ValueError
    on unknown keys, on a missing key that has no default, and on values of the wrong shape.
    """
    return _build(cls, data, what or f"{cls.__name__} field", "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`


def _build(cls: type[T], data: Any, what: str, path: str) -> T:
    at = f" in {path}" if path else ""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path or cls.__name__} must be a mapping of {what}s to values, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise ValueError(
            f"unknown {what}(s) {unknown}{at}; known: {sorted(fields)}. Written by a newer version of this "
            "project? Update this copy of the project, or remove those keys."
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing {what}(s) {missing}{at}: they have no default, so the data must give them")
    hints = _hints(cls)
    values = {
        name: _convert(hints[name], value, what, f"{path}.{name}" if path else name) for name, value in data.items()
    }
    return cls(**values)


def _convert(hint: Any, value: Any, what: str, path: str) -> Any:
    """`value` as the type `hint` describes; scalars pass through unchanged."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(option, value, what, path)
            except (ValueError, TypeError):
                continue
        return _convert(options[-1], value, what, path)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return value if isinstance(value, hint) else _build(hint, value, what, path)
    if origin is tuple:
        items = _sequence(value, path)
        if not args:
            return tuple(items)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, what, f"{path}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ValueError(f"{path} must have {len(args)} values, got {len(items)}: {_shown(value)}")
        return tuple(_convert(a, v, what, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True)))
    if origin is list:
        items = _sequence(value, path)
        return [_convert(args[0], v, what, f"{path}[{i}]") for i, v in enumerate(items)] if args else list(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path} must be a mapping, got {_shown(value)}")
        item = args[1] if args else Any
        return {k: _convert(item, v, what, f"{path}[{k!r}]") for k, v in value.items()}
    return value


def _sequence(value: Any, path: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{path} must be a list, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"
