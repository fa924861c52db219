"""``worker switch``'s pure core: its options, what the heartbeats say (live, drained, tally), --status.

No I/O and no clock: the heartbeats, the flag and ``now`` are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from worker.timestamps import iso_utc

if TYPE_CHECKING:
    from worker.engine.color_store import Flag, Heartbeat

Color = Literal["blue", "green"]
#: Defaults of the options (seconds unless said).
DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 2.0
DEFAULT_MAX_AGE = 15.0
DEFAULT_MAX_ERROR_RATIO = 0.1
DEFAULT_MIN_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class Options:
    """What ``worker switch --to`` was asked to do."""

    target: Color
    reason: str = ""
    timeout: float = DEFAULT_TIMEOUT
    bake: float | None = None
    auto_rollback: bool = False
    max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO
    min_samples: int = DEFAULT_MIN_SAMPLES
    max_age: float = DEFAULT_MAX_AGE
    interval: float = DEFAULT_INTERVAL


# --- what the heartbeats say (pure) ---


def live(beats: Sequence[Heartbeat], color: Color, now: float, max_age: float) -> list[Heartbeat]:
    """The replicas of ``color`` whose heartbeat is younger than ``max_age``."""
    return [beat for beat in beats if beat.color == color and beat.age(now) <= max_age]


def undrained(
    beats: Sequence[Heartbeat], color: Color, flag_id: str, now: float, max_age: float
) -> list[Heartbeat]:
    """Live replicas of ``color`` not yet in ``standby``, nothing in flight, after reading flag ``flag_id``.

    A replica whose heartbeat goes stale stops counting (it is gone: it processes nothing).
    """
    return [
        beat
        for beat in live(beats, color, now, max_age)
        if not (beat.flag == flag_id and beat.state == "standby" and beat.in_flight == 0)
    ]


@dataclass(frozen=True, slots=True)
class Tally:
    """Handler calls and failures of one fleet since a snapshot of its heartbeats."""

    processed: int
    failed: int

    @property
    def ratio(self) -> float:
        """failed / processed; 0.0 without calls."""
        return self.failed / self.processed if self.processed else 0.0


def tally(start: Mapping[str, Heartbeat], beats: Sequence[Heartbeat], color: Color) -> Tally:
    """What ``color``'s replicas did since ``start`` (replica -> heartbeat then).

    A replica that appeared since, or restarted (its counts went down), counts from zero.
    """
    processed = failed = 0
    for beat in beats:
        if beat.color != color:
            continue
        before = start.get(beat.replica)
        if before is None or beat.processed < before.processed or beat.failed < before.failed:
            processed, failed = processed + beat.processed, failed + beat.failed
        else:
            processed += beat.processed - before.processed
            failed += beat.failed - before.failed
    return Tally(processed, failed)


def _time(value: float | None) -> str | None:
    return None if value is None else iso_utc(datetime.fromtimestamp(value, UTC), "milliseconds")


def replica_names(beats: Sequence[Heartbeat]) -> str:
    """The replicas for a message: name, state and messages in flight of each."""
    """The replicas for a message: name, state and messages in flight of each."""
    return ", ".join(f"{beat.replica} ({beat.state}, {beat.in_flight} in flight)" for beat in beats)


# --- --status ---


def flag_line(flag: Flag) -> str:
    """Since when and by whom the flag says what it says (or that it does not exist yet)."""
    """Since when and by whom the flag says what it says (or that it does not exist yet)."""
    if not flag.exists:
        return "default: the flag does not exist yet"
    return f"since {_time(flag.at)} by {flag.by or '?'}" + (f": {flag.reason}" if flag.reason else "")


def status_view(
    uri: str, flag: Flag, beats: Sequence[Heartbeat], now: float, max_age: float
) -> dict[str, Any]:
    """The JSON of ``worker switch --status --json`` (pure)."""
    fleets: dict[str, Any] = {}
    colors: tuple[Color, ...] = ("blue", "green")
    for color in colors:
        mine = [beat for beat in beats if beat.color == color]
        alive = live(mine, color, now, max_age)
        fleets[color] = {
            "active": flag.active == color,
            "live": len(alive),
            "in_flight": sum(beat.in_flight for beat in alive),
            "replicas": [
                {
                    **beat.to_dict(),
                    "at": _time(beat.at),
                    "age_seconds": round(beat.age(now), 1),
                    "live": beat in alive,
                    "seen_flag": beat.flag == flag.id,
                }
                for beat in mine
            ],
        }
    return {
        "store": uri,
        "active": flag.active,
        "flag": {**flag.to_dict(), "at": _time(flag.at), "exists": flag.exists},
        "fleets": fleets,
    }


def render_status(view: Mapping[str, Any]) -> str:
    """``worker switch --status`` for people."""
    flag = view["flag"]
    since = f"since {flag['at']} by {flag['by'] or '?'}" if flag["exists"] else "default: no flag yet"
    reason = f": {flag['reason']}" if flag.get("reason") else ""
    lines = [f"active  {view['active']} ({since}{reason})", f"flag    {view['store']}"]
    for color, fleet in view["fleets"].items():
        role = "active" if fleet["active"] else "inactive"
        lines.append(
            f"{color:<7} {role}: {fleet['live']} live replicas, {fleet['in_flight']} messages in flight"
        )
        for beat in fleet["replicas"]:
            gone = "" if beat["live"] else ", stale"
            lines.append(
                f"  {beat['replica']}  {beat['state']}  in flight {beat['in_flight']}  processed "
                f"{beat['processed']}  failed {beat['failed']}  {beat['age_seconds']:g} s ago{gone}"
            )
    return "\n".join(lines)
