"""Each message's lease (its visibility deadline) tracked by the worker, and the heartbeat that extends it.

The worker keeps the deadline itself: LocalStack accepts stale receipt handles, and AWS's errors arrive
too late to act on, so "is this message still mine?" is answered from the clock, never from an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from .metrics import Metrics
from .policy import visibility_cap
from .sqs import Batcher

log = logging.getLogger("worker.lease")

#: A lease within this many seconds of its deadline is treated as lost: a call issued now may land late.
SAFETY_MARGIN = 1.0
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
        current = anyio.current_time() if now is None else now
        if current >= self.deadline - SAFETY_MARGIN:
            self.lost = True
        return not self.lost

    def age(self, now: float | None = None) -> float:
        """Seconds since the receive."""
        return (anyio.current_time() if now is None else now) - self.received_at


async def heartbeat(
    lease: Lease, receipt_handle: str, visibility: int, batcher: Batcher, metrics: Metrics, queue: str
) -> None:
    """Extend the lease by ``visibility`` whenever half of it is left, until cancelled or lost."""
    half = max(visibility / 2, 2 * SAFETY_MARGIN)
    while True:
        await anyio.sleep(max(0.0, lease.deadline - half - anyio.current_time()))
        if not lease.held():
            metrics.heartbeats.labels(queue, "lease_lost").inc()
            log.warning("visibility lease lost", extra={"event": "lease_lost"})
            return
        asked = min(visibility, visibility_cap(lease.age()))
        if asked <= 0:
            return  # at the 12 h cap: SQS allows no more; the lease simply runs out
        sent = anyio.current_time()
        error = await batcher.submit({"ReceiptHandle": receipt_handle, "VisibilityTimeout": asked})
        if error is None:
            lease.deadline = max(lease.deadline, sent + asked)
            metrics.heartbeats.labels(queue, "ok").inc()
        elif error in LOST_CODES:
            lease.lost = True
            metrics.heartbeats.labels(queue, "lease_lost").inc()
            log.warning("visibility lease lost", extra={"event": "lease_lost", "error": error})
            return
        else:
            metrics.heartbeats.labels(queue, "failed").inc()
            log.warning("visibility extension failed", extra={"event": "heartbeat_failed", "error": error})
            await anyio.sleep(min(1.0, max(0.0, lease.deadline - anyio.current_time())))
