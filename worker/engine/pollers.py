"""How the pollers poll (pure): each receive's wait and visibility, and how many pollers run.

A receive that waits long while the queue is idle is *parked*: it asks for a short visibility
(``PARKED_VISIBILITY``), and what it brings is extended to the full lease before processing. Stopping, the
worker cancels its parked receives instead of waiting for them: SQS keeps an abandoned long poll open on
its side and may still hand it messages, which then stay hidden for the visibility the receive asked for;
a parked receive asked for seconds, not a lease. A receive that follows one that brought messages, and a
poller's first receive (at start, or a poller added because receives came back full), is *busy*: the full
visibility and a short wait (it returns at once while messages are there), awaited at stop. The very first
receive of a starting worker is a short poll (no wait): what is already waiting runs at once, without the
extension call a parked receive's messages need, and a stop right after start has nothing open to wait for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.limits import SQS_BATCH_MAX

#: Visibility a parked receive asks for: how long a message a cancelled long poll took stays hidden.
PARKED_VISIBILITY = 5
#: Long-poll wait of a busy receive (one that follows a receive that brought messages).
BUSY_WAIT = 1
#: Automatic sizing: one poller per this many slots of concurrency...
SLOTS_PER_POLLER = 10
#: ... and never more than this many.
AUTO_POLLERS_MAX = 8


@dataclass(frozen=True, slots=True)
class PollPlan:
    """One receive: its wait, the visibility it asks for, and whether a stop may cancel it."""

    wait: int
    visibility: int
    parked: bool

    def needs_extension(self, lease_seconds: int) -> bool:
        """True when what it brings must be extended to ``lease_seconds`` before it is processed."""
        return self.visibility < lease_seconds


def plan_poll(*, busy: bool, wait: int, visibility: int, first: bool = False) -> PollPlan:
    """The next receive of a poller whose last receive brought messages (``busy``) or not; ``first``: the
    worker's first receive (a short poll with the full visibility).

    ``wait`` and ``visibility`` are WORKER_WAIT_TIME_SECONDS and WORKER_VISIBILITY_TIMEOUT_SECONDS.
    """
    if first:
        return PollPlan(0, visibility, parked=False)
    if wait <= BUSY_WAIT:  # short polls already: a stop waits for them
        return PollPlan(wait, visibility, parked=False)
    if busy:
        return PollPlan(BUSY_WAIT, visibility, parked=False)
    return PollPlan(wait, min(visibility, PARKED_VISIBILITY), parked=True)


def pollers_bound(concurrency: int, configured: int | None) -> int:
    """Most pollers: WORKER_POLLERS when set, else ceil(concurrency / 10) capped at 8 (at least 1)."""
    if configured is not None:
        return configured
    return max(1, min(AUTO_POLLERS_MAX, math.ceil(concurrency / SLOTS_PER_POLLER)))


def next_pollers(active: int, *, bound: int, asked: int, got: int, free: int) -> int:
    """Pollers wanted after one receive that asked for ``asked`` and got ``got`` (``free`` slots left).

    One more when the receive came back full with a whole batch asked and slots are still free (the queue
    has more than the pollers bring in); one fewer when it came back empty (never below 1); else unchanged.
    The result stays within [1, bound].
    """
    if got == 0:
        wanted = active - 1
    elif got >= asked == SQS_BATCH_MAX and free > 0:
        wanted = active + 1
    else:
        wanted = active
    return max(1, min(bound, wanted))


def handback_while_draining(open_until: float, now: float, wait: int) -> int:
    """Seconds a message handed back unprocessed while draining stays hidden: until 1 s after the worker's own
    receives still open on SQS's side have ended (``open_until``; a cancelled long poll stays open there until
    its wait ends), so they cannot take it again; never more than ``wait`` (WAIT_TIME_SECONDS) + 1."""
    return min(wait, max(0, math.ceil(open_until - now))) + 1
