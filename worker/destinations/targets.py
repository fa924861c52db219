"""Destination targets: SQS, SNS, S3, EventBridge and Python hooks, each sending one record per attempt.

The sink (``sink.py``) retries; a target only says whether another attempt may help (``DeliveryError``,
``retryable``). ``open_destinations`` turns the two settings lists into targets with their clients open.
With WORKER_EXTENDED_PAYLOADS__BUCKET set, an SQS or SNS record above the service's limit is not cut: it
is stored in S3 and the message carries an extended-client ``PayloadS3Pointer`` (docs/large-payloads.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from worker.aws.client import CALL_ERRORS, create_client, error_code
from worker.aws.queues import lookup_queue_url
from worker.destinations.record import DestinationRecord, fit_record, s3_key
from worker.destinations.uri import DestinationUri, parse_destination
from worker.engine.handler import UserCallable, import_callable
from worker.engine.payload_pointer import size_attribute
from worker.engine.payloads import PayloadOffload, PayloadStore
from worker.errors import ConfigError
from worker.limits import EVENTS_MAX_BYTES, EVENTS_TIME_BYTES, SNS_MAX_BYTES, SQS_MAX_MESSAGE_BYTES
from worker.settings import Settings, env_name
from worker.traces import AWS_TRACE_HEADER, xray_header

if TYPE_CHECKING:
    from types_aiobotocore_events.client import EventBridgeClient
    from types_aiobotocore_events.type_defs import PutEventsRequestEntryTypeDef
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_sns.client import SNSClient
    from types_aiobotocore_sqs.client import SQSClient

log = logging.getLogger("worker.destinations")

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


class OffloadingDestination(Destination):
    """A destination with a message size limit that, given an offload, stores larger records in S3."""

    #: The service's limit on one message (body and attributes), in bytes.
    service_limit: int

    def __init__(self, uri: DestinationUri, offload: PayloadOffload | None = None) -> None:
        super().__init__(uri)
        self.offload = offload
        self.limit = None if offload is not None else self.service_limit  # with an offload nothing is cut

    async def message(
        self, record: DestinationRecord, full_record: str | None
    ) -> tuple[str, dict[str, dict[str, str]]]:
        """The message body and attributes: the record (cut to ``limit`` without an offload), or, when it
        exceeds the service limit, a pointer to its copy in S3 (stored first) and ``ExtendedPayloadSize``."""
        text = self.payload(record, full_record)
        if self.offload is None or len(text) <= self.service_limit:  # ASCII JSON: one byte per character
            return text, {}
        pointer = self.offload.pointer("records", s3_key(record))  # one key per record: retries rewrite it
        await self.offload.put(pointer, text.encode())
        size = size_attribute(len(text))
        return pointer.to_body(), {
            name: {"DataType": a.data_type, "StringValue": str(a.value)} for name, a in size.items()
        }


class SqsDestination(OffloadingDestination):
    """SendMessage to a queue; ``sqs://name`` and ARNs are resolved with GetQueueUrl (once)."""

    service_limit = SQS_MAX_MESSAGE_BYTES

    def __init__(self, uri: DestinationUri, client: SQSClient, offload: PayloadOffload | None = None) -> None:
        super().__init__(uri, offload)
        self._client = client
        self._url: str | None = uri.target if uri.target.lower().startswith(("https://", "http://")) else None

    @property
    def queue_url(self) -> str | None:
        """The resolved queue URL, or None until resolved."""
        return self._url

    async def resolve(self) -> str:
        """The queue URL (GetQueueUrl for names and ARNs, cached)."""
        if self._url is None:
            self._url = await lookup_queue_url(self._client, self.uri.target)
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
        body, attributes = await self.message(record, full_record)
        request: dict[str, Any] = {"QueueUrl": url, "MessageBody": body}
        if attributes:
            request["MessageAttributes"] = attributes
        if record.worker.trace is not None:  # the record's consumer continues the trace (docs/tracing.md)
            header = {"DataType": "String", "StringValue": xray_header(record.worker.trace)}
            request["MessageSystemAttributes"] = {AWS_TRACE_HEADER: header}
        if self.uri.is_fifo:
            request["MessageGroupId"] = record.worker.group_id or record.message_id
            request["MessageDeduplicationId"] = _dedup_id(record)
        await self._client.send_message(**request)
        return None


class SnsDestination(OffloadingDestination):
    """Publish to a topic."""

    service_limit = SNS_MAX_BYTES

    def __init__(self, uri: DestinationUri, client: SNSClient, offload: PayloadOffload | None = None) -> None:
        super().__init__(uri, offload)
        self._client = client

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Publish (FIFO topics: grouped by the source group, deduplicated by message and condition)."""
        body, attributes = await self.message(record, full_record)
        request: dict[str, Any] = {"TopicArn": self.uri.target, "Message": body}
        if attributes:
            request["MessageAttributes"] = attributes
        if self.uri.is_fifo:
            request["MessageGroupId"] = record.worker.group_id or record.message_id
            request["MessageDeduplicationId"] = _dedup_id(record)
        await self._client.publish(**request)
        return None


class S3Destination(Destination):
    """One object per record: ``prefix/YYYY/MM/DD/<condition>/<message id>.json``, never cut."""

    def __init__(self, uri: DestinationUri, client: S3Client) -> None:
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

    def __init__(self, uri: DestinationUri, client: EventBridgeClient) -> None:
        super().__init__(uri)
        self._client = client

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """PutEvents with the record as Detail; a failed entry is a failed attempt."""
        entry: PutEventsRequestEntryTypeDef = {
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

    def __init__(self, uri: DestinationUri, hook: UserCallable, limiter: anyio.CapacityLimiter) -> None:
        super().__init__(uri)
        self._hook = hook
        self._limiter = limiter

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Call the hook with the complete frozen record; any exception fails the delivery."""
        try:
            await self._hook.call(record, self._limiter)
        except Exception as exc:
            raise DeliveryError(type(exc).__name__, retryable=False) from exc
        return None


def _dedup_id(record: DestinationRecord) -> str:
    return f"{record.message_id}-{record.condition}"[:128]


def destination_client_config(timeout: float) -> AioConfig:
    """Destination clients: one attempt per call (the sink retries), timeouts within the delivery's."""
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=min(5.0, timeout),
        read_timeout=timeout,
        max_pool_connections=32,  # 4 delivery tasks x 8 calls each at most
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
    offload = None
    if settings.extended_payloads.bucket is not None and kinds & {"sqs", "sns"}:
        store = PayloadStore(
            endpoint_url=(endpoints or {}).get("s3"), pool=8, timeout=settings.destination_timeout_seconds
        )
        stack.push_async_callback(store.aclose)  # its client opens with the first oversized record
        offload = PayloadOffload.for_settings(settings.extended_payloads, store)
    made: dict[str, Destination] = {}
    result: dict[str, list[Destination]] = {}
    for field, uris in parsed.items():
        variable = env_name(field)
        result[field] = []
        for uri in uris:
            if uri.uri not in made:
                made[uri.uri] = _make(uri, clients, limiter, variable, offload)
                await made[uri.uri].prepare(variable, settings.destination_timeout_seconds)
            result[field].append(made[uri.uri])
    return result["on_success"], result["on_failure"]


def _make(
    uri: DestinationUri,
    clients: Mapping[str, Any],
    limiter: anyio.CapacityLimiter,
    variable: str,
    offload: PayloadOffload | None = None,
) -> Destination:
    if uri.kind == "python":
        return PythonDestination(uri, import_callable(uri.target, variable), limiter)
    if uri.kind == "sqs":
        return SqsDestination(uri, clients["sqs"], offload)
    if uri.kind == "sns":
        return SnsDestination(uri, clients["sns"], offload)
    kinds: dict[str, type[S3Destination | EventsDestination]] = {
        "s3": S3Destination,
        "events": EventsDestination,
    }
    return kinds[uri.kind](uri, clients[uri.kind])
