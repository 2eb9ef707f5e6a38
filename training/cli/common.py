"""Helpers shared by the command modules (and by `python -m bench`)."""

from __future__ import annotations

import shlex


def command_line(argv: list[str], program: str = "training") -> str:
    """The command as a person would type it, recorded next to what it wrote."""
    return shlex.join(["python", "-m", program, *argv])


def ints(text: str) -> list[int]:
    """Comma-separated positive whole numbers, e.g. `1,2`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"expected comma-separated whole numbers such as 1,2, got {text!r}") from err
    if not values or min(values) < 1:
        raise ValueError(f"expected positive whole numbers, got {text!r}")
    return values
