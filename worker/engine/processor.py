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
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import anyio

from worker.aws.batcher import Batcher
from worker.aws.names import queue_name
from worker.deadletter.record import FAILURE_ATTRIBUTE, message_first_sent, read_failure
from worker.deadletter.writer import DeadLetterWriter
from worker.engine import policy
from worker.engine.batch_runner import run_batch
from worker.engine.breaker_gate import BreakerGate
from worker.engine.disposition import Disposition, Verdict
from worker.engine.failure import Failure, describe_failure, load_permanent_errors, log_failure
from worker.engine.group_runner import run_group
from worker.engine.handbacks import HandBacks
from worker.engine.handler import LoadedHandler
from worker.engine.invoker import Call, Invoked, VersionRun
from worker.engine.lease import Heartbeats, Lease
from worker.engine.message import Message
from worker.engine.middleware import Middleware
from worker.engine.outcome import Outcome, OutcomeSink
from worker.engine.policy import Condition, HandlerResult, RetryConfig
from worker.engine.releases import Releases
from worker.errors import DecodeError, RetryLater
from worker.settings import Settings
from worker.telemetry.metrics import Metrics
from worker.telemetry.tracing import NO_SPAN, ProcessSpan, Tracing, in_current_context
from worker.traces import from_hex

if TYPE_CHECKING:
    from worker.engine.canary import CanaryRouter, Version

log = logging.getLogger("worker.processor")


#: Dead-letters that failed to send, remembered so the next delivery skips the handler (bounded).
PENDING_DEAD_LETTERS_MAX = 10_000


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
        canary: CanaryRouter | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self.deleter = deleter
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
        self._pending: OrderedDict[str, tuple[Condition, Failure, int]] = OrderedDict()
        #: Receives this worker gave back unprocessed, per message id: they are not attempts.
        self.handbacks = HandBacks()
        #: Giving messages back: visibility changes, hand-backs, lost leases.
        self.releases = Releases(
            queue=self.queue,
            wait_time_seconds=settings.wait_time_seconds,
            canary_delay=settings.backoff_base_seconds,
            visibility=visibility,
            handbacks=self.handbacks,
            metrics=metrics,
        )
        #: The canary rollout's router (None: no canary): which version each message runs on.
        self.canary = canary
        versions = [(handler.path, settings.handler_version)]
        if canary is not None:
            versions.append((canary.candidate.handler.path, canary.candidate.version))
        #: Per handler version: its metric children and its invoker (the baseline's is WORKER_HANDLER's).
        self._versions = {
            version: VersionRun.create(
                self.metrics, self.queue, path, version, settings.timeout_seconds, self.permanent, middleware
            )
            for path, version in versions
        }
        baseline = self._versions[settings.handler_version]
        self._processed = baseline.processed
        self.invoker = baseline.invoker
        #: WORKER_TRACING: this queue's spans (None: off); after the handler and middleware were imported.
        self.tracing = Tracing.for_setting(
            settings.tracing,
            queue=self.queue,
            queue_url=settings.queue_url,
            handler=handler.path,
            handler_version=settings.handler_version,
        )
        #: Messages held by run_group(); worker_messages_in_flight reads it at each scrape.
        self.held = 0
        metrics.in_flight.labels(self.queue).set_function(lambda: self.held)
        #: Extends the leases of the messages being processed (the service runs it around the consumer).
        self.heartbeats = heartbeats

    def drain(self) -> None:
        """The worker is stopping: messages not started yet go back, out of reach of its pending polls."""
        self.releases.draining = True

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

    async def before_handler(
        self, message: Message, decode_error: DecodeError | None, lease: Lease
    ) -> Disposition | None:
        """Dead-letter a message that must not reach the handler (undecodable, or a DLQ send to redo)."""
        pending = self._pending.pop(message.id, None)
        if pending is not None:
            condition, failure, attempts = pending
            with self.span(message) as span:
                span.decided("dead_letter", {"dead_letter_condition": condition.value})
                return await self._dead_letter(message, lease, condition, failure, attempts)
        if decode_error is not None:
            failure = Failure(type(decode_error).__name__, str(decode_error), decode_error)
            with self.span(message) as span:
                span.outcome(Condition.DECODE_ERROR.value, decode_error)
                span.decided("dead_letter", {"dead_letter_condition": Condition.DECODE_ERROR.value})
                return await self._dead_letter(message, lease, Condition.DECODE_ERROR, failure, 0)
        return None

    def span(self, message: Message, immediate: int = 0, handed_back: int = 0) -> ProcessSpan:
        """The span of one call on ``message`` (``with`` it: current until it ends); NO_SPAN when off."""
        if self.tracing is None:
            return NO_SPAN
        receives = message.receive_count
        attempt = policy.attempts_made(receives, immediate, self.retry, handed_back)
        record = read_failure(message.sqs_attributes) if FAILURE_ATTRIBUTE in message.sqs_attributes else None
        if record is None:
            return self.tracing.process(message, receive_count=receives, attempt=attempt)
        return self.tracing.process(  # a redriven message: its history, and the span that dead-lettered it
            message,
            receive_count=receives,
            attempt=attempt,
            original_message_id=record.original_message_id,
            redrive_count=record.redrive_count,
            dead_lettered_by=from_hex(record.trace_id, record.span_id),
        )

    def batch_span(self, messages: Sequence[Message]) -> ProcessSpan:
        """The span of one batch handler call (``with`` it); NO_SPAN when tracing is off."""
        return NO_SPAN if self.tracing is None else self.tracing.batch(messages)

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
        if outcome is HandlerResult.SUCCESS:  # the common case: no draw, no clock (the policy acks it)
            made = policy.attempts_made(message.receive_count, immediate, self.retry, handed_back)
            return Verdict(policy.ACK, made)
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
        version: str | None = None,
    ) -> Disposition:
        """Carry out a final decision: delete (success), release with a delay, or dead-letter.

        ``version``: the handler version that ran (a canary's), for the metrics and records.
        """
        run = self._versions[version or self.settings.handler_version]
        outcome, response, error = invoked
        decision, attempts = verdict.decision, verdict.attempts
        if isinstance(decision, policy.Ack):
            if self.handbacks.count(message.id):
                self.handbacks.forget(message.id)  # leaving the queue: nothing more to count
            run.processed["succeeded"].inc()
            if settle is not None and lease.held():
                on_deleted = partial(self._deleted, message, attempts, response, settle, run)
                self.deleter.submit_nowait(  # answered in the batcher's task: in this one's trace context
                    {"ReceiptHandle": message.receipt_handle},
                    on_deleted if self.tracing is None else in_current_context(on_deleted),
                )
                return Disposition(finished=True, settle_pending=True)
            deleted = await self._delete(message, lease)
            self._emit(message, Condition.SUCCESS, attempts, response=response, deleted=deleted, run=run)
            return Disposition(finished=deleted)
        failure = describe_failure(outcome, error, self.settings.timeout_seconds)
        if isinstance(decision, policy.RetryAfter):
            run.processed["retried"].inc()
            self.metrics.retries.labels(self.queue, "delayed").inc()
            log_failure(
                message, self.settings.log_bodies, outcome, error, "retry_after", delay=decision.seconds
            )
            released = await self.releases.release(message, lease, decision.seconds)
            return Disposition(finished=False, give_back=decision.seconds if released else None)
        log_failure(message, self.settings.log_bodies, outcome, error, "dead_letter")
        return await self._dead_letter(message, lease, decision.condition, failure, attempts, run)

    async def invoke(
        self,
        messages: tuple[Message, ...],
        call: Call,
        span: ProcessSpan = NO_SPAN,
        route: Version | None = None,
    ) -> Invoked:
        """One handler call through the middleware, under the deadline: how it ended (``span`` is told).

        With ``route`` (a canary), the call is counted for its version: metrics, and the rollout's gates.
        """
        if route is None or self.canary is None:
            invoked = await self.invoker.invoke(messages, call)
        else:
            started = time.perf_counter()
            invoked = await self._versions[route.version].invoker.invoke(messages, call)
            self.canary.record(route, invoked[0], time.perf_counter() - started)
        span.outcome(invoked[0].value, invoked[2])
        return invoked

    async def _dead_letter(
        self,
        message: Message,
        lease: Lease,
        condition: Condition,
        failure: Failure,
        attempts: int,
        run: VersionRun | None = None,
    ) -> Disposition:
        if self.dead_letters is None:
            raise RuntimeError("no dead-letter queue configured")  # start-up refuses this configuration
        if not lease.held():
            self.releases.lease_lost(message, "dead_letter")
            return Disposition(finished=False)
        sent = await self.dead_letters.send(
            message,
            condition,
            failure.error_type,
            failure.error_message,
            attempts,
            handed_back=self.handbacks.count(message.id),
            version=None if run is None else (run.path, run.version),
        )
        if not sent:
            self._remember(message.id, condition, failure, attempts)
            delay = min(
                policy.backoff_delay(2, self.jitter(), self.retry), policy.visibility_cap(lease.age())
            )
            released = await self.releases.release(message, lease, delay)
            return Disposition(finished=False, give_back=delay if released else None)
        self.handbacks.forget(message.id)
        (run or self._versions[self.settings.handler_version]).processed["dead_lettered"].inc()
        self.metrics.dead_lettered.labels(self.queue, condition.value).inc()
        deleted = await self._delete(message, lease)
        self._emit(message, condition, attempts, failure=failure, deleted=deleted, run=run)
        return Disposition(finished=True)

    def _remember(self, message_id: str, condition: Condition, failure: Failure, attempts: int) -> None:
        self._pending[message_id] = (condition, failure, attempts)
        while len(self._pending) > PENDING_DEAD_LETTERS_MAX:
            self._pending.popitem(last=False)

    def _deleted(
        self,
        message: Message,
        attempts: int,
        response: object,
        settle: Callable[[], None],
        run: VersionRun,
        error: str | None,
    ) -> None:
        """A delete submitted without waiting has answered: report, then stop holding the message."""
        if error is not None:
            log.warning(
                "delete failed; the message will be delivered again",
                extra={"event": "delete_failed", "message_id": message.id, "error": error},
            )
        self._emit(message, Condition.SUCCESS, attempts, response=response, deleted=error is None, run=run)
        settle()

    async def _delete(self, message: Message, lease: Lease) -> bool:
        if not lease.held():
            self.releases.lease_lost(message, "delete")
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

    def _emit(
        self,
        message: Message,
        condition: Condition,
        attempts: int,
        *,
        response: object = None,
        failure: Failure | None = None,
        deleted: bool = True,
        run: VersionRun | None = None,
    ) -> None:
        if self.sink is None:
            return  # no destinations: nothing would look at the outcome
        self.sink.submit(
            Outcome(
                message=message,
                condition=condition,
                attempts=attempts,
                handler=self.handler.path if run is None else run.path,
                handler_version=self.settings.handler_version if run is None else run.version,
                timestamp=time.time(),
                response=response,
                error_type=failure.error_type if failure else None,
                error_message=failure.error_message if failure else None,
                deleted=deleted,
            )
        )
