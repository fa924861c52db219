"""One message's life in the worker: run the handler under its deadline, apply the policy, act on it.

Order of effects is the no-loss contract: a message is deleted only after its successor state is
durable (the DLQ send acknowledged), and never deleted or released once its lease is lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import anyio

from worker.aws.batcher import Batcher
from worker.aws.names import queue_name
from worker.deadletter.record import message_first_sent
from worker.deadletter.writer import DeadLetterWriter
from worker.engine import policy
from worker.engine.failure import Failure, classify, describe_failure, load_permanent_errors, log_failure
from worker.engine.handbacks import HandBacks
from worker.engine.handler import LoadedHandler
from worker.engine.lease import Beat, Heartbeats, Lease
from worker.engine.message import Message
from worker.engine.outcome import Outcome, OutcomeSink
from worker.engine.policy import Condition, RetryConfig
from worker.errors import DecodeError, RetryLater
from worker.settings import Settings
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.processor")

#: Dead-letters that failed to send, remembered so the next delivery skips the handler (bounded).
PENDING_DEAD_LETTERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Disposition:
    """What happened to a message; ``give_back`` is set when it went back to the queue with a delay."""

    finished: bool
    give_back: int | None = None
    #: The message is still held: a delete is in flight and will release it (run_one's ``settle``).
    settle_pending: bool = False


def _age(first_sent: datetime | None) -> float | None:
    """Seconds since ``first_sent`` by this host's clock (0 when SQS's clock is ahead), None when unknown."""
    return None if first_sent is None else max(0.0, time.time() - first_sent.timestamp())


class Processor:
    """Runs messages through the handler and applies decisions; shared by every message task."""

    def __init__(
        self,
        *,
        settings: Settings,
        handler: LoadedHandler,
        metrics: Metrics,
        deleter: Batcher,
        visibility: Batcher,
        heartbeats: Heartbeats,
        dead_letters: DeadLetterWriter | None,
        sink: OutcomeSink | None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.deleter = deleter
        self.visibility = visibility
        self.dead_letters = dead_letters
        self.sink = sink
        self.jitter = jitter
        self.queue = queue_name(settings.queue_url)
        self.retry = RetryConfig(
            max_attempts=settings.max_attempts,
            immediate_retries=settings.immediate_retries,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
            max_message_age_seconds=settings.max_message_age_seconds,
        )
        #: WORKER_PERMANENT_ERRORS, imported (start-up has checked them: this cannot fail then).
        self.permanent = load_permanent_errors(settings.permanent_errors)
        #: Set when the worker drains: messages not yet started (later ones of a FIFO group) go back.
        self.draining = False
        self._pending: OrderedDict[str, tuple[Condition, Failure, int]] = OrderedDict()
        #: Receives this worker gave back unprocessed, per message id: they are not attempts.
        self.handbacks = HandBacks()
        labels = (self.queue, handler.path, settings.handler_version)
        self._processed = {
            name: metrics.processed.labels(*labels, name)
            for name in ("succeeded", "retried", "dead_lettered")
        }
        self._duration = metrics.handler_duration.labels(*labels)
        self._timeouts = metrics.handler_timeouts.labels(*labels)
        #: Messages held by run_group(); worker_messages_in_flight reads it at each scrape.
        self.held = 0
        metrics.in_flight.labels(self.queue).set_function(lambda: self.held)
        #: Extends the leases of the messages being processed (the service runs it around the consumer).
        self.heartbeats = heartbeats

    def drain(self) -> None:
        """The worker is stopping: messages not started yet go back, out of reach of its pending polls."""
        self.draining = True

    @property
    def handback_seconds(self) -> int:
        """Visibility of messages handed back unprocessed: 0, or WAIT_TIME_SECONDS + 1 once draining."""
        # Draining, this worker's own pending long polls (wait_time_seconds at most) must not retake them.
        return self.settings.wait_time_seconds + 1 if self.draining else 0

    # -- a group of messages held together (a FIFO group from one receive, or a single message) --

    async def run_group(
        self,
        items: Sequence[tuple[Message, DecodeError | None]],
        received_at: float,
        release: Callable[[int], None],
    ) -> None:
        """Process messages in order, one at a time; after a delayed retry the rest go back with it.

        Each message has its own lease (taken at ``received_at``, the time the receive was sent) and its
        own heartbeat, running until that message is finished. ``release(n)`` is called once for each
        message when the worker no longer holds it: when it is finished or, for the group's last message
        when it succeeded, once its (batched) delete has answered, without keeping this task waiting.
        """

        def settle(count: int = 1) -> None:
            self.held -= count
            release(count)

        self.held += len(items)
        leases = [self.lease(received_at) for _ in items]
        beats: list[Beat] = []
        done = 0
        try:
            for (message, _), lease in zip(items, leases, strict=True):
                beats.append(self.heartbeats.track(lease, message.receipt_handle))
            give_back: int | None = None
            last = len(items) - 1
            for (message, decode_error), lease in zip(items, leases, strict=True):
                handed_over = False
                if give_back is None and self.draining:
                    give_back = self.handback_seconds  # draining: what has not started goes back
                if give_back is not None:
                    await self._hand_back(message, lease, give_back)
                else:
                    verdict = await self.run_one(
                        message, decode_error, lease, settle=settle if done == last else None
                    )
                    handed_over = verdict.settle_pending
                    if not verdict.finished:
                        give_back = verdict.give_back if verdict.give_back is not None else 0
                self.heartbeats.untrack(beats[done])
                done += 1  # released below, or by the pending delete
                if not handed_over:
                    settle()
        except anyio.get_cancelled_exc_class():
            # Forced stop (shutdown deadline, second signal): what is unfinished goes back at once.
            for beat in beats[done:]:
                self.heartbeats.untrack(beat)
            with anyio.move_on_after(5, shield=True):
                await self.give_back([m for m, _ in items[done:]], leases[done:], self.handback_seconds)
            raise
        finally:
            for beat in beats[done:]:
                self.heartbeats.untrack(beat)
            if done < len(items):
                settle(len(items) - done)

    def lease(self, received_at: float) -> Lease:
        """A fresh lease for a message received by a call sent at ``received_at``."""
        return Lease.start(received_at, self.settings.visibility_timeout_seconds)

    async def give_back(self, items: Sequence[Message], leases: Sequence[Lease], seconds: int = 0) -> None:
        """Release messages unprocessed (shutdown, prefetch): visibility ``seconds``."""
        async with anyio.create_task_group() as tg:
            for message, lease in zip(items, leases, strict=True):
                tg.start_soon(self._hand_back, message, lease, seconds)

    # -- one message --

    async def run_one(
        self,
        message: Message,
        decode_error: DecodeError | None,
        lease: Lease,
        *,
        settle: Callable[[], None] | None = None,
    ) -> Disposition:
        """Run one message to a verdict: acked, retried later, or dead-lettered.

        With ``settle``, a success does not wait for its delete: the verdict says ``settle_pending`` and
        ``settle()`` runs (after the on-success outcome) once the delete has answered.
        """
        pending = self._pending.pop(message.id, None)
        if pending is not None:
            condition, failure, attempts = pending
            return await self._dead_letter(message, lease, condition, failure, attempts)
        if decode_error is not None:
            failure = Failure(type(decode_error).__name__, str(decode_error), decode_error)
            return await self._dead_letter(message, lease, Condition.DECODE_ERROR, failure, 0)
        handed_back = self.handbacks.count(message.id)
        # Only with an age cap: the first send, kept through redrives by the failure record.
        first_sent = message_first_sent(message) if self.retry.max_message_age_seconds is not None else None
        immediate = 0
        while True:
            outcome, response, error = await self._invoke(message)
            attempt = policy.Attempt(
                outcome=outcome,
                receive_count=message.receive_count,
                immediate_retries_done=immediate,
                retry_later_delay=error.delay if isinstance(error, RetryLater) else None,
                seconds_since_receive=lease.age(),
                jitter=self.jitter(),
                handed_back=handed_back,
                message_age_seconds=_age(first_sent),
            )
            decision = policy.decide(attempt, self.retry)
            attempts = policy.attempts_made(message.receive_count, immediate, self.retry, handed_back)
            if isinstance(decision, policy.RetryNow):
                immediate += 1
                self._processed["retried"].inc()
                self.metrics.retries.labels(self.queue, "immediate").inc()
                log_failure(message, self.settings.log_bodies, outcome, error, "retry_now")
                continue
            break
        if isinstance(decision, policy.Ack):
            if handed_back:
                self.handbacks.forget(message.id)  # leaving the queue: nothing more to count
            self._processed["succeeded"].inc()
            if settle is not None and lease.held():
                self.deleter.submit_nowait(
                    {"ReceiptHandle": message.receipt_handle},
                    partial(self._deleted, message, attempts, response, settle),
                )
                return Disposition(finished=True, settle_pending=True)
            deleted = await self._delete(message, lease)
            self._emit(message, Condition.SUCCESS, attempts, response=response)
            return Disposition(finished=deleted)
        failure = describe_failure(outcome, error, self.settings.timeout_seconds)
        if isinstance(decision, policy.RetryAfter):
            self._processed["retried"].inc()
            self.metrics.retries.labels(self.queue, "delayed").inc()
            log_failure(
                message, self.settings.log_bodies, outcome, error, "retry_after", delay=decision.seconds
            )
            released = await self._release(message, lease, decision.seconds)
            return Disposition(finished=False, give_back=decision.seconds if released else None)
        log_failure(message, self.settings.log_bodies, outcome, error, "dead_letter")
        return await self._dead_letter(message, lease, decision.condition, failure, attempts)

    async def _invoke(self, message: Message) -> tuple[policy.HandlerResult, object, BaseException | None]:
        started = time.perf_counter()
        try:
            with anyio.move_on_after(self.settings.timeout_seconds) as scope:
                response = await self.handler.invoke(message)
        except Exception as exc:
            self._duration.observe(time.perf_counter() - started)
            return classify(exc, self.permanent), None, exc
        self._duration.observe(time.perf_counter() - started)
        if scope.cancelled_caught:
            self._timeouts.inc()
            return policy.HandlerResult.TIMEOUT, None, None
        return policy.HandlerResult.SUCCESS, response, None

    async def _dead_letter(
        self, message: Message, lease: Lease, condition: Condition, failure: Failure, attempts: int
    ) -> Disposition:
        if self.dead_letters is None:
            raise RuntimeError("no dead-letter queue configured")  # start-up refuses this configuration
        if not lease.held():
            self._lease_lost(message, "dead_letter")
            return Disposition(finished=False)
        sent = await self.dead_letters.send(
            message,
            condition,
            failure.error_type,
            failure.error_message,
            attempts,
            handed_back=self.handbacks.count(message.id),
        )
        if not sent:
            self._remember(message.id, condition, failure, attempts)
            delay = min(
                policy.backoff_delay(2, self.jitter(), self.retry), policy.visibility_cap(lease.age())
            )
            released = await self._release(message, lease, delay)
            return Disposition(finished=False, give_back=delay if released else None)
        self.handbacks.forget(message.id)
        self._processed["dead_lettered"].inc()
        self.metrics.dead_lettered.labels(self.queue, condition.value).inc()
        await self._delete(message, lease)
        self._emit(message, condition, attempts, failure=failure)
        return Disposition(finished=True)

    def _remember(self, message_id: str, condition: Condition, failure: Failure, attempts: int) -> None:
        self._pending[message_id] = (condition, failure, attempts)
        while len(self._pending) > PENDING_DEAD_LETTERS_MAX:
            self._pending.popitem(last=False)

    def _deleted(
        self, message: Message, attempts: int, response: object, settle: Callable[[], None], error: str | None
    ) -> None:
        """A delete submitted without waiting has answered: report, then stop holding the message."""
        if error is not None:
            log.warning(
                "delete failed; the message will be delivered again",
                extra={"event": "delete_failed", "message_id": message.id, "error": error},
            )
        self._emit(message, Condition.SUCCESS, attempts, response=response)
        settle()

    async def _delete(self, message: Message, lease: Lease) -> bool:
        if not lease.held():
            self._lease_lost(message, "delete")
            return False
        with anyio.CancelScope(shield=True):
            error = await self.deleter.submit({"ReceiptHandle": message.receipt_handle})
        if error is not None:
            log.warning(
                "delete failed; the message will be delivered again",
                extra={"event": "delete_failed", "message_id": message.id, "error": error},
            )
            return False
        return True

    async def _hand_back(self, message: Message, lease: Lease, seconds: int) -> bool:
        """Give back a message whose handler did not run in this delivery; its receive is no attempt."""
        # Released or not, this receive ran no handler: when the message comes back, it is no attempt.
        self.handbacks.record(message.id)
        return await self._release(message, lease, seconds)

    async def _release(self, message: Message, lease: Lease, seconds: int) -> bool:
        if not lease.held():
            self._lease_lost(message, "release")
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

    def _lease_lost(self, message: Message, action: str) -> None:
        self.metrics.heartbeats.labels(self.queue, "lease_lost").inc()
        log.warning(
            "lease lost: message left for redelivery",
            extra={"event": "lease_lost", "message_id": message.id, "action": action},
        )

    def _emit(
        self,
        message: Message,
        condition: Condition,
        attempts: int,
        *,
        response: object = None,
        failure: Failure | None = None,
    ) -> None:
        if self.sink is None:
            return  # no destinations: nothing would look at the outcome
        self.sink.submit(
            Outcome(
                message=message,
                condition=condition,
                attempts=attempts,
                handler=self.handler.path,
                handler_version=self.settings.handler_version,
                timestamp=time.time(),
                response=response,
                error_type=failure.error_type if failure else None,
                error_message=failure.error_message if failure else None,
            )
        )
