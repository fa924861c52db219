"""On-success and on-failure destinations: best-effort delivery of destination records, off the hot path.

``DestinationSink.submit`` only puts the outcome on a bounded in-memory stream (when it is full the
outcome is dropped and counted); a small pool of delivery tasks builds the record and sends it to
every destination of its list, each with bounded, jittered retries and a per-attempt timeout. A
destination outage therefore never re-runs the handler, never blocks the consumer and never delays
the delete: the message has already left the source queue when its outcome is submitted.

An outcome submitted while its message's span is current (docs/tracing.md) keeps that span for the record
(``worker.traceId``) and for an SQS destination's ``AWSTraceHeader``.

S3 destinations are written first when another destination of the same list needs the record cut
to its size limit, so the cut record can point at the complete one (``"fullRecord": "s3://..."``).
At shutdown (the sink's task cancelled) what is queued gets a short shielded grace to flush; what is
left after it is dropped and counted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from worker.aws.client import CALL_ERRORS, error_code
from worker.backoff import Backoff
from worker.destinations.record import DestinationRecord, build_record
from worker.destinations.targets import (
    DeliveryError,
    Destination,
    S3Destination,
    open_destinations,
    retryable,
)
from worker.engine.outcome import Outcome, OutcomeSink
from worker.engine.work_queue import serve
from worker.settings import Settings
from worker.telemetry.metrics import Metrics
from worker.telemetry.tracing import current_span
from worker.traces import SpanRef

log = logging.getLogger("worker.destinations")

#: Outcomes waiting for delivery; beyond this, new ones are dropped (and counted).
QUEUE_CAPACITY = 10_000
#: Concurrent delivery tasks (each handles one outcome, fanning out to its destinations).
DELIVERY_TASKS = 4
#: At shutdown, seconds given to what is queued before it is dropped.
SHUTDOWN_GRACE_SECONDS = 3.0
#: Backoff between attempts: full jitter below 0.2 s * 2^(n-1), capped at 5 s.
BACKOFF = Backoff(base=0.2, cap=5.0)
#: At shutdown, seconds given to the clients to close.
CLIENT_CLOSE_SECONDS = 2.0
#: An outcome waiting for delivery, with the span that was current when it was submitted.
_Queued = tuple[Outcome, SpanRef | None]


class DestinationSink:
    """An OutcomeSink delivering records to destinations from a bounded queue and a task pool."""

    def __init__(
        self,
        on_success: Sequence[Destination],
        on_failure: Sequence[Destination],
        metrics: Metrics,
        *,
        attempts: int = 3,
        timeout: float = 5.0,
        capacity: int = QUEUE_CAPACITY,
        tasks: int = DELIVERY_TASKS,
        shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.on_success = list(on_success)
        self.on_failure = list(on_failure)
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.tasks = max(1, tasks)
        self.shutdown_grace = shutdown_grace
        self._jitter = jitter
        self._send, self._receive = anyio.create_memory_object_stream[_Queued](capacity)
        self._dropping = False
        labels = {d.label for d in (*self.on_success, *self.on_failure)}
        self._counters = {
            label: {
                result: metrics.destination_deliveries.labels(label, result)
                for result in ("ok", "failed", "dropped")
            }
            for label in labels
        }

    def destinations_for(self, outcome: Outcome) -> list[Destination]:
        """On-success destinations for Success, on-failure ones for every other condition."""
        return self.on_success if outcome.succeeded else self.on_failure

    # -- the hot path: never blocks, never raises --

    def submit(self, outcome: Outcome) -> None:
        """Queue ``outcome`` for delivery; when the queue is full (or closed) drop it and count it."""
        try:
            if not self.destinations_for(outcome):
                return
            try:
                self._send.send_nowait((outcome, current_span()))
            except anyio.WouldBlock:
                self._drop(outcome, "queue full")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._drop(outcome, "sink stopped")
            else:
                self._dropping = False
        except Exception as exc:  # the contract: submit never raises
            log.error(  # noqa: TRY400 - no traceback in the hot path
                "destination submit failed",
                extra={"event": "destination_submit_failed", "error": type(exc).__name__},
            )

    def _drop(self, outcome: Outcome, reason: str) -> None:
        self._count_all(self.destinations_for(outcome), "dropped")
        if not self._dropping:  # one warning per run of drops, not one per outcome
            self._dropping = True
            log.warning(
                f"destination outcome dropped ({reason})",
                extra={
                    "event": "destination_dropped",
                    "message_id": outcome.message.id,
                    "error": reason.replace(" ", "_"),
                },
            )

    def _count(self, destination: Destination, result: str) -> None:
        self._counters[destination.label][result].inc()

    def _count_all(self, destinations: Sequence[Destination], result: str) -> None:
        for destination in destinations:
            self._count(destination, result)

    # -- the delivery tasks --

    async def run(self, *, task_status: TaskStatus[OutcomeSink] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; then give what is queued ``shutdown_grace`` seconds, drop the rest."""
        await serve(
            self._send,
            self._receive,
            tasks=self.tasks,
            handle=self._deliver_queued,
            grace=self.shutdown_grace,
            leftover=self._drop_leftovers,
            started=self,
            task_status=task_status,
        )

    def _drop_leftovers(self, left: list[_Queued]) -> None:
        for outcome, _ in left:
            self._count_all(self.destinations_for(outcome), "dropped")
        if left:
            log.warning(
                f"{len(left)} destination outcome(s) dropped at shutdown",
                extra={"event": "destination_dropped", "dropped": len(left), "error": "shutdown"},
            )

    async def _deliver_queued(self, queued: _Queued) -> None:
        outcome, trace = queued
        await self.deliver(outcome, trace)

    async def deliver(self, outcome: Outcome, trace: SpanRef | None = None) -> None:
        """Build the record and send it to every destination of its list; never raises (but Cancelled)."""
        destinations = self.destinations_for(outcome)
        settled: set[int] = set()
        try:
            try:
                record = build_record(outcome, trace)
            except Exception as exc:
                log.error(  # noqa: TRY400 - the error type is enough; the record may hold bodies
                    "destination record could not be built",
                    extra={
                        "event": "destination_failed",
                        "message_id": outcome.message.id,
                        "error": type(exc).__name__,
                    },
                )
                self._count_all(destinations, "failed")
                settled.update(range(len(destinations)))
                return
            indexed = list(enumerate(destinations))
            stores = [(i, d) for i, d in indexed if isinstance(d, S3Destination)]
            others = [(i, d) for i, d in indexed if not isinstance(d, S3Destination)]
            full_record: str | None = None
            if stores and others and _needs_cut(record, [d for _, d in others]):
                locations = await self._fan_out(stores, record, None, settled)
                full_record = next((loc for loc in locations if loc), None)
                await self._fan_out(others, record, full_record, settled)
            else:
                await self._fan_out(indexed, record, None, settled)
        except anyio.get_cancelled_exc_class():
            unsettled = [d for i, d in enumerate(destinations) if i not in settled]
            self._count_all(unsettled, "dropped")
            raise
        except Exception as exc:  # a bug here must not take the worker down with the pool
            log.error(  # noqa: TRY400 - the error type is enough; the record may hold bodies
                "destination delivery crashed",
                extra={
                    "event": "destination_failed",
                    "message_id": outcome.message.id,
                    "error": type(exc).__name__,
                },
            )
            self._count_all([d for i, d in enumerate(destinations) if i not in settled], "failed")

    async def _fan_out(
        self,
        destinations: Sequence[tuple[int, Destination]],
        record: DestinationRecord,
        full_record: str | None,
        settled: set[int],
    ) -> list[str | None]:
        results: list[str | None] = [None] * len(destinations)

        async def one(slot: int, index: int, destination: Destination) -> None:
            results[slot] = await self._deliver_one(destination, record, full_record)
            settled.add(index)

        async with anyio.create_task_group() as tg:
            for slot, (index, destination) in enumerate(destinations):
                tg.start_soon(one, slot, index, destination)
        return results

    async def deliver_now(self, record: DestinationRecord) -> None:
        """Deliver one record to every on-failure destination at once (retried as usual), bypassing the queue.

        For records that are not a message's outcome (a canary rollback): rare, and awaited by their writer.
        """
        async with anyio.create_task_group() as tg:
            for destination in self.on_failure:
                tg.start_soon(self._deliver_one, destination, record, None)

    async def _deliver_one(
        self, destination: Destination, record: DestinationRecord, full_record: str | None
    ) -> str | None:
        """Up to ``attempts`` tries, each under ``timeout``; counts ok or failed; returns the location."""
        attempts = self.attempts if destination.retries else 1
        code = "Unknown"
        made = 0
        for attempt in range(attempts):
            if attempt:
                await anyio.sleep(BACKOFF.delay(attempt, self._jitter()))
            made += 1
            with anyio.move_on_after(self.timeout):
                try:
                    location = await destination.deliver(record, full_record)
                except Exception as exc:  # contained: a destination never takes the pool down
                    code = exc.code if isinstance(exc, DeliveryError) else error_code(exc)
                    if not isinstance(exc, (DeliveryError, *CALL_ERRORS)) or not retryable(exc):
                        break
                    log.debug(
                        "destination attempt failed",
                        extra={"event": "destination_retry", "destination": destination.label, "error": code},
                    )
                    continue
                self._count(destination, "ok")
                return location
            code = "Timeout"
        self._count(destination, "failed")
        log.warning(
            "destination delivery failed",
            extra={
                "event": "destination_failed",
                "destination": destination.label,
                "message_id": record.message_id,
                "error": code,
                "attempts": made,
            },
        )
        return None


def _needs_cut(record: DestinationRecord, destinations: Sequence[Destination]) -> bool:
    limits = [d.limit for d in destinations if d.limit is not None]
    return bool(limits) and record.size() > min(limits)


async def build_sink(
    settings: Settings,
    metrics: Metrics,
    *,
    task_status: TaskStatus[OutcomeSink | None] = anyio.TASK_STATUS_IGNORED,
    endpoints: Mapping[str, str] | None = None,
) -> None:
    """Start delivering outcomes to the configured destinations; report the sink; run until cancelled.

    ``endpoints`` overrides the endpoint URL per kind (``{"sns": "http://127.0.0.1:1234"}``), for tests.
    With no destination configured there is no sink (None).
    """
    if not settings.on_success and not settings.on_failure:
        task_status.started(None)
        await anyio.sleep_forever()
        return
    stack = AsyncExitStack()
    try:
        on_success, on_failure = await open_destinations(settings, stack, endpoints=endpoints)
        sink = DestinationSink(
            on_success,
            on_failure,
            metrics,
            attempts=settings.destination_attempts,
            timeout=settings.destination_timeout_seconds,
        )
        log.info(
            "destinations ready",
            extra={
                "event": "destinations_ready",
                "on_success": [d.label for d in on_success],
                "on_failure": [d.label for d in on_failure],
            },
        )
        await sink.run(task_status=task_status)
    finally:
        # Cancelled at shutdown: the clients still get to close their connections.
        with anyio.move_on_after(CLIENT_CLOSE_SECONDS, shield=True):
            await stack.aclose()
