"""On-success and on-failure destinations: best-effort delivery of destination records, off the hot path.

``DestinationSink.submit`` only puts the outcome on a bounded in-memory stream (when it is full the
outcome is dropped and counted); a small pool of delivery tasks builds the record and sends it to
every destination of its list, each with bounded, jittered retries and a per-attempt timeout. A
destination outage therefore never re-runs the handler, never blocks the consumer and never delays
the delete: the message has already left the source queue when its outcome is submitted.

S3 destinations are written first when another destination of the same list needs the record cut
to its size limit, so the cut record can point at the complete one (``"fullRecord": "s3://..."``).
At shutdown (the sink's task cancelled) what is queued gets a short shielded grace to flush; what is
left after it is dropped and counted.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
from aiobotocore.config import AioConfig
from anyio.abc import ObjectReceiveStream, TaskStatus
from botocore.exceptions import ClientError

from worker.aws.client import CALL_ERRORS, create_client, error_code
from worker.destinations.record import DestinationRecord, build_record, fit_record, s3_key
from worker.destinations.uri import DestinationUri, parse_destination
from worker.engine.handler import import_object
from worker.engine.outcome import NullSink, Outcome, OutcomeSink
from worker.errors import ConfigError
from worker.limits import EVENTS_MAX_BYTES, EVENTS_TIME_BYTES, SNS_MAX_BYTES, SQS_MAX_MESSAGE_BYTES
from worker.settings import Settings, env_name
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.destinations")

#: Outcomes waiting for delivery; beyond this, new ones are dropped (and counted).
QUEUE_CAPACITY = 10_000
#: Concurrent delivery tasks (each handles one outcome, fanning out to its destinations).
DELIVERY_TASKS = 4
#: At shutdown, seconds given to what is queued before it is dropped.
SHUTDOWN_GRACE_SECONDS = 3.0
#: Backoff between attempts: ~BASE * 2^n, jittered, capped.
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
#: At shutdown, seconds given to the clients to close.
CLIENT_CLOSE_SECONDS = 2.0
#: Threads available to synchronous Python hooks.
HOOK_THREADS = 8
#: EventBridge event fields.
EVENT_SOURCE = "worker"
DETAIL_TYPE_SUCCESS = "Worker Invocation Result - Success"
DETAIL_TYPE_FAILURE = "Worker Invocation Result - Failure"
#: Error codes (or HTTP statuses) that another attempt may cure; other client errors are final.
_RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottlingException",
    }
)
#: GetQueueUrl codes meaning the queue does not exist.
_NO_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class DeliveryError(Exception):
    """One delivery attempt failed with ``code``; ``retryable`` says whether another may help."""

    def __init__(self, code: str, *, retryable: bool = True) -> None:
        super().__init__(code)
        self.code = code
        self.retryable = retryable


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: throttling, 5xx and transport errors, not 4xx errors."""
    if isinstance(exc, DeliveryError):
        return exc.retryable
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _RETRYABLE_CODES or status >= 500 or status == 429
    return True


def backoff(retry: int, jitter: float) -> float:
    """Delay before the ``retry``-th retry (1-based): 0.2 s * 2^(retry-1), jittered by 0.5-1.5, capped."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (retry - 1) * (0.5 + jitter))


# -- destinations --


class Destination:
    """One configured destination: ``deliver`` sends a record once (the sink retries)."""

    #: Largest record in bytes the service takes, or None (no limit: S3, Python hooks).
    limit: int | None = None
    #: Whether failed attempts are retried (Python hooks are not: their errors are bugs, not outages).
    retries: bool = True

    def __init__(self, uri: DestinationUri) -> None:
        self.uri = uri
        self.label = uri.label

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Send ``record`` (cut to ``limit``, pointing at ``full_record``); return where it was stored."""
        raise NotImplementedError

    def payload(self, record: DestinationRecord, full_record: str | None) -> str:
        """The record's JSON, cut to this destination's limit."""
        if self.limit is None:
            return record.to_json()
        try:
            return fit_record(record, self.limit, full_record=full_record).to_json()
        except ValueError:
            raise DeliveryError("RecordTooLarge", retryable=False) from None

    async def prepare(self, variable: str, budget: float) -> None:
        """Start-up work (resolve names); a ConfigError names ``variable``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


class SqsDestination(Destination):
    """SendMessage to a queue; ``sqs://name`` and ARNs are resolved with GetQueueUrl (once)."""

    limit = SQS_MAX_MESSAGE_BYTES

    def __init__(self, uri: DestinationUri, client: Any) -> None:
        super().__init__(uri)
        self._client = client
        self._url: str | None = uri.target if uri.target.lower().startswith(("https://", "http://")) else None

    @property
    def queue_url(self) -> str | None:
        """The resolved queue URL, or None until resolved."""
        return self._url

    async def resolve(self) -> str:
        """The queue URL (GetQueueUrl for names and ARNs, cached)."""
        if self._url is None:
            kwargs: dict[str, str] = {"QueueName": self.uri.name}
            if self.uri.target.startswith("arn:"):
                kwargs["QueueOwnerAWSAccountId"] = self.uri.target.split(":")[4]
            response = await self._client.get_queue_url(**kwargs)
            self._url = str(response["QueueUrl"])
        return self._url

    async def prepare(self, variable: str, budget: float) -> None:
        """Resolve the URL now; a missing queue is a configuration error, an outage is retried later."""
        if self._url is not None:
            return
        with anyio.move_on_after(budget):
            try:
                await self.resolve()
            except CALL_ERRORS as exc:
                if error_code(exc) in _NO_QUEUE:
                    raise ConfigError(f"{variable}: queue {self.uri.name!r} does not exist") from None
                log.warning(
                    "cannot resolve destination queue yet; will retry on first delivery",
                    extra={
                        "event": "destination_unresolved",
                        "destination": self.label,
                        "error": error_code(exc),
                    },
                )
            return
        log.warning(
            "resolving destination queue timed out; will retry on first delivery",
            extra={"event": "destination_unresolved", "destination": self.label, "error": "Timeout"},
        )

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """SendMessage (FIFO: grouped by the source group, deduplicated by message and condition)."""
        url = await self.resolve()
        request: dict[str, Any] = {"QueueUrl": url, "MessageBody": self.payload(record, full_record)}
        if self.uri.is_fifo:
            request["MessageGroupId"] = record.worker.group_id or record.message_id
            request["MessageDeduplicationId"] = _dedup_id(record)
        await self._client.send_message(**request)
        return None


class SnsDestination(Destination):
    """Publish to a topic."""

    limit = SNS_MAX_BYTES

    def __init__(self, uri: DestinationUri, client: Any) -> None:
        super().__init__(uri)
        self._client = client

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Publish (FIFO topics: grouped by the source group, deduplicated by message and condition)."""
        request: dict[str, Any] = {"TopicArn": self.uri.target, "Message": self.payload(record, full_record)}
        if self.uri.is_fifo:
            request["MessageGroupId"] = record.worker.group_id or record.message_id
            request["MessageDeduplicationId"] = _dedup_id(record)
        await self._client.publish(**request)
        return None


class S3Destination(Destination):
    """One object per record: ``prefix/YYYY/MM/DD/<condition>/<message id>.json``, never cut."""

    def __init__(self, uri: DestinationUri, client: Any) -> None:
        super().__init__(uri)
        self._client = client

    def key(self, record: DestinationRecord) -> str:
        """The object key of a record."""
        return s3_key(record, self.uri.prefix)

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """PutObject the complete record; return its ``s3://bucket/key``."""
        key = self.key(record)
        await self._client.put_object(
            Bucket=self.uri.target, Key=key, Body=record.to_json().encode(), ContentType="application/json"
        )
        return f"s3://{self.uri.target}/{key}"


class EventsDestination(Destination):
    """PutEvents on a bus: Source ``worker``, DetailType ``Worker Invocation Result - Success|Failure``."""

    limit = EVENTS_MAX_BYTES - EVENTS_TIME_BYTES - len(EVENT_SOURCE) - len(DETAIL_TYPE_FAILURE)

    def __init__(self, uri: DestinationUri, client: Any) -> None:
        super().__init__(uri)
        self._client = client

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """PutEvents with the record as Detail; a failed entry is a failed attempt."""
        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": DETAIL_TYPE_SUCCESS if record.succeeded else DETAIL_TYPE_FAILURE,
            "Detail": self.payload(record, full_record),
            "EventBusName": self.uri.target,
        }
        response = await self._client.put_events(Entries=[entry])
        if response.get("FailedEntryCount"):
            failed = (response.get("Entries") or [{}])[0]
            code = str(failed.get("ErrorCode") or "FailedEntry")
            raise DeliveryError(code, retryable=code in _RETRYABLE_CODES or "Internal" in code)
        return None


class PythonDestination(Destination):
    """An in-process hook ``fn(record)``, sync (in a thread) or async; its exceptions are contained."""

    retries = False

    def __init__(self, uri: DestinationUri, fn: Callable[[DestinationRecord], Any], limiter: Any) -> None:
        super().__init__(uri)
        self._fn = fn
        self._limiter = limiter
        target = fn if inspect.isroutine(fn) or inspect.isclass(fn) else getattr(fn, "__call__", fn)  # noqa: B004
        self._is_async = inspect.iscoroutinefunction(target)

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Call the hook with the complete frozen record; any exception fails the delivery."""
        try:
            if self._is_async:
                await self._fn(record)
            else:
                result = await anyio.to_thread.run_sync(
                    self._fn, record, abandon_on_cancel=True, limiter=self._limiter
                )
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            raise DeliveryError(type(exc).__name__, retryable=False) from exc
        return None


def _dedup_id(record: DestinationRecord) -> str:
    return f"{record.message_id}-{record.condition}"[:128]


# -- the sink --


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
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](capacity)
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
                self._send.send_nowait(outcome)
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
        try:
            async with anyio.create_task_group() as tg:
                pool: anyio.CancelScope = await tg.start(self._pool)
                task_status.started(self)
                try:
                    await anyio.sleep_forever()
                finally:
                    # No more submissions; the (shielded) pool drains the queue until the grace ends.
                    self._send.close()
                    pool.deadline = min(pool.deadline, anyio.current_time() + self.shutdown_grace)
        finally:
            self._send.close()
            self._drop_leftovers()

    def _drop_leftovers(self) -> None:
        dropped = 0
        while True:
            try:
                outcome = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            self._count_all(self.destinations_for(outcome), "dropped")
            dropped += 1
        self._receive.close()
        if dropped:
            log.warning(
                f"{dropped} destination outcome(s) dropped at shutdown",
                extra={"event": "destination_dropped", "dropped": dropped, "error": "shutdown"},
            )

    async def _pool(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope(shield=True) as scope:
            task_status.started(scope)
            async with anyio.create_task_group() as tg:
                for _ in range(self.tasks):
                    tg.start_soon(self._deliverer, self._receive.clone())

    async def _deliverer(self, receive: ObjectReceiveStream[Outcome]) -> None:
        async with receive:
            async for outcome in receive:
                await self.deliver(outcome)

    async def deliver(self, outcome: Outcome) -> None:
        """Build the record and send it to every destination of its list; never raises (but Cancelled)."""
        destinations = self.destinations_for(outcome)
        settled: set[int] = set()
        try:
            try:
                record = build_record(outcome)
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

    async def _deliver_one(
        self, destination: Destination, record: DestinationRecord, full_record: str | None
    ) -> str | None:
        """Up to ``attempts`` tries, each under ``timeout``; counts ok or failed; returns the location."""
        attempts = self.attempts if destination.retries else 1
        code = "Unknown"
        made = 0
        for attempt in range(attempts):
            if attempt:
                await anyio.sleep(backoff(attempt, self._jitter()))
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


# -- wiring --


def destination_client_config(timeout: float) -> AioConfig:
    """Destination clients: one attempt per call (the sink retries), timeouts within the delivery's."""
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=min(5.0, timeout),
        read_timeout=timeout,
        max_pool_connections=DELIVERY_TASKS * 8,
    )


async def open_destinations(
    settings: Settings, stack: AsyncExitStack, *, endpoints: Mapping[str, str] | None = None
) -> tuple[list[Destination], list[Destination]]:
    """Parse both lists, open the clients in use (on ``stack``), import hooks, resolve queue names."""
    lists = {"on_success": settings.on_success, "on_failure": settings.on_failure}
    parsed = {field: [parse_destination(uri) for uri in uris] for field, uris in lists.items()}
    kinds = {uri.kind for uris in parsed.values() for uri in uris}
    config = destination_client_config(settings.destination_timeout_seconds)
    clients: dict[str, Any] = {}
    for kind in sorted(kinds - {"python"}):
        endpoint = (endpoints or {}).get(kind)
        clients[kind] = await stack.enter_async_context(create_client(kind, config, endpoint_url=endpoint))
    limiter = anyio.CapacityLimiter(HOOK_THREADS)
    made: dict[str, Destination] = {}
    result: dict[str, list[Destination]] = {}
    for field, uris in parsed.items():
        variable = env_name(field)
        result[field] = []
        for uri in uris:
            if uri.uri not in made:
                made[uri.uri] = _make(uri, clients, limiter, variable)
                await made[uri.uri].prepare(variable, settings.destination_timeout_seconds)
            result[field].append(made[uri.uri])
    return result["on_success"], result["on_failure"]


def _make(uri: DestinationUri, clients: Mapping[str, Any], limiter: Any, variable: str) -> Destination:
    if uri.kind == "python":
        fn = import_object(uri.target, variable)
        if not callable(fn):
            raise ConfigError(f"{variable}: {uri.target!r} is not callable")
        return PythonDestination(uri, fn, limiter)
    kinds: dict[str, type[SqsDestination | SnsDestination | S3Destination | EventsDestination]] = {
        "sqs": SqsDestination,
        "sns": SnsDestination,
        "s3": S3Destination,
        "events": EventsDestination,
    }
    return kinds[uri.kind](uri, clients[uri.kind])


async def build_sink(
    settings: Settings,
    metrics: Metrics,
    *,
    task_status: TaskStatus[OutcomeSink] = anyio.TASK_STATUS_IGNORED,
    endpoints: Mapping[str, str] | None = None,
) -> None:
    """Start delivering outcomes to the configured destinations; report the sink; run until cancelled.

    ``endpoints`` overrides the endpoint URL per kind (``{"sns": "http://127.0.0.1:1234"}``), for tests.
    With no destination configured the sink is a NullSink.
    """
    if not settings.on_success and not settings.on_failure:
        task_status.started(NullSink())
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
