"""Blue/green fleets' shared store in S3 (``WORKER_COLOR_STATE``): the active colour, its history, heartbeats.

For ``s3://bucket/key``:

- ``key``: the flag, ``{"active": "green", "id", "at", "by", "reason", "previous"}``; while it does not
  exist, ``blue`` is active. A flag written by hand as the bare text ``green`` is read too.
  ``set_active`` can write it conditionally (``IfMatch`` the ETag read, ``IfNoneMatch`` while absent), so two
  operators switching at once cannot both believe they won.
- ``key.history/<time>-<colour>-<nonce>.json``: one object per switch, never overwritten.
- ``key.heartbeats/<colour>/<replica>.json``: each replica's heartbeat, overwritten by that replica only:
  its state (``active``, ``draining``, ``standby``), messages in flight, handler calls processed and failed
  since it started, and the id of the flag it last read (so a switch knows which replicas have seen it).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, cast, get_args

from worker.engine.rollout_store import (
    CALL_TIMEOUT_SECONDS,
    DENIED_CODES,
    ConditionFailedError,
    S3Json,
    StoreError,
    open_s3_json,
    safe_name,
)
from worker.errors import WorkerError
from worker.settings_groups import s3_location

Color = Literal["blue", "green"]
COLORS: tuple[Color, ...] = get_args(Color)
log = logging.getLogger("worker.color")

#: The active colour while the flag does not exist.
DEFAULT_COLOR: Color = "blue"
FleetState = Literal["active", "draining", "standby"]
FLEET_STATES: tuple[FleetState, ...] = get_args(FleetState)
#: How often a replica is expected to write its heartbeat (``worker switch`` judges freshness against it).
HEARTBEAT_INTERVAL_SECONDS = 5.0


class FlagChangedError(WorkerError):
    """``set_active`` with ``expect``: the flag changed since it was read (another switch won)."""


def other(color: Color) -> Color:
    """The other colour."""
    return "green" if color == "blue" else "blue"


def as_color(value: object) -> Color:
    """``value`` as a colour (case-insensitive); ValueError otherwise."""
    text = value.strip().lower() if isinstance(value, str) else value
    for color in COLORS:
        if text == color:
            return color
    raise ValueError(f"not a colour (blue or green): {value!r}")


def _number(data: Mapping[str, object], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a number")
    return float(value)


def _count(data: Mapping[str, object], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is not a whole number >= 0")
    return value


@dataclass(frozen=True, slots=True)
class Flag:
    """The active colour as the flag says; ``etag`` None when the object does not exist (``blue``)."""

    active: Color
    id: str = ""
    at: float | None = None
    by: str = ""
    reason: str = ""
    previous: Color | None = None
    etag: str | None = None

    @property
    def exists(self) -> bool:
        """False while nobody has switched (the default colour)."""
        return self.etag is not None

    def to_dict(self) -> dict[str, object]:
        """The flag object's content (the ETag is S3's, not written)."""
        return {
            "active": self.active,
            "id": self.id,
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
            "previous": self.previous,
        }

    @classmethod
    def from_data(cls, data: object, etag: str) -> Flag:
        """The flag from the object's JSON (or bare text ``blue``/``green``); ValueError otherwise."""
        if isinstance(data, str):
            return cls(as_color(data), id=etag, etag=etag)
        data = data if isinstance(data, dict) else {}
        at, previous = data.get("at"), data.get("previous")
        return cls(
            active=as_color(data.get("active")),
            id=str(data.get("id") or etag),
            at=None if at is None else _number(data, "at"),
            by=str(data.get("by", "")),
            reason=str(data.get("reason", "")),
            previous=None if previous is None else as_color(previous),
            etag=etag,
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One replica's last word: who it is, what it does, how it has fared since it started."""

    color: Color
    replica: str
    at: float
    state: FleetState
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    #: The id of the flag the replica last read ("" while the flag did not exist).
    flag: str = ""

    def __post_init__(self) -> None:
        if safe_name(self.replica) != self.replica:
            raise ValueError(
                f"a replica name must be 1-128 letters, digits or . _ : @ + = -, got {self.replica!r}"
            )
        if self.state not in FLEET_STATES:
            raise ValueError(f"a fleet state is one of {', '.join(FLEET_STATES)}, got {self.state!r}")
        if min(self.in_flight, self.processed, self.failed) < 0 or self.failed > self.processed:
            raise ValueError("need 0 <= failed <= processed and in_flight >= 0")

    def age(self, now: float) -> float:
        """Seconds since it was written (by the replica's clock)."""
        return max(0.0, now - self.at)

    def to_dict(self) -> dict[str, object]:
        """The heartbeat object's content."""
        return {
            "color": self.color,
            "replica": self.replica,
            "at": self.at,
            "state": self.state,
            "in_flight": self.in_flight,
            "processed": self.processed,
            "failed": self.failed,
            "flag": self.flag,
        }

    @classmethod
    def from_dict(cls, data: object) -> Heartbeat:
        """Parse ``to_dict``'s output; ValueError on anything else."""
        data = data if isinstance(data, dict) else {}
        state = data.get("state")
        if state not in FLEET_STATES:
            raise ValueError(f"unknown state {state!r}")
        return cls(
            color=as_color(data.get("color")),
            replica=str(data.get("replica", "")),
            at=_number(data, "at"),
            state=cast(FleetState, state),
            in_flight=_count(data, "in_flight"),
            processed=_count(data, "processed"),
            failed=_count(data, "failed"),
            flag=str(data.get("flag", "")),
        )


class ColorStore:
    """The flag, its history and the heartbeats of both colours, under one key of one bucket."""

    def __init__(self, objects: S3Json, key: str) -> None:
        self.objects = objects
        self.key = key

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return self.objects.uri(self.key)

    @property
    def history_prefix(self) -> str:
        """The switches' folder, ending with a slash."""
        return f"{self.key}.history/"

    def heartbeat_prefix(self, color: Color | None = None) -> str:
        """The heartbeats' folder (of one colour), ending with a slash."""
        return f"{self.key}.heartbeats/" + (f"{color}/" if color else "")

    async def read_active(self) -> Flag:
        """The flag; ``blue`` while it does not exist. StoreError when it cannot be read or parsed.

        S3 answers a GetObject of a missing key with 403, not 404, to a caller whose ``s3:ListBucket`` grant
        does not cover it: on a 403 the key's listing tells "absent" (blue) from "denied" (StoreError).
        """
        try:
            stored = await self.objects.get(self.key)
        except StoreError as exc:
            if exc.code not in DENIED_CODES or self.key in await self.objects.keys(self.key):
                raise
            stored = None
        if stored is None:
            return Flag(DEFAULT_COLOR)
        try:
            return Flag.from_data(stored.data, stored.etag)
        except ValueError as exc:
            raise StoreError(f"the flag {self.uri} is not a colour ({exc})") from None

    async def set_active(
        self, color: Color, *, by: str, reason: str, now: float, expect: Flag | None = None
    ) -> Flag:
        """Write the flag (then a history object); with ``expect``, only if it is still that flag.

        FlagChangedError when ``expect`` no longer holds; StoreError when the store cannot be written (if
        the history write fails after the flag's, the message says the flag was written).
        """
        previous = expect.active if expect is not None else None
        flag = Flag(color, id=uuid.uuid4().hex, at=now, by=by, reason=reason, previous=previous)
        try:
            if expect is None:
                etag = await self.objects.put(self.key, flag.to_dict())
            elif expect.etag is None:
                etag = await self.objects.put(self.key, flag.to_dict(), if_none_match=True)
            else:
                etag = await self.objects.put(self.key, flag.to_dict(), if_match=expect.etag)
        except ConditionFailedError:
            raise FlagChangedError(
                f"the flag {self.uri} changed since it was read (another switch?)"
            ) from None
        history = f"{self.history_prefix}{now:017.6f}-{color}-{flag.id}.json"
        try:
            await self.objects.put(history, flag.to_dict(), if_none_match=True)
        except StoreError as exc:
            raise StoreError(f"the flag was set to {color}, but its history was not written: {exc}") from None
        except ConditionFailedError:  # a retried PutObject whose first attempt landed: the object is this one
            pass
        return Flag(color, flag.id, flag.at, flag.by, flag.reason, flag.previous, etag)

    async def history(self) -> list[Flag]:
        """Every switch recorded, oldest first (objects that do not parse are skipped)."""
        flags: list[Flag] = []
        read = await self.objects.get_many(await self.objects.keys(self.history_prefix))
        for key, stored in sorted(read.items()):
            if stored is None:
                continue
            try:
                flags.append(Flag.from_data(stored.data, stored.etag))
            except ValueError as exc:
                log.warning("skipping %s: not a switch (%s)", self.objects.uri(key), exc)
        return flags

    async def publish_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Overwrite this replica's heartbeat object."""
        key = f"{self.heartbeat_prefix(heartbeat.color)}{heartbeat.replica}.json"
        await self.objects.put(key, heartbeat.to_dict())

    async def read_heartbeats(self, color: Color | None = None) -> list[Heartbeat]:
        """Every replica's last heartbeat (of one colour, or both), sorted by colour and replica."""
        beats: list[Heartbeat] = []
        read = await self.objects.get_many(await self.objects.keys(self.heartbeat_prefix(color)))
        for key, stored in read.items():
            if stored is None:
                continue
            try:
                beats.append(Heartbeat.from_dict(stored.data))
            except ValueError as exc:
                log.warning("skipping %s: not a heartbeat (%s)", self.objects.uri(key), exc)
        return sorted(beats, key=lambda beat: (beat.color, beat.replica))


@asynccontextmanager
async def open_color_store(
    uri: str, *, endpoint_url: str | None = None, call_timeout: float = CALL_TIMEOUT_SECONDS
) -> AsyncIterator[ColorStore]:
    """A ColorStore for ``s3://bucket/key`` with its own S3 client, closed on exit (ValueError: bad URI)."""
    bucket, key = s3_location(uri, key_required=True)
    async with open_s3_json(bucket, endpoint_url=endpoint_url, call_timeout=call_timeout) as objects:
        yield ColorStore(objects, key)
