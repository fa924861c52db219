"""The consume loop: pollers that receive only as many messages as there are free slots, the message
tasks, and the shutdown order (stop polling, give back what arrives, drain in-flight, flush batches)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.queues import receive
from worker.backoff import Backoff
from worker.engine.message import Message, parse_or_fallback, sent_timestamp_ms
from worker.engine.processor import Processor
from worker.engine.threads import AbandonedThreads
from worker.limits import SQS_BATCH_MAX
from worker.settings import Settings
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


log = logging.getLogger("worker.consumer")
#: A receive still unanswered this long after its long-poll wait makes the worker not ready.
POLL_OVERDUE_MARGIN = 5.0
#: Poll-error backoff: full jitter below 0.5 s doubling per failure, capped at 30 s.
POLL_BACKOFF = Backoff(base=0.5, cap=30.0)
#: Errors that mean SQS wants fewer messages in flight: back off, do not count as an outage.
OVER_LIMIT_CODES = frozenset({"OverLimit", "AWS.SimpleQueueService.OverLimit"})


class Slots:
    """Counts in-flight messages against the concurrency limit; pollers reserve before receiving.

    With ``threads``, abandoned handler threads past their limit hold slots too, and nothing is reserved
    while the limit of abandoned threads is reached (``threads.paused``) until ``close()``.
    """

    def __init__(self, limit: int, threads: AbandonedThreads | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.threads = threads
        self.closed = False
        #: Set by release() while a poller waits for capacity (None: nobody waits, nothing to wake).
        self._freed: anyio.Event | None = None
        if threads is not None:
            threads.on_change(self.wake)

    def _free(self) -> int:
        if self.threads is None:
            return self.limit - self.used
        if self.threads.paused:
            return 0
        return self.limit - self.used - self.threads.slots_taken

    async def reserve(self, most: int, health: Health) -> int:
        """Wait for at least one free slot, then take up to ``most`` (0 once closed)."""
        while self._free() <= 0:
            if self.closed:
                return 0
            health.turned()  # waiting for capacity is a healthy loop
            if self._freed is None:
                self._freed = anyio.Event()
            with anyio.move_on_after(1.0):
                await self._freed.wait()
        taken = min(most, self._free())
        self.used += taken
        return taken

    def release(self, count: int) -> None:
        """Give back ``count`` slots and wake waiting pollers."""
        if count <= 0:
            return
        self.used -= count
        self.wake()

    def wake(self) -> None:
        """Make waiting pollers look again (slots freed, an abandoned thread returned, closing)."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def close(self) -> None:
        """Pollers waiting for capacity return with nothing: the worker stops."""
        self.closed = True
        self.wake()


def group_entries(items: Sequence[tuple[Message, Any]], fifo: bool) -> list[list[tuple[Message, Any]]]:
    """Standard queues: one group per message. FIFO: one group per MessageGroupId, receive order kept."""
    if not fifo:
        return [[item] for item in items]
    groups: dict[str, list[tuple[Message, Any]]] = {}
    for item in items:
        groups.setdefault(item[0].group_id or "", []).append(item)
    return list(groups.values())


class _Runner:
    """An idle runner's mailbox: ``item`` is set, then ``ready``; ready with no item means "stop"."""

    __slots__ = ("item", "ready")

    def __init__(self) -> None:
        self.item: tuple[list[tuple[Message, Any]], float] | None = None
        self.ready = anyio.Event()


class Consumer:
    """Owns the pollers and message tasks of one queue."""

    def __init__(
        self,
        *,
        settings: Settings,
        client: SQSClient,
        processor: Processor,
        metrics: Metrics,
        health: Health,
        threads: AbandonedThreads,
    ) -> None:
        self.settings = settings
        self.client = client
        self.processor = processor
        self.metrics = metrics
        self.health = health
        self.queue = processor.queue
        self.slots = Slots(settings.concurrency, threads)
        metrics.abandoned_threads.labels(self.queue).set_function(lambda: threads.count)
        metrics.abandoned_threads_limit.labels(self.queue).set(threads.limit)
        self.stopping = anyio.Event()
        #: Runners waiting for their next group (LIFO), and whether they may wait any more.
        self._idle: list[_Runner] = []
        self._retired = False
        self._received = metrics.received.labels(self.queue)
        self._age = metrics.message_age.labels(self.queue)
        self._last_poll = metrics.last_poll_success.labels(self.queue)
        metrics.concurrency_limit.labels(self.queue).set(settings.concurrency)

    def stop(self) -> None:
        """Stop polling; receives in flight still return and what they bring is given back."""
        self.stopping.set()
        self.slots.close()  # a poller held back by abandoned threads must not wait for them
        self.processor.drain()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet finished (their slots are taken)."""
        return self.slots.used

    async def run(self) -> None:
        """Poll until ``stop()``, then wait for the message tasks (the caller bounds the wait).

        The caller runs the processor's heartbeats around this call, so leases keep being extended while
        in-flight work drains.
        """
        async with anyio.create_task_group() as work:
            async with anyio.create_task_group() as pollers:
                for index in range(self.settings.pollers):
                    pollers.start_soon(self._poll, work, index)
            self._retire_idle_runners()  # no more groups will come: idle runners end

    def _dispatch(self, work: TaskGroup, group: list[tuple[Message, Any]], received_at: float) -> None:
        """Hand a group to an idle runner, or start a runner for it (their number stays under the limit)."""
        if self._idle:
            runner = self._idle.pop()
            runner.item = (group, received_at)
            runner.ready.set()
        else:
            work.start_soon(self._runner, group, received_at)

    async def _runner(self, group: list[tuple[Message, Any]], received_at: float) -> None:
        """Runs groups one after another, idling between them, so a message costs no task of its own."""
        runner = _Runner()
        item: tuple[list[tuple[Message, Any]], float] | None = (group, received_at)
        try:
            while item is not None:
                # The processor releases each message's slot when it stops holding it (a delete may
                # still be in flight when this returns).
                await self.processor.run_group(*item, self.slots.release)
                if self._retired:
                    return
                runner.item, runner.ready = None, anyio.Event()
                self._idle.append(runner)
                await runner.ready.wait()
                item = runner.item
        except anyio.get_cancelled_exc_class():
            if runner in self._idle:
                self._idle.remove(runner)
            elif runner.item is not None and runner.item is not item:
                # Cancelled between being handed a group and starting it: hand the messages back.
                orphan, at = runner.item
                with anyio.move_on_after(5, shield=True):
                    await self._give_back([m for m, _ in orphan], at)
            raise

    def _retire_idle_runners(self) -> None:
        self._retired = True
        while self._idle:
            runner = self._idle.pop()
            runner.ready.set()  # item None: the runner returns

    async def _poll(self, work: TaskGroup, index: int) -> None:
        failures = 0
        while not self.stopping.is_set():
            wanted = await self.slots.reserve(SQS_BATCH_MAX, self.health)
            if self.stopping.is_set():
                self.slots.release(wanted)
                return
            sent = anyio.current_time()
            self.health.poll_begun(index, sent + self.settings.wait_time_seconds + POLL_OVERDUE_MARGIN)
            try:
                response = await receive(
                    self.client,
                    self.settings.queue_url,
                    wanted,
                    wait=self.settings.wait_time_seconds,
                    visibility=self.settings.visibility_timeout_seconds,
                )
            except CALL_ERRORS as exc:
                self.health.poll_ended(index)
                self.slots.release(wanted)
                failures += 1
                code = error_code(exc)
                self.metrics.sqs_errors.labels("ReceiveMessage").inc()
                if code in OVER_LIMIT_CODES:
                    self.health.turned()
                else:
                    self.health.poll_failed(code)
                delay = POLL_BACKOFF.delay(failures + 1)
                if failures in (1, 5) or failures % 20 == 0:
                    log.warning(
                        "receive failed; backing off",
                        extra={"event": "poll_failed", "error": code, "failures": failures, "poller": index},
                    )
                with anyio.move_on_after(delay):
                    await self.stopping.wait()
                continue
            self.health.poll_ended(index)
            retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            if retried:
                self.metrics.sqs_errors.labels("ReceiveMessage").inc(retried)
            if failures:
                log.info("receive recovered", extra={"event": "poll_recovered", "after_failures": failures})
            failures = 0
            self.health.poll_succeeded()
            self._last_poll.set(time.time())
            entries = response.get("Messages", [])
            self.slots.release(wanted - len(entries))
            if not entries:
                continue
            self._received.inc(len(entries))
            items = [parse_or_fallback(entry, self.settings.queue_url) for entry in entries]
            now_ms = time.time() * 1000
            for entry in entries:
                sent_ms = sent_timestamp_ms(entry)
                if sent_ms is not None:
                    self._age.observe(max(0.0, now_ms - sent_ms) / 1000)
            if self.stopping.is_set():
                await self._give_back([m for m, _ in items], sent)
                return
            for group in group_entries(items, self.settings.is_fifo):
                self._dispatch(work, group, sent)

    async def _give_back(self, messages: list[Message], received_at: float) -> None:
        log.info(
            "giving back messages received while stopping",
            extra={"event": "give_back", "count": len(messages)},
        )
        try:
            leases = [self.processor.lease(received_at) for _ in messages]
            await self.processor.give_back(messages, leases, self.processor.handback_seconds)
        finally:
            self.slots.release(len(messages))
