"""Strict readers of the JSON fields in a rollout's events and counts: no bool passes as a number, no NaN."""

from __future__ import annotations


def no_constant(name: str) -> object:
    """``json.loads``' ``parse_constant``: NaN, Infinity and -Infinity are not numbers here."""
    raise ValueError(f"{name} is not a JSON number")


def text_or_none(value: object) -> str | None:
    """``value`` when it is a str, else None."""
    return value if isinstance(value, str) else None


def whole_or_none(value: object) -> int | None:
    """``value`` when it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number_or_none(value: object) -> float | None:
    """``value`` as a float when it is an int or a float (not a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
