"""Circuit breakers per dependency (pure): a sliding failure window, open, half-open probes, close.

One ``Breakers`` registry per queue holds a breaker per dependency name, created on first use. Time is
passed in (``now``, seconds on any monotonic clock); nothing here sleeps, reads a clock or draws a random
number, so every decision is a function of the calls made.

- CLOSED: calls run; each settled call is a window entry. The window is time-based and bounded: entries go
  into ``WINDOW_BUCKETS`` buckets of ``window_seconds / WINDOW_BUCKETS`` seconds each, and the window is the
  last ``WINDOW_BUCKETS`` buckets, the current one included (an entry is always dropped once it is
  ``window_seconds`` old, always kept while it is younger than ``window_seconds`` minus one bucket). A failure
  opens the breaker when the window holds ``min_calls`` calls or more and failures / calls reaches
  ``failure_ratio``.
- OPEN: calls are denied for ``open_seconds``; then the breaker is HALF_OPEN (``tick`` or any other call
  with a later ``now`` notices).
- HALF_OPEN: ``half_open_calls`` probe permits; a call takes one. A failure re-opens the breaker for
  ``open_seconds`` again; ``half_open_calls`` successful probes close it with an empty window. A probe that
  did not run (``released``) or that failed on another dependency gives its permit back.

Every admission ends with exactly one of ``succeeded``, ``failed`` or ``released``. Each state change is
returned once, as a ``Transition``, by the next call that returns a list (``tick``, ``succeeded``,
``failed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from worker.engine.breaker_window import Window

#: The dependency of transient failures that name none (any exception but ``DependencyDown``).
DEFAULT_DEPENDENCY = "handler"
#: ``Denied.retry_in`` when a half-open breaker's probe permits are all taken: the probes' outcome is not
#: known yet, so the message is asked back soon (at most ``open_seconds``).
PROBE_RETRY_SECONDS = 1.0


class State(StrEnum):
    """A breaker's state (the ``state`` label of ``worker_circuit_state``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The breaker settings of one queue (``WORKER_BREAKER__*``)."""

    failure_ratio: float
    min_calls: int
    window_seconds: float
    open_seconds: float
    half_open_calls: int

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if self.min_calls < 1 or self.half_open_calls < 1:
            raise ValueError("min_calls and half_open_calls must be >= 1")
        if not (0 < self.window_seconds < math.inf and 0 < self.open_seconds < math.inf):
            raise ValueError("window_seconds and open_seconds must be finite and > 0")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for the log line and the metrics.

    ``calls``, ``failures`` and ``ratio`` are the numbers behind it: the window's when a CLOSED breaker
    opens (``failure_ratio``), the half-open period's probes when it re-opens (``probe_failed``) or closes
    (``probes_succeeded``), zeros when it goes half-open (``open_elapsed``). ``at`` is when the change took
    effect: ``now`` of the call that caused it, or the end of the open period for ``open_elapsed``.
    """

    dependency: str
    before: State
    after: State
    at: float
    calls: int
    failures: int
    ratio: float
    reason: str


@dataclass(frozen=True, slots=True)
class Admission:
    """A message may run; it holds probe permits on the half-open breakers it covers.

    ``probe_epochs`` pairs each name of ``probes`` with the half-open period its permit belongs to: a permit
    of a period that has ended (the breaker re-opened or closed meanwhile) is neither returned nor counted.
    """

    dependencies: tuple[str, ...]
    probes: tuple[str, ...]
    probe_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.probe_epochs) != len(self.probes):
            raise ValueError("an Admission needs one probe epoch per probe (Breakers.admit makes them)")


@dataclass(frozen=True, slots=True)
class Denied:
    """A message must not run now: ``dependency``'s breaker is open (or its probe permits are all taken)."""

    dependency: str
    retry_in: float


class _Breaker:
    """One dependency's breaker (the registry drives it; see the module docstring)."""

    __slots__ = (
        "epoch",
        "last_calls",
        "last_failures",
        "name",
        "opened_until",
        "probe_failures",
        "probe_successes",
        "probes_out",
        "state",
        "window",
    )

    def __init__(self, name: str, config: BreakerConfig) -> None:
        self.name = name
        self.state = State.CLOSED
        self.window = Window(config.window_seconds)
        self.opened_until = 0.0
        #: The half-open period's number; a permit carries it (Admission.probe_epochs).
        self.epoch = 0
        self.probes_out = 0  # permits held by probes still running
        self.probe_successes = 0  # permits spent by probes that succeeded
        self.probe_failures = 0
        #: The numbers of the window (or probes) that last opened it, for /readyz.
        self.last_calls = 0
        self.last_failures = 0

    def permits_left(self, config: BreakerConfig) -> int:
        return config.half_open_calls - self.probes_out - self.probe_successes


class Breakers:
    """Every dependency's breaker for one queue, created lazily by name."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._breakers: dict[str, _Breaker] = {}
        #: What a message with no route is covered by (every breaker known), rebuilt when a breaker is added,
        #: and its admission while every breaker is CLOSED (the common case: no work per message then).
        self._unrouted: tuple[str, ...] = (DEFAULT_DEPENDENCY,)
        self._unrouted_admission = Admission(dependencies=self._unrouted, probes=())
        #: Names of the breakers that are not CLOSED (OPEN or HALF_OPEN).
        self._unsettled: set[str] = set()
        self._pending: list[Transition] = []

    # --- admission ----------------------------------------------------------------------------------------

    def admit(self, dependencies: Iterable[str] | None, now: float) -> Admission | Denied:
        """May a message that uses ``dependencies`` run now? ``None``: unknown (no route).

        An unknown message is covered by ``DEFAULT_DEPENDENCY`` and every breaker known so far; a known list
        by those names plus ``DEFAULT_DEPENDENCY`` (a single string is one name; an empty or non-string name
        raises ValueError). Denied when a covering breaker is OPEN, or HALF_OPEN with no probe permit left
        (the one that frees last is named); otherwise the admission takes one probe permit on every covering
        HALF_OPEN breaker. A denial takes nothing.
        """
        self._advance(now)
        if dependencies is None and not self._unsettled:
            return self._unrouted_admission
        names = self._covered(dependencies)
        denied: Denied | None = None
        probes: list[_Breaker] = []
        for name in names:
            breaker = self._breakers.get(name)
            if breaker is None or breaker.state is State.CLOSED:
                continue
            if breaker.state is State.OPEN:
                wait = max(0.0, breaker.opened_until - now)
            elif breaker.permits_left(self.config) <= 0:
                wait = min(PROBE_RETRY_SECONDS, self.config.open_seconds)
            else:
                probes.append(breaker)
                continue
            if denied is None or wait > denied.retry_in:
                denied = Denied(name, wait)
        if denied is not None:
            return denied
        for breaker in probes:
            breaker.probes_out += 1
        return Admission(
            dependencies=names,
            probes=tuple(breaker.name for breaker in probes),
            probe_epochs=tuple(breaker.epoch for breaker in probes),
        )

    def _covered(self, dependencies: Iterable[str] | None) -> tuple[str, ...]:
        if dependencies is None:
            return self._unrouted
        if isinstance(dependencies, str):  # a route that returned one name, not an iterable of names
            dependencies = (dependencies,)
        names = {DEFAULT_DEPENDENCY}
        for name in dependencies:
            names.add(_checked(name))
        return tuple(sorted(names))

    # --- outcomes -----------------------------------------------------------------------------------------

    def succeeded(self, admission: Admission, now: float) -> list[Transition]:
        """The message succeeded: a success for every breaker it covers.

        A CLOSED breaker gets a window entry; a HALF_OPEN one counts the probe (of its current half-open
        period) and closes, its window emptied, once ``half_open_calls`` probes succeeded. An OPEN one
        ignores it (the call was admitted before it opened).
        """
        if not self._unsettled and not admission.probes:
            # Every breaker CLOSED, no probe permit held (the common case): one window entry each.
            for name in admission.dependencies:
                self._breaker(name).window.add(now, failed=False)
            return self._drain()
        self._advance(now)
        held = self._held(admission)
        for name in admission.dependencies:
            breaker = self._breaker(name)
            if breaker.state is State.CLOSED:
                breaker.window.add(now, failed=False)
            elif breaker.state is State.HALF_OPEN and name in held:
                breaker.probes_out -= 1
                breaker.probe_successes += 1
                if breaker.probe_successes >= self.config.half_open_calls:
                    self._close(breaker, now)
        return self._drain()

    def failed(self, admission: Admission, dependency: str, now: float) -> list[Transition]:
        """The message failed transiently because of ``dependency`` (created if new, covered or not).

        A CLOSED breaker gets a failure in its window and opens when the window holds ``min_calls`` calls or
        more and failures / calls reaches ``failure_ratio``; a HALF_OPEN one re-opens for ``open_seconds``.
        The other breakers the admission covers are left as they were (no window entry) and get their probe
        permits back.
        """
        _checked(dependency)
        self._advance(now)
        held = self._held(admission)
        breaker = self._breaker(dependency)
        if breaker.state is State.CLOSED:
            window = breaker.window
            window.add(now, failed=True)
            if window.calls >= self.config.min_calls and window.failures / window.calls >= (
                self.config.failure_ratio
            ):
                self._open(breaker, now, window.calls, window.failures, "failure_ratio", State.CLOSED)
        elif breaker.state is State.HALF_OPEN:
            # A failed call proves the dependency is still down, probe or not (the handler said so).
            if dependency in held:
                breaker.probes_out -= 1
            breaker.probe_failures += 1
            calls = breaker.probe_successes + breaker.probe_failures
            self._open(breaker, now, calls, breaker.probe_failures, "probe_failed", State.HALF_OPEN)
        for name in held:
            if name != dependency:
                self._breakers[name].probes_out -= 1
        return self._drain()

    def released(self, admission: Admission) -> None:
        """The message did not run (handed back) or ended without a verdict on its dependencies (a permanent
        error, say): its probe permits go back."""
        for name in self._held(admission):
            self._breakers[name].probes_out -= 1

    def _held(self, admission: Admission) -> set[str]:
        """The probe permits of ``admission`` still valid: taken in the current half-open period."""
        held = set()
        for name, epoch in zip(admission.probes, admission.probe_epochs, strict=True):
            breaker = self._breakers.get(name)
            if breaker is not None and breaker.state is State.HALF_OPEN and breaker.epoch == epoch:
                held.add(name)
        return held

    # --- time ---------------------------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Every breaker is CLOSED and every state change has been returned: nothing to admit or report."""
        return not self._unsettled and not self._pending

    @property
    def unrouted_admission(self) -> Admission:
        """The admission of a message with no route while ``quiet`` (what ``admit(None, now)`` returns)."""
        return self._unrouted_admission

    def tick(self, now: float) -> list[Transition]:
        """OPEN -> HALF_OPEN for the breakers whose open period has ended, and any change not yet returned."""
        self._advance(now)
        return self._drain()

    def paused_for(self, now: float) -> float | None:
        """Seconds until the first OPEN breaker may go half-open (receiving stops meanwhile when messages
        have no route); None when none is open."""
        self._advance(now)
        waits = [b.opened_until - now for b in self._breakers.values() if b.state is State.OPEN]
        return max(0.0, min(waits)) if waits else None

    def states(self, now: float) -> dict[str, State]:
        """Every known breaker's state, by dependency name."""
        self._advance(now)
        return {name: breaker.state for name, breaker in sorted(self._breakers.items())}

    def open_details(self, now: float) -> list[dict[str, object]]:
        """The breakers that are not CLOSED, for /readyz's JSON body, by dependency name.

        ``retry_in_seconds``: until an OPEN one goes half-open (0 when half-open); ``failures`` and ``calls``:
        the numbers that last opened it.
        """
        self._advance(now)
        return [
            {
                "dependency": name,
                "state": str(breaker.state),
                "retry_in_seconds": max(0.0, breaker.opened_until - now)
                if breaker.state is State.OPEN
                else 0.0,
                "failures": breaker.last_failures,
                "calls": breaker.last_calls,
            }
            for name, breaker in sorted(self._breakers.items())
            if breaker.state is not State.CLOSED
        ]

    # --- state changes ------------------------------------------------------------------------------------

    def _breaker(self, name: str) -> _Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = _Breaker(name, self.config)
            self._unrouted = tuple(sorted({DEFAULT_DEPENDENCY, *self._breakers}))
            self._unrouted_admission = Admission(dependencies=self._unrouted, probes=())
        return breaker

    def _advance(self, now: float) -> None:
        if not self._unsettled:
            return  # every breaker is CLOSED: nothing can go half-open
        for breaker in self._breakers.values():
            if breaker.state is State.OPEN and now >= breaker.opened_until:
                breaker.state = State.HALF_OPEN
                breaker.epoch += 1
                breaker.probes_out = breaker.probe_successes = breaker.probe_failures = 0
                self._note(breaker, State.OPEN, breaker.opened_until, 0, 0, "open_elapsed")

    def _open(
        self, breaker: _Breaker, now: float, calls: int, failures: int, reason: str, before: State
    ) -> None:
        breaker.state = State.OPEN
        self._unsettled.add(breaker.name)
        breaker.opened_until = now + self.config.open_seconds
        breaker.window.clear()
        breaker.last_calls, breaker.last_failures = calls, failures
        self._note(breaker, before, now, calls, failures, reason)

    def _close(self, breaker: _Breaker, now: float) -> None:
        breaker.state = State.CLOSED
        self._unsettled.discard(breaker.name)
        breaker.window.clear()  # empty already (cleared on opening, nothing added since): said, not relied on
        successes = breaker.probe_successes
        breaker.probes_out = breaker.probe_successes = breaker.probe_failures = 0
        self._note(breaker, State.HALF_OPEN, now, successes, 0, "probes_succeeded")

    def _note(
        self, breaker: _Breaker, before: State, at: float, calls: int, failures: int, reason: str
    ) -> None:
        ratio = failures / calls if calls else 0.0
        self._pending.append(
            Transition(breaker.name, before, breaker.state, at, calls, failures, ratio, reason)
        )

    def _drain(self) -> list[Transition]:
        if not self._pending:
            return []
        done, self._pending = self._pending, []
        return done


def _checked(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a dependency name must be a non-empty string, got {name!r}")
    return name
