"""``--filter`` expressions of ``worker redrive`` and ``worker dlq`` (pure, standard library only).

One expression per ``--filter``; several must all match::

    error_type=RuntimeError,TimeoutError   any of these error types (``none``: no worker record,
                                           ``malformed``: an unreadable one); ``error`` is an alias
    error_type!=PermanentError             none of these
    condition=Timeout                      the record's condition
    source=orders                          source queue, by name, URL or ARN
    age>1h   age<=30m                      time since dead-lettered (s, m, h, d; a bare number is seconds)
    attr.tenant=acme   attr.tenant         an original message attribute equals / exists
"""

from __future__ import annotations

import argparse
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from worker.aws.names import queue_name

#: Error type of a DLQ message without worker metadata (moved by the broker's own RedrivePolicy).
NO_RECORD = "none"
#: Error type of a DLQ message whose ``worker.failure`` attribute cannot be read.
MALFORMED = "malformed"

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_AGE = re.compile(r"^age\s*(>=|<=|>|<)\s*(.+)$")
_KEYED = re.compile(r"^(error_type|error|condition|source|attr\.[A-Za-z0-9_.\-]+)\s*(!=|=)\s*(.*)$")
_ATTR_EXISTS = re.compile(r"^attr\.([A-Za-z0-9_.\-]+)$")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True, slots=True)
class Facts:
    """What a filter can look at in one DLQ message."""

    error_type: str
    condition: str | None
    #: Source queue names (from the failure record and from ``DeadLetterQueueSourceArn``).
    sources: tuple[str, ...]
    #: Seconds since the message was dead-lettered, None when unknown.
    age_seconds: float | None
    #: Original message attributes as strings (binary ones base64-encoded).
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Filter:
    """One parsed ``--filter`` expression."""

    text: str
    key: str
    op: str
    values: tuple[str, ...] = ()
    seconds: float = 0.0

    def matches(self, facts: Facts) -> bool:
        """True when the message satisfies this expression."""
        if self.key == "age":
            return facts.age_seconds is not None and _COMPARE[self.op](facts.age_seconds, self.seconds)
        if self.key.startswith("attr."):
            value = facts.attributes.get(self.key.removeprefix("attr."))
            if self.op == "exists":
                return value is not None
            found = value is not None and value in self.values
            return found if self.op == "=" else not found
        if self.key == "source":
            found = any(name in self.values for name in facts.sources)
        elif self.key == "condition":
            found = facts.condition in self.values
        else:
            found = facts.error_type in self.values
        return found if self.op == "=" else not found


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``5m``, ``1.5h``, ``2d``; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 2h, 1d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def parse_filter(text: str) -> Filter:
    """Parse one expression; ValueError with the reason when it is not one."""
    expr = text.strip()
    if match := _AGE.match(expr):
        return Filter(expr, "age", match.group(1), seconds=parse_duration(match.group(2)))
    if match := _ATTR_EXISTS.match(expr):
        return Filter(expr, f"attr.{match.group(1)}", "exists")
    if match := _KEYED.match(expr):
        key, op, raw = match.groups()
        key = "error_type" if key == "error" else key
        values = tuple(v.strip() for v in raw.split(",") if v.strip())
        if not values:
            raise ValueError(f"filter {text!r} has no value after {op!r}")
        if key == "source":
            values = tuple(queue_name(v) for v in values)
        return Filter(expr, key, op, values)
    raise ValueError(
        f"unknown filter {text!r}: use error_type=, condition=, source=, age>DURATION, age<DURATION, "
        "attr.NAME=VALUE (see --help)"
    )


def filter_argument(text: str) -> Filter:
    """``type=`` for argparse: a bad expression becomes a usage error."""
    try:
        return parse_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_argument(text: str) -> float:
    """``type=`` for argparse: a duration in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def all_match(filters: Sequence[Filter], facts: Facts) -> bool:
    """True when every filter matches (no filters: everything matches)."""
    return all(f.matches(facts) for f in filters)
