"""A canary rollout's append-only event log (``Event``) folded into its state (``Rollout``).

The fleet shares a rollout through an append-only log of ``Event`` objects: no object is ever overwritten,
so no write can be lost, and every replica folds the same events into the same ``Rollout`` whatever order
it lists them in (``fold`` is commutative, associative and idempotent: the earliest start, the highest step,
the earliest event entering that step, any promote, any rollback). A rollback is an event too, and it is
absorbing: once any rollback event of a rollout exists, the rollout is ``rolled_back`` (weight 0), whatever
else was written before or after it, by whichever replica.

Pure: ``now``, the replica's name and the key's nonce are passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, get_args

from worker.engine.rollout_json import no_constant, number_or_none, text_or_none, whole_or_none
from worker.engine.rollout_plan import Step

Kind = Literal["start", "advance", "promote", "rollback"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
#: Events happen before this unix time (the year 2286), so a key's time is always 17 characters and sorts.
MAX_EVENT_TIME = 1e10

#: Replica names and key nonces: they become part of an object name, so no slash, space or control character.
_NAME = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")


class RolloutState(StrEnum):
    """A rollout's state (the ``state`` label of ``worker_canary_state``)."""

    PROGRESSING = "progressing"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


@dataclass(frozen=True, slots=True)
class Event:
    """One object of a rollout's append-only log.

    ``at`` is the unix time the writer saw; ``step`` is the step entered (``advance``) or ``len(steps)``
    (``promote``), 0 otherwise. A rollback's ``detail`` holds ``gate``, ``observed``, ``threshold``,
    ``candidate``, ``baseline`` and ``reason`` (``Rollback.event_detail``).
    """

    rollout: str
    kind: Kind
    at: float
    replica: str
    step: int = 0
    detail: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.rollout):
            raise ValueError(f"bad rollout id {self.rollout!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {', '.join(sorted(KINDS))}")
        if not 0 <= self.at < MAX_EVENT_TIME:
            raise ValueError(f"an event's time must be a unix time in [0, 1e10), got {self.at}")
        if not _NAME.fullmatch(self.replica):
            raise ValueError(
                f"a replica name must be 1-128 letters, digits or . _ : @ + = -, got {self.replica!r}"
            )
        if self.step < 0:
            raise ValueError(f"an event's step must be >= 0, got {self.step}")

    def key(self, nonce: str) -> str:
        """An object name that sorts by time and never collides: ``nonce`` is unique per write (a uuid)."""
        if not _NAME.fullmatch(nonce):
            raise ValueError(f"a key nonce must be 1-128 letters, digits or . _ : @ + = -, got {nonce!r}")
        return f"{self.at:017.6f}-{self.replica}-{self.kind}-{self.step}-{nonce}"

    def to_json(self) -> str:
        """The object's content: one compact JSON object."""
        return json.dumps(
            {
                "rollout": self.rollout,
                "kind": self.kind,
                "at": self.at,
                "replica": self.replica,
                "step": self.step,
                "detail": dict(self.detail),
            },
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Parse ``to_json``'s output; ValueError on anything else (unknown extra fields are ignored)."""
        try:
            data = json.loads(text, parse_constant=no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a JSON event: {exc}") from None
        fields = data if isinstance(data, dict) else {}
        rollout, replica, kind = (
            text_or_none(fields.get("rollout")),
            text_or_none(fields.get("replica")),
            fields.get("kind"),
        )
        at, step, detail = (
            number_or_none(fields.get("at")),
            whole_or_none(fields.get("step", 0)),
            fields.get("detail", {}),
        )
        if rollout is None or replica is None or kind not in KINDS or at is None or step is None:
            raise ValueError("not a JSON event: rollout, kind, at, replica or step missing or wrong")
        if type(detail) is not dict:
            raise ValueError("not a JSON event: detail is not an object")
        return cls(rollout, kind, at, replica, step, detail)

    def order(self) -> tuple[float, str, str, int, str]:
        """A total order of events: time first, the rest only to break ties the same way on every replica."""
        return (self.at, self.replica, self.kind, self.step, _canonical(self.detail))


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout as its log says: the state, the step and since when, the candidate's weight (0-100).

    ``weight`` is 0 until a start event exists (a replica that cannot write starts nobody) and once rolled
    back, ``steps[step].percent`` while progressing, 100 once promoted. ``step`` is the highest step entered
    (``len(steps)`` once promoted), kept after a rollback. ``rollback`` is the earliest rollback event.
    """

    id: str
    state: RolloutState
    step: int
    step_started_at: float | None
    weight: int
    started_at: float | None
    rollback: Event | None

    @property
    def started(self) -> bool:
        """True once the log holds a start (or any later) event."""
        return self.started_at is not None


def _earliest(events: Iterable[Event]) -> Event | None:
    return min(events, key=Event.order, default=None)


def fold(events: Iterable[Event], rollout: str, steps: tuple[Step, ...]) -> Rollout:
    """The state of ``rollout`` from its events (others' are ignored), the same for any order or repetition.

    Started: the earliest start event; an advance or promote event without one still proves a start (the
    earliest of them then stands for it). Advances are monotonic: the highest step entered wins, and the
    earliest event entering it gives ``step_started_at``; advance events outside the plan are ignored. Any
    promote: PROMOTED, weight 100. Any rollback: ROLLED_BACK, weight 0, absorbing.
    """
    if not steps:
        raise ValueError("a plan needs at least one step")
    mine = [event for event in events if event.rollout == rollout]
    starts = [event for event in mine if event.kind == "start"]
    advances = [event for event in mine if event.kind == "advance" and 0 < event.step < len(steps)]
    promotes = [event for event in mine if event.kind == "promote"]
    rollback = _earliest(event for event in mine if event.kind == "rollback")
    first = _earliest(starts) or _earliest([*advances, *promotes])
    started_at = None if first is None else first.at
    step, entered = 0, _earliest(starts)
    if promotes:
        step, entered = len(steps), _earliest(promotes)
    elif advances:
        step = max(event.step for event in advances)
        entered = _earliest(event for event in advances if event.step == step)
    step_started_at = started_at if entered is None else entered.at
    if rollback is not None:
        state, weight = RolloutState.ROLLED_BACK, 0
    elif promotes:
        state, weight = RolloutState.PROMOTED, 100
    else:
        state, weight = RolloutState.PROGRESSING, (0 if started_at is None else steps[step].percent)
    return Rollout(rollout, state, step, step_started_at, weight, started_at, rollback)


def start_event(rollout: str, replica: str, now: float) -> Event:
    """The event that starts a rollout (written by a replica that finds none)."""
    return Event(rollout, "start", now, replica)
