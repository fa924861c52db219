"""Each message's lease (its visibility deadline) tracked by the worker, and the heartbeat that extends it.

The worker keeps the deadline itself: LocalStack accepts stale receipt handles, and AWS's errors arrive
too late to act on, so "is this message still mine?" is answered from the clock, never from an error.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from worker import clock
from worker.aws.batcher import Batcher
from worker.engine.policy import visibility_cap
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.lease")

#: A lease within this many seconds of its deadline is treated as lost: a call issued now may land late.
SAFETY_MARGIN = 1.0
#: The heartbeat scheduler looks at its deadlines at least this often, even when nothing is due.
RECHECK_SECONDS = 1.0
#: Error codes that mean the receipt handle no longer holds the message.
LOST_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"}
)


@dataclass(slots=True)
class Lease:
    """Visibility deadline of one received message, on the monotonic clock."""

    received_at: float
    deadline: float
    lost: bool = False

    @classmethod
    def start(cls, received_at: float, visibility: int) -> Lease:
        """A lease taken at ``received_at`` (the time the receive was *sent*: conservative)."""
        return cls(received_at, received_at + visibility)

    def held(self, now: float | None = None) -> bool:
        """True while the message is still ours to delete or release."""
        current = clock.now() if now is None else now
        if current >= self.deadline - SAFETY_MARGIN:
            self.lost = True
        return not self.lost

    def age(self, now: float | None = None) -> float:
        """Seconds since the receive."""
        return (clock.now() if now is None else now) - self.received_at


class Heartbeats:
    """Extends the lease of every message being processed, from one task (no task per message).

    ``track()`` a message when its processing starts and ``untrack()`` it when it is finished: whenever
    half of its lease is left, the lease is extended by the visibility timeout (batched), until it is
    untracked, lost, or at SQS's 12-hour cap. ``run()`` must be running while messages are tracked.
    """

    def __init__(self, visibility: int, batcher: Batcher, metrics: Metrics, queue: str) -> None:
        self._visibility = visibility
        self._half = max(visibility / 2, 2 * SAFETY_MARGIN)
        self._batcher = batcher
        self._queue = queue
        self._ok = metrics.heartbeats.labels(queue, "ok")
        self._failed = metrics.heartbeats.labels(queue, "failed")
        self._lost = metrics.heartbeats.labels(queue, "lease_lost")
        #: (due time, tie-breaker, beat); finished beats are dropped lazily, compacted when they pile up.
        self._heap: list[tuple[float, int, Beat]] = []
        self._order = itertools.count()
        self._live = 0
        self._next_due = math.inf
        self._wake = anyio.Event()
        self.running = False

    def track(self, lease: Lease, receipt_handle: str) -> Beat:
        """Start extending ``lease`` (the message with ``receipt_handle``) when half of it is left."""
        if not self.running:
            raise RuntimeError("Heartbeats.run() is not running: leases would silently run out")
        beat = Beat(lease, receipt_handle)
        self._live += 1
        self._schedule(beat, lease.deadline - self._half)
        return beat

    def untrack(self, beat: Beat) -> None:
        """The message is finished: no more extensions (one already sent still lands)."""
        if beat.active:
            beat.active = False
            self._live -= 1
            if len(self._heap) > 2 * self._live + 64:
                self._heap = [item for item in self._heap if item[2].active]
                heapq.heapify(self._heap)

    def _schedule(self, beat: Beat, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._order), beat))
        if due < self._next_due:
            self._next_due = due
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send the extensions as they fall due, until cancelled."""
        self.running = True
        try:
            async with anyio.create_task_group() as beats:
                task_status.started()
                while True:
                    heap = self._heap
                    while heap and not heap[0][2].active:
                        heapq.heappop(heap)
                    now = anyio.current_time()
                    # Idle, it still looks again every RECHECK seconds, so a message tracked meanwhile (due
                    # half a lease later) needs no wake-up: short handlers cost this task nothing.
                    self._next_due = min(heap[0][0] if heap else math.inf, now + RECHECK_SECONDS)
                    if self._wake.is_set():
                        self._wake = anyio.Event()
                    wait = self._next_due - now
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await self._wake.wait()
                        continue
                    _, _, beat = heapq.heappop(heap)
                    beats.start_soon(self._extend, beat)
        finally:
            self.running = False

    async def _extend(self, beat: Beat) -> None:
        lease = beat.lease
        if not lease.held():
            self._stop(beat, "lease lost", None)
            return
        asked = min(self._visibility, visibility_cap(lease.age()))
        if asked <= 0:
            self.untrack(beat)  # at the 12 h cap: SQS allows no more; the lease simply runs out
            return
        sent = anyio.current_time()
        error = await self._batcher.submit({"ReceiptHandle": beat.receipt_handle, "VisibilityTimeout": asked})
        if not beat.active:
            return  # finished while the extension was in flight
        if error is None:
            lease.deadline = max(lease.deadline, sent + asked)
            self._ok.inc()
            self._schedule(beat, lease.deadline - self._half)
        elif error in LOST_CODES:
            lease.lost = True
            self._stop(beat, "lease lost", error)
        else:
            self._failed.inc()
            log.warning("visibility extension failed", extra={"event": "heartbeat_failed", "error": error})
            # Again within a second while the lease is held: halfway to the point it counts as lost (at least
            # 0.1 s later, so a lease about to be lost is given up after a few tries, not hammered).
            now = anyio.current_time()
            self._schedule(beat, now + min(1.0, max(0.1, (lease.deadline - SAFETY_MARGIN - now) / 2)))

    def _stop(self, beat: Beat, why: str, error: str | None) -> None:
        self._lost.inc()
        extra = {"event": "lease_lost"} if error is None else {"event": "lease_lost", "error": error}
        log.warning(f"visibility {why}", extra=extra)
        self.untrack(beat)


@dataclass(slots=True, eq=False)
class Beat:
    """A tracked message (its lease and receipt handle), as ``Heartbeats.track()`` returns it."""

    lease: Lease
    receipt_handle: str
    active: bool = True
