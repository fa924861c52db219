"""The canary rollout's pure core: plans, the append-only event log folded into a state, gates, routing.

The fleet shares a rollout through an append-only log of ``Event`` objects: no object is ever overwritten,
so no write can be lost, and every replica folds the same events into the same ``Rollout`` whatever order
it lists them in (``fold`` is commutative, associative and idempotent: the earliest start, the highest step,
the earliest event entering that step, any promote, any rollback). A rollback is an event too, and it is
absorbing: once any rollback event of a rollout exists, the rollout is ``rolled_back`` (weight 0), whatever
else was written before or after it, by whichever replica.

Nothing here does I/O, reads a clock or draws a random number: ``now``, the replica's name and the key's
nonce are passed in.

- A plan is a tuple of ``Step`` (percent of the traffic on the candidate, then how long it bakes there);
  100 % is implied after the last step (``Promote``). ``CODEDEPLOY_CONFIGS`` holds CodeDeploy's predefined
  Lambda traffic-shifting configurations; ``AllAtOnce`` is one step at 100 % with no bake, so the gates
  still judge its first ``min_samples`` calls before it is promoted.
- ``judge`` decides from fleet-wide counts (``VersionStats``, every replica's published counts merged) that
  cover the time since the rollout started, not one step: a breach of any gate rolls back at once, even
  mid-bake; nothing is judged, and nothing widened, before the candidate has ``min_samples`` calls.
- ``route`` sends a message to the candidate when a hash of its original message id (stable across
  retries and redrives) falls in the first ``weight`` of 100 buckets: a message keeps its version while the
  weight does not change, and widening only moves messages from the baseline to the candidate.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, get_args

#: At most this many steps in WORKER_CANARY__STEPS (the implied 100 % not counted).
MAX_STEPS = 20
#: The quantile of the latency gate.
P99 = 0.99
#: Buckets of the routing hash (one per percent of weight).
ROUTE_BUCKETS = 100
#: The prefix of CodeDeploy's names for its Lambda configurations; accepted in front of the short names.
CODEDEPLOY_PREFIX = "CodeDeployDefault.Lambda"

Kind = Literal["start", "advance", "promote", "rollback"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
#: Events happen before this unix time (the year 2286), so a key's time is always 17 characters and sorts.
MAX_EVENT_TIME = 1e10
#: ``Rollback.gate`` of a rollback an operator asked for (``worker canary rollback``).
MANUAL_GATE = "manual"

#: Replica names and key nonces: they become part of an object name, so no slash, space or control character.
_NAME = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a plan: ``percent`` of the messages go to the candidate for ``bake_seconds`` at least."""

    percent: int
    bake_seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 100:
            raise ValueError(f"a step's percent must be 1..100, got {self.percent}")
        if not (0 <= self.bake_seconds < math.inf):
            raise ValueError(f"a step's bake must be finite and >= 0 seconds, got {self.bake_seconds}")


def _canary(percent: int, minutes: int) -> tuple[Step, ...]:
    return (Step(percent, minutes * 60.0),)


def _linear(percent: int, minutes: int) -> tuple[Step, ...]:
    return tuple(Step(share, minutes * 60.0) for share in range(percent, 100, percent))


#: CodeDeploy's predefined Lambda configurations (CodeDeployDefault.Lambda<name>), with its meaning:
#: ``Canary10Percent5Minutes`` shifts 10 % and the remaining 90 % five minutes later;
#: ``Linear10PercentEvery1Minute`` shifts 10 % more every minute (10, 20, ..., 90, each for 60 s, then 100 %);
#: ``AllAtOnce`` shifts everything at once (here: 100 % with no bake, promoted once the gates have judged
#: ``min_samples`` calls).
CODEDEPLOY_CONFIGS: dict[str, tuple[Step, ...]] = {
    "Canary10Percent5Minutes": _canary(10, 5),
    "Canary10Percent10Minutes": _canary(10, 10),
    "Canary10Percent15Minutes": _canary(10, 15),
    "Canary10Percent30Minutes": _canary(10, 30),
    "Linear10PercentEvery1Minute": _linear(10, 1),
    "Linear10PercentEvery2Minutes": _linear(10, 2),
    "Linear10PercentEvery3Minutes": _linear(10, 3),
    "Linear10PercentEvery10Minutes": _linear(10, 10),
    "AllAtOnce": (Step(100, 0.0),),
}


def codedeploy_steps(name: str) -> tuple[Step, ...]:
    """The steps of a CodeDeploy configuration (``Canary10Percent5Minutes`` or its full CodeDeploy name)."""
    steps = CODEDEPLOY_CONFIGS.get(name.removeprefix(CODEDEPLOY_PREFIX))
    if steps is None:
        raise ValueError(
            f"unknown deployment configuration {name!r}; expected one of {', '.join(CODEDEPLOY_CONFIGS)}"
        )
    return steps


def parse_steps(text: str) -> tuple[Step, ...]:
    """``"10:300,50:300"``: 10 % for 300 s, 50 % for 300 s, then 100 % (implied, never written).

    Each step is ``percent:bake-seconds``; percents are whole numbers 1..99, strictly increasing; bakes are
    finite and > 0; at most ``MAX_STEPS`` steps. Raise ValueError naming the step that is wrong.
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise ValueError("no steps; expected percent:bake-seconds pairs such as 10:300,50:300")
    if len(parts) > MAX_STEPS:
        raise ValueError(f"{len(parts)} steps; at most {MAX_STEPS}")
    steps: list[Step] = []
    for number, part in enumerate(parts, start=1):
        where = f"step {number} ({part!r})"
        percent_text, colon, bake_text = part.partition(":")
        if not colon:
            raise ValueError(f"{where} must be percent:bake-seconds, such as 10:300")
        percent_text, bake_text = percent_text.strip(), bake_text.strip()
        if not percent_text.isascii() or not percent_text.isdigit() or not 1 <= int(percent_text) <= 99:
            raise ValueError(
                f"{where}: the percent must be a whole number 1..99 (100 % is implied at the end)"
            )
        try:
            bake = float(bake_text)
        except ValueError:
            bake = math.nan
        if not 0 < bake < math.inf:
            raise ValueError(f"{where}: the bake must be a number of seconds > 0")
        percent = int(percent_text)
        if steps and percent <= steps[-1].percent:
            raise ValueError(f"{where}: percents must increase (the step before is {steps[-1].percent})")
        steps.append(Step(percent, bake))
    return tuple(steps)


def plan(config: str | None, steps: str | None) -> tuple[Step, ...]:
    """The steps of a rollout from exactly one of a CodeDeploy configuration name and a steps text."""
    if (config is None) == (steps is None):
        raise ValueError("set exactly one of a deployment configuration and custom steps")
    return codedeploy_steps(config) if config is not None else parse_steps(steps or "")


def rollout_id(
    candidate_handler: str,
    candidate_version: str,
    baseline_version: str,
    steps: tuple[Step, ...],
    *,
    scope: str = "",
) -> str:
    """A stable short id (16 hex digits): replicas started with the same settings join the same rollout.

    ``scope`` (say, the queue URL) keeps the rollouts of two queues apart when they share a state store.
    """
    identity = [
        scope,
        candidate_handler,
        candidate_version,
        baseline_version,
        [[step.percent, float(step.bake_seconds)] for step in steps],
    ]
    canonical = json.dumps(identity, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a JSON event: {exc}") from None
        fields = data if isinstance(data, dict) else {}
        rollout, replica, kind = (
            _text(fields.get("rollout")),
            _text(fields.get("replica")),
            fields.get("kind"),
        )
        at, step, detail = _number(fields.get("at")), _whole(fields.get("step", 0)), fields.get("detail", {})
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


def _le_text(le: float) -> float | str:
    return "+Inf" if le == math.inf else le


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: object) -> int | None:
    """``value`` when it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    """``value`` as a float when it is an int or a float (not a bool), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Fleet-wide counts of one version: calls, failures (any non-success outcome) and durations.

    ``buckets`` is a cumulative histogram of handler durations in seconds, ``(le, count)`` with ``le``
    strictly increasing (the last one ``inf``, as Prometheus' ``+Inf``) and counts not decreasing.
    """

    calls: int
    failures: int
    buckets: tuple[tuple[float, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.failures <= self.calls:
            raise ValueError(f"need 0 <= failures <= calls, got {self.failures} of {self.calls}")
        bounds = [le for le, _ in self.buckets]
        counts = [count for _, count in self.buckets]
        if any(math.isnan(le) for le in bounds) or bounds != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing numbers")
        if counts != sorted(counts) or any(count < 0 for count in counts):
            raise ValueError("bucket counts must be cumulative (non-negative, not decreasing)")

    @property
    def error_ratio(self) -> float:
        """failures / calls; 0.0 without calls."""
        return self.failures / self.calls if self.calls else 0.0

    def merged(self, other: VersionStats) -> VersionStats:
        """The sum of two replicas' counts.

        Histograms with the same bounds add bucket by bucket; at a bound only one of them has, the other
        contributes its count at its highest bound below (what it knows to be at or below it).
        """
        bounds = sorted({le for le, _ in self.buckets} | {le for le, _ in other.buckets})
        buckets = tuple((le, _count_at(self.buckets, le) + _count_at(other.buckets, le)) for le in bounds)
        return VersionStats(self.calls + other.calls, self.failures + other.failures, buckets)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the durations as Prometheus' ``histogram_quantile`` estimates it.

        Linear interpolation inside the bucket that holds the rank (the first bucket starts at 0); a rank in
        the ``+Inf`` bucket gives the highest finite bound. None without observations, with fewer than two
        buckets, or when the last bound is not ``inf`` (where Prometheus returns NaN).
        """
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile must be in [0, 1], got {q}")
        if len(self.buckets) < 2 or self.buckets[-1][0] != math.inf or self.buckets[-1][1] == 0:
            return None
        rank = q * self.buckets[-1][1]
        index = next(
            i for i, (_, count) in enumerate(self.buckets) if i == len(self.buckets) - 1 or count >= rank
        )
        if index == len(self.buckets) - 1:
            return self.buckets[-2][0]
        end, count = self.buckets[index]
        if index == 0:
            if end <= 0:
                return end
            start, below = 0.0, 0
        else:
            start, below = self.buckets[index - 1]
        if count == below:  # q = 0 and an empty first bucket: nothing to interpolate in
            return start
        return start + (end - start) * (rank - below) / (count - below)

    def p99(self) -> float | None:
        """The 99th percentile of the durations (``quantile(0.99)``), None without observations."""
        return self.quantile(P99)

    def summary(self) -> dict[str, object]:
        """The numbers a rollback record and ``worker canary status`` show."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "error_ratio": self.error_ratio,
            "p99_seconds": self.p99(),
        }

    def to_dict(self) -> dict[str, object]:
        """A JSON-safe form (a replica's published counts): ``+Inf`` as a string."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "buckets": [[_le_text(le), count] for le, count in self.buckets],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> VersionStats:
        """Parse ``to_dict``'s output; ValueError on anything else."""
        calls, failures, buckets = (
            _whole(data.get("calls")),
            _whole(data.get("failures")),
            data.get("buckets", []),
        )
        if calls is None or failures is None:
            raise ValueError("counts need whole numbers of calls and failures")
        pairs: list[tuple[float, int]] = []
        for pair in buckets if type(buckets) is list else [None]:
            le, count = pair if type(pair) is list and len(pair) == 2 else (None, None)
            bound, cumulative = (math.inf if le == "+Inf" else _number(le)), _whole(count)
            if bound is None or cumulative is None:
                raise ValueError(
                    f"buckets must be a list of [le, count] pairs (le a number or '+Inf'), got {pair!r}"
                )
            pairs.append((bound, cumulative))
        return cls(calls, failures, tuple(pairs))


#: No calls yet: the identity of ``VersionStats.merged``.
NO_STATS = VersionStats(0, 0, ())


def _count_at(buckets: tuple[tuple[float, int], ...], le: float) -> int:
    """A cumulative histogram's count at ``le``: its count at its highest bound <= ``le`` (0 below all)."""
    count = 0
    for bound, cumulative in buckets:
        if bound > le:
            break
        count = cumulative
    return count


@dataclass(frozen=True, slots=True)
class Gates:
    """The rollback gates (``WORKER_CANARY__*``); a gate set to None is off.

    - ``max_error_ratio``: the candidate's failure ratio above it breaches.
    - ``max_error_ratio_vs_baseline``: the candidate's failure ratio above this multiple of the baseline's
      breaches; the baseline's ratio counts as at least ``1 / min_samples``, so a baseline without failures
      does not turn the candidate's first failure into a breach.
    - ``max_p99_ratio``: the candidate's p99 duration above this multiple of the baseline's breaches; judged
      only when both p99s exist, the baseline's is above 0 and the baseline has ``min_samples`` calls.
    - ``min_samples``: no gate is judged, and no step widened, before the candidate has this many calls.
    """

    max_error_ratio: float | None
    max_error_ratio_vs_baseline: float | None
    max_p99_ratio: float | None
    min_samples: int

    def __post_init__(self) -> None:
        if self.max_error_ratio is not None and not 0 <= self.max_error_ratio <= 1:
            raise ValueError(f"max_error_ratio must be in [0, 1], got {self.max_error_ratio}")
        for name in ("max_error_ratio_vs_baseline", "max_p99_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")


@dataclass(frozen=True, slots=True)
class Hold:
    """Nothing to write: ``reason`` is one of ``HOLD_REASONS``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Advance:
    """Enter ``step`` (write an advance event)."""

    step: int


@dataclass(frozen=True, slots=True)
class Promote:
    """The last step baked without a breach: write a promote event (weight 100)."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """A gate breached: write a rollback event. ``observed`` and ``threshold`` are in the gate's units.

    ``max_error_ratio``: the candidate's failure ratio and the limit; ``max_error_ratio_vs_baseline``: the
    candidate's ratio over the (floored) baseline's and the allowed multiple; ``max_p99_ratio``: the p99s'
    ratio and the allowed multiple; ``manual``: 0 and 0. ``detail`` holds ``candidate``, ``baseline`` (each
    ``VersionStats.summary``) and ``reason``.
    """

    gate: str
    observed: float
    threshold: float
    detail: Mapping[str, object] = field(default_factory=dict)

    def event_detail(self) -> dict[str, object]:
        """The rollback event's detail: gate, observed, threshold, then ``detail``'s entries."""
        return {"gate": self.gate, "observed": self.observed, "threshold": self.threshold, **self.detail}


HOLD_TERMINAL = "terminal"
HOLD_NOT_STARTED = "not started"
HOLD_MIN_SAMPLES = "min samples"
HOLD_BAKING = "baking"
HOLD_REASONS = (HOLD_TERMINAL, HOLD_NOT_STARTED, HOLD_MIN_SAMPLES, HOLD_BAKING)

Decision = Hold | Advance | Promote | Rollback


def manual_rollback(reason: str) -> Rollback:
    """The rollback an operator asks for (``worker canary rollback --reason TEXT``)."""
    return Rollback(MANUAL_GATE, 0.0, 0.0, {"reason": reason})


def breach(candidate: VersionStats, baseline: VersionStats, gates: Gates) -> Rollback | None:
    """The first gate the candidate's numbers breach, in the order of ``Gates``' fields, or None."""
    detail: dict[str, object] = {"candidate": candidate.summary(), "baseline": baseline.summary()}
    ratio = candidate.error_ratio
    if gates.max_error_ratio is not None and ratio > gates.max_error_ratio:
        reason = f"candidate error ratio {ratio:.4g} above {gates.max_error_ratio:g}"
        return Rollback("max_error_ratio", ratio, gates.max_error_ratio, {**detail, "reason": reason})
    if gates.max_error_ratio_vs_baseline is not None:
        floor = 1 / gates.min_samples
        reference = max(baseline.error_ratio, floor)
        relative = ratio / reference
        if relative > gates.max_error_ratio_vs_baseline:
            reason = (
                f"candidate error ratio {ratio:.4g} is {relative:.4g} x the baseline's "
                f"{baseline.error_ratio:.4g} (floored at {floor:.4g}), "
                f"above {gates.max_error_ratio_vs_baseline:g} x"
            )
            return Rollback(
                "max_error_ratio_vs_baseline",
                relative,
                gates.max_error_ratio_vs_baseline,
                {**detail, "reason": reason},
            )
    if gates.max_p99_ratio is not None:
        mine, theirs = candidate.p99(), baseline.p99()
        if mine is not None and theirs is not None and theirs > 0 and baseline.calls >= gates.min_samples:
            relative = mine / theirs
            if relative > gates.max_p99_ratio:
                reason = f"candidate p99 {mine:.4g} s is {relative:.4g} x the baseline's {theirs:.4g} s"
                reason += f", above {gates.max_p99_ratio:g} x"
                return Rollback("max_p99_ratio", relative, gates.max_p99_ratio, {**detail, "reason": reason})
    return None


def judge(
    rollout: Rollout,
    steps: tuple[Step, ...],
    candidate: VersionStats,
    baseline: VersionStats,
    gates: Gates,
    now: float,
) -> Decision:
    """What the rollout should do next, from the fleet-wide counts since it started.

    Promoted or rolled back: Hold. Not started: Hold. Fewer than ``min_samples`` candidate calls: Hold (no
    gate judged, no step widened). A breached gate: Rollback, at once, even mid-bake. The current step baked
    (``now - step_started_at >= bake_seconds``) without a breach: Advance to the next step, or Promote after
    the last. Else Hold while baking.
    """
    if rollout.state is not RolloutState.PROGRESSING:
        return Hold(HOLD_TERMINAL)
    if rollout.started_at is None:
        return Hold(HOLD_NOT_STARTED)
    if candidate.calls < gates.min_samples:
        return Hold(HOLD_MIN_SAMPLES)
    breached = breach(candidate, baseline, gates)
    if breached is not None:
        return breached
    since = rollout.started_at if rollout.step_started_at is None else rollout.step_started_at
    if now - since < steps[rollout.step].bake_seconds:
        return Hold(HOLD_BAKING)
    return Advance(rollout.step + 1) if rollout.step + 1 < len(steps) else Promote()


def event_for(
    decision: Decision, rollout: str, steps: tuple[Step, ...], replica: str, now: float
) -> Event | None:
    """The event that records ``decision`` (None for Hold)."""
    if isinstance(decision, Advance):
        return Event(rollout, "advance", now, replica, decision.step)
    if isinstance(decision, Promote):
        return Event(rollout, "promote", now, replica, len(steps))
    if isinstance(decision, Rollback):
        return Event(rollout, "rollback", now, replica, 0, decision.event_detail())
    return None


def start_event(rollout: str, replica: str, now: float) -> Event:
    """The event that starts a rollout (written by a replica that finds none)."""
    return Event(rollout, "start", now, replica)


def route(original_message_id: str, weight: int) -> bool:
    """True when the message goes to the candidate: its id's bucket (sha256, of 100) is below ``weight``."""
    digest = hashlib.sha256(original_message_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % ROUTE_BUCKETS < weight
