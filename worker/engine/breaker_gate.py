"""The circuit breakers in the running worker: admitting messages, recording outcomes, pausing receives.

The decisions are the pure ``worker.engine.breaker``'s; this module gives them the monotonic clock, the
dependencies a message declares (``WORKER_BREAKER__ROUTE``), a log line and metrics per transition, and a
wait the pollers use while receiving is paused. Without a route, a message may use any dependency, so any
open breaker pauses receiving for the whole queue; with one, only the messages that use an open dependency
go back, and receiving goes on for the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from worker import clock
from worker.engine.breaker import DEFAULT_DEPENDENCY, Admission, Breakers, Denied, State, Transition
from worker.engine.handler import import_callable
from worker.engine.message import Message
from worker.engine.policy import HandlerResult
from worker.errors import ConfigError, DependencyDown

if TYPE_CHECKING:
    from worker.settings_groups import BreakerSettings
    from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.breaker")

#: What a route returns for a message: the dependencies it uses (None: unknown, every breaker covers it).
Route = Callable[[Message], Iterable[str] | None]
#: Outcomes that say something about a dependency's health (the others are the message's own fault).
TRANSIENT = frozenset({HandlerResult.ERROR, HandlerResult.TIMEOUT, HandlerResult.RETRY_LATER})
#: Longest sleep of a paused poller before it looks again (a stop or a state change may come sooner).
PAUSE_STEP_SECONDS = 1.0
#: Message attribute the built-in route reads: comma-separated dependency names.
DEPENDENCIES_ATTRIBUTE = "dependencies"


def by_attribute(message: Message) -> Iterable[str] | None:
    """A ready-made route: the message attribute ``dependencies`` (comma-separated); unknown without it."""
    attribute = message.attributes.get(DEPENDENCIES_ATTRIBUTE)
    if attribute is None:
        return None
    raw = attribute.value.decode() if isinstance(attribute.value, bytes) else attribute.value
    return [name.strip() for name in raw.split(",") if name.strip()]


def load_route(path: str | None, variable: str = "WORKER_BREAKER__ROUTE") -> Route | None:
    """Import the route function (a plain ``def``: it runs on the event loop for every message)."""
    if path is None:
        return None
    user = import_callable(path, variable)
    if user.is_async:
        raise ConfigError(f"{variable}: {path!r} must be a plain def (it is called for every message)")
    route: Route = user.fn
    return route


def failed_dependency(error: BaseException | None) -> str:
    """The dependency a transient failure counts against: DependencyDown's, else the handler's own."""
    return error.dependency if isinstance(error, DependencyDown) else DEFAULT_DEPENDENCY


@dataclass(frozen=True, slots=True)
class Reopened:
    """A call failed on ``dependency`` and its breaker is open now: calls again in ``retry_in`` seconds.

    ``counts``: the failure was a half-open probe's, an attempt of the message; else it is handed back.
    """

    dependency: str
    retry_in: int
    counts: bool


class BreakerGate:
    """One queue's breakers as the engine uses them (shared by every message task and poller)."""

    def __init__(self, settings: BreakerSettings, queue: str, metrics: Metrics, route: Route | None) -> None:
        self.breakers = Breakers(settings.config())
        self.queue = queue
        self.route = route
        self._metrics = metrics
        self._states: dict[str, State] = {}

    @classmethod
    def for_settings(cls, settings: BreakerSettings, queue: str, metrics: Metrics) -> BreakerGate | None:
        """The gate WORKER_BREAKER__* ask for; None when breakers are disabled."""
        if not settings.enabled:
            return None
        return cls(settings, queue, metrics, load_route(settings.route))

    # -- messages --

    def admit(self, message: Message) -> Admission | Denied:
        """May ``message`` run now? A denial says for how long its dependency stays closed to it."""
        breakers = self.breakers
        if self.route is None and breakers.quiet:
            return breakers.unrouted_admission  # every breaker closed: no clock, nothing to report
        dependencies = self._dependencies(message)
        now = clock.now()
        verdict = self.breakers.admit(dependencies, now)
        self._report(self.breakers.tick(now))
        return verdict

    def record(
        self, admission: Admission, outcome: HandlerResult, error: BaseException | None
    ) -> Reopened | None:
        """Count one call's outcome; when it failed on a dependency whose breaker is open now, say so.

        A failure that opened the breaker, or was in flight when it opened, is not held against the message
        (``counts`` False: the caller hands it back), since the breaker, not the message, decides when that
        dependency is tried again. A half-open probe's failure is an attempt like any other (``counts``
        True), retried no sooner than the breaker's next probe: probes are the only calls while a breaker
        cycles, so a message that keeps failing them (a poison message raising a plain exception) still
        reaches the DLQ instead of cycling for ever.
        """
        now = clock.now()
        if outcome is HandlerResult.SUCCESS:
            self._report(self.breakers.succeeded(admission, now))
            return None
        if outcome not in TRANSIENT:
            self.breakers.released(admission)
            return None
        dependency = failed_dependency(error)
        self._report(self.breakers.failed(admission, dependency, now))
        if self.breakers.states(now).get(dependency, State.CLOSED) is State.CLOSED:
            return None
        return Reopened(dependency, self.retry_in(dependency), counts=dependency in admission.probes)

    def release(self, admission: Admission) -> None:
        """The message did not run after all (handed back): its probe permits go back."""
        self.breakers.released(admission)

    def retry_in(self, dependency: str) -> int:
        """Whole seconds until ``dependency``'s breaker lets calls through again (at least 1)."""
        details = {d["dependency"]: d for d in self.breakers.open_details(anyio.current_time())}
        seconds = details.get(dependency, {}).get("retry_in_seconds", 0.0)
        return max(1, math.ceil(float(seconds)))  # type: ignore[arg-type]

    # -- receiving --

    def pause_reason(self) -> str | None:
        """Why the pollers hold back (no route and a breaker open), or None."""
        if self.route is not None:
            return None
        paused = self.breakers.paused_for(anyio.current_time())
        if paused is None:
            return None
        return f"circuit open: not receiving for {paused:.0f}s"

    async def wait_until_receiving(self, stopping: anyio.Event, turned: Callable[[], None]) -> None:
        """Without a route: sleep while any breaker is open (until it may go half-open, or a stop)."""
        if self.route is not None:
            return
        while not stopping.is_set():
            now = anyio.current_time()
            paused = self.breakers.paused_for(now)
            self._report(self.breakers.tick(now))
            if paused is None:
                return
            turned()  # a paused loop is a healthy loop
            with anyio.move_on_after(min(PAUSE_STEP_SECONDS, max(0.01, paused))):
                await stopping.wait()

    def open_details(self) -> list[dict[str, object]]:
        """The breakers that are not closed, for /readyz's body."""
        return self.breakers.open_details(anyio.current_time())

    # -- reporting --

    def _dependencies(self, message: Message) -> list[str] | None:
        if self.route is None:
            return None
        try:
            names = self.route(message)
        except Exception as exc:
            log.warning(
                "breaker route failed; the message counts as using every dependency",
                extra={
                    "event": "breaker_route_failed",
                    "message_id": message.id,
                    "error_type": type(exc).__name__,
                },
            )
            return None
        return None if names is None else [str(name) for name in names]

    def _report(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            self._states[transition.dependency] = transition.after
            for state in State:
                self._metrics.circuit_state.labels(self.queue, transition.dependency, state.value).set(
                    1 if state is transition.after else 0
                )
            self._metrics.circuit_transitions.labels(
                self.queue, transition.dependency, transition.after.value
            ).inc()
            level = logging.WARNING if transition.after is State.OPEN else logging.INFO
            log.log(
                level,
                f"circuit {transition.after.value}",
                extra={
                    "event": "circuit_transition",
                    "queue": self.queue,
                    "dependency": transition.dependency,
                    "from": transition.before.value,
                    "to": transition.after.value,
                    "reason": transition.reason,
                    "calls": transition.calls,
                    "failures": transition.failures,
                    "failure_ratio": round(transition.ratio, 3),
                },
            )
