"""Liveness and readiness state, updated by the poll loop and read by /healthz and /readyz."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from worker import clock


@dataclass(slots=True)
class Health:
    """What the HTTP probes report; times are on the monotonic clock."""

    stale_after: float = 120.0
    started_at: float = field(default_factory=anyio.current_time)
    last_turn: float | None = None
    last_poll_ok: bool = False
    last_error: str | None = None
    draining: bool = False
    started: bool = False
    #: poller index -> monotonic time by which its outstanding receive should have answered
    polls_due: dict[int, float] = field(default_factory=dict)
    #: Why the pollers hold back receiving (read live; None or a None result: they do not).
    receive_paused: Callable[[], str | None] | None = None
    #: More fields for /readyz's JSON body, read at each probe (the open circuit breakers).
    details: Callable[[], dict[str, object]] | None = None

    def poll_begun(self, poller: int, due: float) -> None:
        """A receive went out and should answer by ``due`` (long-poll wait plus a margin)."""
        self.polls_due[poller] = due

    def poll_ended(self, poller: int) -> None:
        """The poller's receive answered or failed."""
        self.polls_due.pop(poller, None)

    def turned(self) -> None:
        """The poll loop went round (a failed poll counts: an outage must not get the process killed)."""
        self.last_turn = clock.now()

    def poll_succeeded(self) -> None:
        """A ReceiveMessage answered."""
        self.turned()
        self.last_poll_ok = True
        self.last_error = None

    def poll_failed(self, code: str) -> None:
        """A ReceiveMessage failed with ``code``."""
        self.turned()
        self.last_poll_ok = False
        self.last_error = code

    def liveness(self) -> tuple[bool, str]:
        """(alive, reason): the loop answers (we are running this) and the poll loop keeps turning."""
        now = anyio.current_time()
        reference = self.last_turn if self.last_turn is not None else self.started_at
        if now - reference > self.stale_after:
            return False, f"poll loop has not turned for {now - reference:.0f}s"
        return True, "poll loop turning"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): SQS reachable, receiving (not paused) and not draining."""
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        paused = self.receive_paused() if self.receive_paused is not None else None
        if paused is not None:
            return False, paused
        now = anyio.current_time()
        overdue = [due for due in self.polls_due.values() if now > due]
        if overdue:
            return False, f"SQS not answering: a receive is {now - min(overdue):.0f}s overdue"
        if not self.last_poll_ok:
            return False, f"SQS unreachable: {self.last_error or 'no successful poll yet'}"
        return True, "polling"
