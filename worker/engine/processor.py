"""One message's life in the worker: run the handler under its deadline, apply the policy, act on it.

Order of effects is the no-loss contract: a message is deleted only after its successor state is
durable (the DLQ send acknowledged), and never deleted or released once its lease is lost.
"""

from __future__ import annotations

import logging
import math
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
from worker.engine.batch_runner import run_batch
from worker.engine.breaker_gate import BreakerGate
from worker.engine.failure import Failure, describe_failure, load_permanent_errors, log_failure
from worker.engine.group_runner import run_group
from worker.engine.handbacks import HandBacks
from worker.engine.handler import LoadedHandler
from worker.engine.invoker import Call, Invoked, Invoker
from worker.engine.lease import Heartbeats, Lease
from worker.engine.message import Message
from worker.engine.middleware import Invocation, Middleware
from worker.engine.outcome import Outcome, OutcomeSink
from worker.engine.policy import Condition, RetryConfig
from worker.errors import DecodeError, RetryLater
from worker.settings import Settings
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.processor")


#: Dead-letters that failed to send, remembered so the next delivery skips the handler (bounded).
PENDING_DEAD_LETTERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """A final decision for one message and the attempts it counts (records carry them)."""

    decision: policy.Ack | policy.RetryAfter | policy.DeadLetter
    attempts: int

    def not_before(self, seconds: int) -> Verdict:
        """This verdict, with a retry delayed to ``seconds`` at least."""
        if isinstance(self.decision, policy.RetryAfter) and self.decision.seconds < seconds:
            return Verdict(policy.RetryAfter(seconds), self.attempts)
        return self


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
        middleware: Sequence[Middleware] = (),
        gate: BreakerGate | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.deleter = deleter
        self.visibility = visibility
        self.dead_letters = dead_letters
        self.sink = sink
        #: The circuit breakers (None: WORKER_BREAKER__ENABLED=false).
        self.gate = gate
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
        self.invoker = Invoker(
            Invocation((), self.queue, handler.path, settings.handler_version),
            timeout=settings.timeout_seconds,
            permanent=self.permanent,
            middleware=middleware,
            durations=metrics.handler_duration.labels(*labels),
            timeouts=metrics.handler_timeouts.labels(*labels),
        )
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

    async def run(
        self,
        items: Sequence[tuple[Message, DecodeError | None]],
        received_at: float,
        release: Callable[[int], None],
    ) -> None:
        """Process what the consumer dispatched: a receive for a batch handler, else a group."""
        if self.handler.batch:
            await run_batch(self, items, received_at, release)
        else:
            await run_group(self, items, received_at, release)

    def lease(self, received_at: float) -> Lease:
        """A fresh lease for a message received by a call sent at ``received_at``."""
        return Lease.start(received_at, self.settings.visibility_timeout_seconds)

    async def give_back(self, items: Sequence[Message], leases: Sequence[Lease], seconds: int = 0) -> None:
        """Release messages unprocessed (shutdown, prefetch): visibility ``seconds``."""
        async with anyio.create_task_group() as tg:
            for message, lease in zip(items, leases, strict=True):
                tg.start_soon(self.hand_back, message, lease, seconds)

    async def before_handler(
        self, message: Message, decode_error: DecodeError | None, lease: Lease
    ) -> Disposition | None:
        """Dead-letter a message that must not reach the handler (undecodable, or a DLQ send to redo)."""
        pending = self._pending.pop(message.id, None)
        if pending is not None:
            condition, failure, attempts = pending
            return await self._dead_letter(message, lease, condition, failure, attempts)
        if decode_error is not None:
            failure = Failure(type(decode_error).__name__, str(decode_error), decode_error)
            return await self._dead_letter(message, lease, Condition.DECODE_ERROR, failure, 0)
        return None

    def first_sent(self, message: Message) -> datetime | None:
        """Only with an age cap: the message's first send, kept through redrives by the failure record."""
        return message_first_sent(message) if self.retry.max_message_age_seconds is not None else None

    def decide(
        self,
        message: Message,
        lease: Lease,
        invoked: Invoked,
        immediate: int,
        handed_back: int,
        first_sent: datetime | None,
    ) -> Verdict | None:
        """The policy's decision after one invocation; None (counted and logged) for an immediate retry."""
        outcome, _, error = invoked
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
        if isinstance(decision, policy.RetryNow):
            self._processed["retried"].inc()
            self.metrics.retries.labels(self.queue, "immediate").inc()
            log_failure(message, self.settings.log_bodies, outcome, error, "retry_now")
            return None
        attempts = policy.attempts_made(message.receive_count, immediate, self.retry, handed_back)
        return Verdict(decision, attempts)

    async def act(
        self,
        message: Message,
        lease: Lease,
        invoked: Invoked,
        verdict: Verdict,
        *,
        settle: Callable[[], None] | None = None,
    ) -> Disposition:
        """Carry out a final decision: delete (success), release with a delay, or dead-letter."""
        outcome, response, error = invoked
        decision, attempts = verdict.decision, verdict.attempts
        if isinstance(decision, policy.Ack):
            if self.handbacks.count(message.id):
                self.handbacks.forget(message.id)  # leaving the queue: nothing more to count
            self._processed["succeeded"].inc()
            if settle is not None and lease.held():
                self.deleter.submit_nowait(
                    {"ReceiptHandle": message.receipt_handle},
                    partial(self._deleted, message, attempts, response, settle),
                )
                return Disposition(finished=True, settle_pending=True)
            deleted = await self._delete(message, lease)
            self._emit(message, Condition.SUCCESS, attempts, response=response, deleted=deleted)
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

    async def invoke(self, messages: tuple[Message, ...], call: Call) -> Invoked:
        """One handler call (``call()``) through the middleware, under the deadline: how it ended."""
        return await self.invoker.invoke(messages, call)

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
        deleted = await self._delete(message, lease)
        self._emit(message, condition, attempts, failure=failure, deleted=deleted)
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
        self._emit(message, Condition.SUCCESS, attempts, response=response, deleted=error is None)
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

    async def breaker_hand_back(
        self, message: Message, lease: Lease, dependency: str, retry_in: float
    ) -> Disposition:
        """Give back a message a breaker keeps from running (or that failed as it opened): no attempt."""
        seconds = max(1, math.ceil(retry_in))
        self.metrics.retries.labels(self.queue, "breaker").inc()
        log.info(
            "circuit open: message handed back",
            extra={
                "event": "breaker_hand_back",
                "message_id": message.id,
                "dependency": dependency,
                "seconds": seconds,
            },
        )
        released = await self.hand_back(message, lease, seconds)
        return Disposition(finished=False, give_back=seconds if released else None)

    async def hand_back(self, message: Message, lease: Lease, seconds: int) -> bool:
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
        deleted: bool = True,
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
                deleted=deleted,
            )
        )
