"""The consume loop: pollers that receive only as many messages as there are free slots, the message
tasks, and the shutdown order (stop polling, give back what arrives, drain in-flight, flush batches).

How each receive waits, what visibility it asks for and how many pollers run is decided in pollers.py;
parked receives (idle queue) are cancelled at stop, busy ones are awaited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup

from worker import clock
from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.queues import receive
from worker.backoff import Backoff
from worker.engine.message import Message, parse_or_fallback, sent_timestamp_ms
from worker.engine.pollers import PARKED_VISIBILITY, PollPlan, next_pollers, plan_poll, pollers_bound
from worker.engine.processor import Processor
from worker.engine.slots import Slots
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


def group_entries(
    items: Sequence[tuple[Message, Any]], fifo: bool, batch: bool = False
) -> list[list[tuple[Message, Any]]]:
    """Standard queues: one group per message. FIFO: one group per MessageGroupId, receive order kept.

    For a batch handler the whole receive is one group (its FIFO groups are kept apart by the batch runner).
    """
    if batch:
        return [list(items)]
    if not fifo:
        return [[item] for item in items]
    groups: dict[str, list[tuple[Message, Any]]] = {}
    for item in items:
        groups.setdefault(item[0].group_id or "", []).append(item)
    return list(groups.values())


class ReceiveHold(Protocol):
    """Something that may keep the pollers from receiving for a while (breakers, blue/green standby)."""

    async def wait_until_receiving(self, stopping: anyio.Event, turned: Callable[[], None]) -> None:
        """Return once receiving may go on (or ``stopping`` is set); call ``turned()`` while holding."""


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
        #: Set by the first receive that comes back empty with no message held and no other receive out that
        #: expects messages (a first receive, or one after a receive that brought some): the queue was
        #: drained once. An empty first poll beside the one that brought the backlog is not that.
        self.quiet = anyio.Event()
        #: Most pollers, how many should run, and the indices of those running.
        self._bound = pollers_bound(settings.concurrency, settings.pollers)
        self._auto = settings.pollers is None
        # Automatic sizing starts at the bound: a worker started on a backlog (a scale-up from zero) polls at
        # full width from its first receives; on an idle queue its first short polls come back empty and the
        # pollers drop to one within a round trip each.
        self._target = self._bound
        self._running: set[int] = set()
        self._pollers_gauge = metrics.pollers.labels(self.queue)
        #: Cancel scopes of the parked receives in flight: stop() cancels them.
        self._parked: set[anyio.CancelScope] = set()
        #: Receives still open on SQS's side (in flight, or cancelled and not yet at the end of their wait):
        #: when each ends at the latest. What the drain hands back stays hidden until they have ended.
        self._open: dict[object, float] = {}
        #: Receives not yet answered: the slots each reserved, and whether it expects messages.
        self._asking: dict[object, tuple[int, bool]] = {}
        processor.releases.receives_open_until = lambda: max(self._open.values(), default=0.0)
        #: What may hold the pollers before each receive: the breakers (when they pause receiving) and more.
        self.holds: list[ReceiveHold] = [processor.gate] if processor.gate is not None else []
        #: Runners waiting for their next group (LIFO), and whether they may wait any more.
        self._idle: list[_Runner] = []
        self._retired = False
        self._received = metrics.received.labels(self.queue)
        self._age = metrics.message_age.labels(self.queue)
        self._last_poll = metrics.last_poll_success.labels(self.queue)
        metrics.concurrency_limit.labels(self.queue).set(settings.concurrency)

    def cancel_parked(self) -> None:
        """Cancel the parked receives in flight (what SQS still hands them is back within seconds)."""
        for scope in self._parked:
            scope.cancel()

    def stop(self) -> None:
        """Stop polling: parked receives are cancelled (what SQS still hands them comes back within
        PARKED_VISIBILITY seconds); busy ones still return and what they bring is given back."""
        self.stopping.set()
        self.cancel_parked()
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
                for _ in range(self._target):
                    self._start_poller(pollers, work, first=True)
            self._retire_idle_runners()  # no more groups will come: idle runners end

    @property
    def pollers(self) -> int:
        """Pollers running now."""
        return len(self._running)

    def _start_poller(self, pollers: TaskGroup, work: TaskGroup, *, first: bool = False) -> None:
        """Start a poller; ``first``: one of the worker's first, which begins with a short poll."""
        index = min(set(range(len(self._running) + 1)) - self._running)
        self._running.add(index)
        self._pollers_gauge.set(len(self._running))
        pollers.start_soon(self._poll, pollers, work, index, first)

    def _resize(self, pollers: TaskGroup, work: TaskGroup, *, asked: int, got: int) -> bool:
        """After a receive: start a poller or ask this one to end (True) as next_pollers() decides."""
        if not self._auto or self.stopping.is_set():
            return False
        self._target = next_pollers(
            self._target, bound=self._bound, asked=asked, got=got, free=self.slots.free
        )
        if len(self._running) < self._target:
            self._start_poller(pollers, work)
        return len(self._running) > self._target

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
                await self.processor.run(*item, self.slots.release)
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

    async def _poll(self, pollers: TaskGroup, work: TaskGroup, index: int, first: bool) -> None:
        try:
            await self._poll_loop(pollers, work, index, first)
        finally:
            self._running.discard(index)
            self.health.poll_ended(index)
            self._pollers_gauge.set(len(self._running))

    async def _poll_loop(self, pollers: TaskGroup, work: TaskGroup, index: int, first: bool) -> None:
        failures = 0
        # A poller added because receives came back full expects messages: busy from its first receive (the
        # worker's first pollers begin with a short poll instead, see plan_poll). Once one is empty, it parks.
        busy = True
        while not self.stopping.is_set():
            for hold in self.holds:  # an open breaker (no route), a blue/green standby
                await hold.wait_until_receiving(self.stopping, self.health.turned)
            wanted = await self.slots.reserve(SQS_BATCH_MAX, self.health)
            if self.stopping.is_set():
                self.slots.release(wanted)
                return
            plan = plan_poll(
                busy=busy,
                wait=self.settings.wait_time_seconds,
                visibility=self.settings.visibility_timeout_seconds,
                first=first,
            )
            expecting = busy or first
            first = False
            sent = clock.now()
            self.health.poll_begun(index, sent + plan.wait + POLL_OVERDUE_MARGIN)
            opened = object()
            self._open[opened] = sent + plan.wait  # until it answers, or until its wait ends if cancelled
            response = None
            scope = anyio.CancelScope()
            if plan.parked:
                self._parked.add(scope)
            self._asking[opened] = (wanted, expecting)
            try:
                with scope:
                    response = await receive(
                        self.client,
                        self.settings.queue_url,
                        wanted,
                        wait=plan.wait,
                        visibility=plan.visibility,
                    )
            except CALL_ERRORS as exc:
                del self._open[opened]
                self.health.poll_ended(index)
                self.slots.release(wanted)
                failures += 1
                busy = False
                with anyio.move_on_after(self._receive_failed(exc, failures, index)):
                    await self.stopping.wait()
                continue
            finally:
                self._parked.discard(scope)
                del self._asking[opened]
            self.health.poll_ended(index)
            if response is None:  # a parked receive cancelled by stop(): open on SQS's side until its wait
                self.slots.release(wanted)
                return
            del self._open[opened]  # it answered: closed on SQS's side too
            self._answered(response, failures)
            failures = 0
            entries = response.get("Messages", [])
            self.slots.release(wanted - len(entries))
            busy = bool(entries)
            if not entries and self._drained():
                self.quiet.set()
            leave = self._resize(pollers, work, asked=wanted, got=len(entries))
            if entries:
                await self._take(work, entries, sent, plan)
            if leave or self.stopping.is_set():
                return

    def _drained(self) -> bool:
        """No message held, and no receive out that expects messages (idle pollers' receives aside)."""
        reserved = sum(wanted for wanted, _ in self._asking.values())
        return self.slots.used == reserved and not any(expecting for _, expecting in self._asking.values())

    def _answered(self, response: Any, failures: int) -> None:
        """Count a receive's SDK retries, log a recovery after ``failures``, mark the poll healthy."""
        retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if retried:
            self.metrics.sqs_errors.labels("ReceiveMessage").inc(retried)
        if failures:
            log.info("receive recovered", extra={"event": "poll_recovered", "after_failures": failures})
        self.health.poll_succeeded()
        self._last_poll.set(time.time())

    def _receive_failed(self, exc: BaseException, failures: int, index: int) -> float:
        """Count and log a failed receive; the backoff before the next one."""
        code = error_code(exc)
        self.metrics.sqs_errors.labels("ReceiveMessage").inc()
        if code in OVER_LIMIT_CODES:
            self.health.turned()
        else:
            self.health.poll_failed(code)
        if failures in (1, 5) or failures % 20 == 0:
            log.warning(
                "receive failed; backing off",
                extra={"event": "poll_failed", "error": code, "failures": failures, "poller": index},
            )
        return POLL_BACKOFF.delay(failures + 1)

    async def _take(self, work: TaskGroup, entries: list[Any], sent: float, plan: PollPlan) -> None:
        """Dispatch what a receive brought: extended first when it was parked, given back when stopping."""
        self._received.inc(len(entries))
        items = [parse_or_fallback(entry, self.settings.queue_url) for entry in entries]
        now_ms = time.time() * 1000
        for entry in entries:
            sent_ms = sent_timestamp_ms(entry)
            if sent_ms is not None:
                self._age.observe(max(0.0, now_ms - sent_ms) / 1000)
        if not self.stopping.is_set() and plan.needs_extension(self.settings.visibility_timeout_seconds):
            items = await self._extend(items)
        if self.stopping.is_set():
            await self._give_back([m for m, _ in items], sent)
            return
        # The lease counts from the receive's send (conservative: an extension only moved the deadline later).
        for group in group_entries(items, self.settings.is_fifo, self.processor.handler.batch):
            self._dispatch(work, group, sent)

    async def _extend(self, items: list[tuple[Message, Any]]) -> list[tuple[Message, Any]]:
        """Extend a parked receive's messages to the full lease; those that fail are left to SQS."""
        lease = self.settings.visibility_timeout_seconds
        errors: list[str | None] = [None] * len(items)

        async def one(position: int, message: Message) -> None:
            entry = {"ReceiptHandle": message.receipt_handle, "VisibilityTimeout": lease}
            errors[position] = await self.processor.releases.visibility.submit(entry)

        async with anyio.create_task_group() as tg:
            for position, (message, _) in enumerate(items):
                tg.start_soon(one, position, message)
        failed = [message for (message, _), error in zip(items, errors, strict=True) if error is not None]
        if not failed:
            return items
        # Not processed here: visible again within PARKED_VISIBILITY s; not an attempt for this worker.
        for message in failed:
            self.processor.handbacks.record(message.id)
        self.slots.release(len(failed))
        log.warning(
            "could not extend received messages; left to SQS",
            extra={
                "event": "extension_failed",
                "count": len(failed),
                "error": next(error for error in errors if error is not None),
            },
        )
        kept = [item for item, error in zip(items, errors, strict=True) if error is None]
        if not self.settings.is_fifo:
            return kept
        # FIFO: a group's later messages must not run before its earlier one: they go back with it.
        blocked = {message.group_id for message in failed}
        behind = [item for item in kept if item[0].group_id in blocked]
        if behind:
            await self._give_back([m for m, _ in behind], anyio.current_time(), PARKED_VISIBILITY)
        return [item for item in kept if item[0].group_id not in blocked]

    async def _give_back(
        self, messages: list[Message], received_at: float, seconds: int | None = None
    ) -> None:
        """Hand back unprocessed messages (default: for WAIT_TIME_SECONDS + 1 s while stopping)."""
        log.info(
            "giving back messages received while stopping",
            extra={"event": "give_back", "count": len(messages)},
        )
        try:
            leases = [self.processor.lease(received_at) for _ in messages]
            wait = self.processor.releases.handback_seconds if seconds is None else seconds
            await self.processor.releases.give_back(messages, leases, wait)
        finally:
            self.slots.release(len(messages))
