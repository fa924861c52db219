"""Messages going back to the queue unfinished: visibility changes, hand-backs (no attempt), lost leases.

A released message is delivered again once the visibility it was given ends. One handed back (its handler did
not run in this delivery: a drain, an open breaker, a canary on trial, the later messages of a FIFO group) is
also counted, so that receive is no attempt. Nothing is changed once the message's lease is lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import anyio

from worker.aws.batcher import Batcher
from worker.engine.disposition import Disposition
from worker.engine.handbacks import HandBacks
from worker.engine.lease import Lease
from worker.engine.message import Message
from worker.engine.pollers import handback_while_draining
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.processor")


class Releases:
    """Gives messages back for one queue; shared by every message task (``Processor.releases``)."""

    def __init__(
        self,
        *,
        queue: str,
        wait_time_seconds: int,
        canary_delay: float,
        visibility: Batcher,
        handbacks: HandBacks,
        metrics: Metrics,
    ) -> None:
        self.queue = queue
        #: How long a message that failed on the canary on trial stays away (WORKER_BACKOFF_BASE_SECONDS).
        self.canary_delay = canary_delay
        self.wait_time_seconds = wait_time_seconds
        self.visibility = visibility
        self.handbacks = handbacks
        self.metrics = metrics
        #: Set when the worker drains: messages not yet started (later ones of a FIFO group) go back.
        self.draining = False
        #: When this worker's receives still open on SQS's side end at the latest (anyio clock; the consumer
        #: points it at its open receives): what goes back while draining stays hidden until then.
        self.receives_open_until: Callable[[], float] = lambda: 0.0

    @property
    def handback_seconds(self) -> int:
        """Visibility of messages handed back unprocessed: 0, or once draining 1 s past the end of this
        worker's receives still open on SQS's side (at most WAIT_TIME_SECONDS + 1)."""
        # Draining, this worker's own pending long polls (cancelled ones stay open on SQS's side until their
        # wait ends) must not retake them.
        if not self.draining:
            return 0
        now = anyio.current_time()
        return handback_while_draining(self.receives_open_until(), now, self.wait_time_seconds)

    async def give_back(self, items: Sequence[Message], leases: Sequence[Lease], seconds: int = 0) -> None:
        """Hand messages back unprocessed (shutdown, prefetch), concurrently: visibility ``seconds``."""
        async with anyio.create_task_group() as tg:
            for message, lease in zip(items, leases, strict=True):
                tg.start_soon(self.hand_back, message, lease, seconds)

    async def hand_back(self, message: Message, lease: Lease, seconds: int) -> bool:
        """Give back a message whose handler did not run in this delivery; its receive is no attempt."""
        # Released or not, this receive ran no handler: when the message comes back, it is no attempt.
        self.handbacks.record(message.id)
        return await self.release(message, lease, seconds)

    async def breaker_hand_back(
        self, message: Message, lease: Lease, dependency: str, retry_in: float
    ) -> Disposition:
        """Give back a message a breaker keeps from running (or that failed as it opened): no attempt."""
        fields = {"event": "breaker_hand_back", "dependency": dependency}
        return await self._free_hand_back(message, lease, "breaker", retry_in, "circuit open", fields)

    async def canary_hand_back(self, message: Message, lease: Lease, version: str) -> Disposition:
        """Give back a message that failed on the canary version while it is on trial: no attempt."""
        fields = {"event": "canary_hand_back", "version": version}
        delay = self.canary_delay
        return await self._free_hand_back(message, lease, "canary", delay, "failed on the canary", fields)

    async def _free_hand_back(
        self, message: Message, lease: Lease, kind: str, delay: float, why: str, fields: Mapping[str, object]
    ) -> Disposition:
        seconds = max(1, math.ceil(delay))
        self.metrics.retries.labels(self.queue, kind).inc()
        log.info(
            f"{why}: message handed back", extra={**fields, "message_id": message.id, "seconds": seconds}
        )
        released = await self.hand_back(message, lease, seconds)
        return Disposition(finished=False, give_back=seconds if released else None)

    async def release(self, message: Message, lease: Lease, seconds: int) -> bool:
        """Set the message's visibility to ``seconds`` while its lease is held; True when SQS took it."""
        if not lease.held():
            self.lease_lost(message, "release")
            return False
        with anyio.CancelScope(shield=True):
            error = await self.visibility.submit(
                {"ReceiptHandle": message.receipt_handle, "VisibilityTimeout": seconds}
            )
        if error is not None:
            log.warning(
                "visibility change failed",
                extra={"event": "release_failed", "message_id": message.id, "error": error},
            )
            return False
        return True

    def lease_lost(self, message: Message, action: str) -> None:
        """Report a message left for redelivery: its lease ran out before ``action``."""
        self.metrics.heartbeats.labels(self.queue, "lease_lost").inc()
        log.warning(
            "lease lost: message left for redelivery",
            extra={"event": "lease_lost", "message_id": message.id, "action": action},
        )
