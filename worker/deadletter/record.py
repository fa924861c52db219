"""The dead-letter record: build the DLQ message (pure, SQS limits enforced here) and read it back.

The DLQ message keeps the source ``raw_body`` byte for byte and the original message attributes. The
failure metadata travels as JSON in one extra attribute, ``worker.failure``. SQS allows 10 attributes
per message: when the original already has 10, the last one by name moves into the metadata
(``displaced_attributes``) and ``restore_attributes`` puts it back, so nothing is lost. A body too large
to leave room for the metadata can be stored in S3: the copy then carries an extended-client
``PayloadS3Pointer`` and ``ExtendedPayloadSize`` instead (docs/large-payloads.md).

The copy carries the message's trace context as its ``AWSTraceHeader`` system attribute (not one of the 10
message attributes), and the record names the trace and span that dead-lettered it (docs/tracing.md).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from worker._version import __version__
from worker.engine.message import Message, MessageAttribute
from worker.engine.payload_pointer import SIZE_ATTRIBUTES, PayloadPointer, object_key, size_attribute
from worker.limits import SQS_MAX_ATTRIBUTES, SQS_MAX_MESSAGE_BYTES
from worker.timestamps import iso_utc, parse_iso
from worker.traces import AWS_TRACE_HEADER, SpanRef

log = logging.getLogger("worker.deadletter")

FAILURE_ATTRIBUTE = "worker.failure"
FORMAT_VERSION = 1
#: Fields a record leaves out when they are None (so records stay as they were without them).
_OMITTED_WHEN_NONE = ("redriven_at", "trace_id", "span_id")
#: Error messages are cut to this many characters in the record.
MAX_ERROR_CHARS = 2048


class DeadLetterTooLarge(Exception):  # noqa: N818 - a condition, not a failure of ours
    """The body and attributes leave no room for even the minimal failure metadata."""


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Failure metadata of a dead-lettered message (format version ``v``)."""

    error_type: str
    error_message: str
    condition: str
    #: Failed handler invocations (0 when none ran: decode errors); an upper bound after a first delivery.
    attempts: int
    #: SQS's ApproximateReceiveCount of the delivery that dead-lettered it (hand-backs included).
    receive_count: int
    original_message_id: str
    source_queue_url: str
    source_queue_arn: str
    handler: str
    handler_version: str
    dead_lettered_at: str
    first_received_at: str | None = None
    #: SentTimestamp of the copy that was dead-lettered (a redriven copy has its own).
    sent_at: str | None = None
    #: When the message was first sent, kept through redrives (WORKER_MAX_MESSAGE_AGE_SECONDS counts from it).
    first_sent_at: str | None = None
    worker_version: str = __version__
    redrive_count: int = 0
    #: Receives this worker handed back without running the handler (not counted in ``attempts``).
    handed_back: int = 0
    #: Set by ``worker redrive`` on the copy it sends (whose redrive_count it already raised).
    redriven_at: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    displaced_attributes: Mapping[str, Any] = field(default_factory=dict)
    #: The trace (32 hex digits) and span (16) of the processing that dead-lettered it, when traced.
    trace_id: str | None = None
    span_id: str | None = None
    v: int = FORMAT_VERSION

    def to_json(self) -> str:
        """Compact JSON, the attribute's value."""
        data = asdict(self)
        data["history"] = list(self.history)
        data["displaced_attributes"] = dict(self.displaced_attributes)
        if not data["history"]:
            del data["history"]
        if not data["displaced_attributes"]:
            del data["displaced_attributes"]
        for optional in _OMITTED_WHEN_NONE:
            if data[optional] is None:
                del data[optional]
        # ASCII-only: a lone surrogate in an error message cannot be UTF-8 encoded (and SQS rejects
        # U+FFFE/U+FFFF); escaped, the value is always sendable and reads back identical.
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True)


def failure_record(
    message: Message,
    *,
    error_type: str,
    error_message: str,
    condition: str,
    attempts: int,
    source_queue_arn: str,
    handler: str,
    handler_version: str,
    now: datetime,
    previous: FailureRecord | None = None,
    handed_back: int = 0,
    trace: SpanRef | None = None,
) -> FailureRecord:
    """The failure metadata for a message about to be dead-lettered (``trace``: the span doing it)."""
    history: tuple[dict[str, Any], ...] = ()
    redrive_count = 0
    original_id = message.id
    if previous is not None:
        prior = asdict(previous)
        prior.pop("history", None)
        prior.pop("displaced_attributes", None)
        for optional in _OMITTED_WHEN_NONE:
            if prior.get(optional) is None:
                prior.pop(optional, None)
        history = (*previous.history, prior)
        # A record on the incoming message means it was dead-lettered before and redriven since;
        # ``worker redrive`` counts its own moves (redriven_at set), other moves are counted here.
        redrive_count = previous.redrive_count + (0 if previous.redriven_at else 1)
        original_id = previous.original_message_id
    return FailureRecord(
        error_type=error_type,
        error_message=error_message[:MAX_ERROR_CHARS],
        condition=condition,
        attempts=attempts,
        receive_count=message.receive_count,
        original_message_id=original_id,
        source_queue_url=message.queue_url,
        source_queue_arn=source_queue_arn,
        handler=handler,
        handler_version=handler_version,
        dead_lettered_at=iso_utc(now) or "",
        first_received_at=iso_utc(message.first_received_at),
        sent_at=iso_utc(message.sent_at),
        first_sent_at=iso_utc(first_sent_time(previous, message.sent_at)),
        redrive_count=redrive_count,
        handed_back=handed_back,
        history=history,
        trace_id=trace.trace_hex if trace is not None else None,
        span_id=trace.span_hex if trace is not None else None,
    )


#: The times a record names, each no earlier than the message's first send.
_RECORD_TIMES = ("first_sent_at", "sent_at", "first_received_at", "dead_lettered_at", "redriven_at")


def first_sent_time(record: FailureRecord | None, fallback: datetime | None) -> datetime | None:
    """When the message was first sent: the record's ``first_sent_at``, else ``fallback`` (this copy's send).

    A record written before ``first_sent_at`` existed gives the oldest time it or its history names (each is
    at or after the first send, so the oldest is the closest); ``fallback`` only when it names none.
    """
    if record is None:
        return fallback
    kept = parse_iso(record.first_sent_at)
    if kept is not None:
        return kept
    found = [
        when
        for entry in (asdict(record), *record.history)
        for name in _RECORD_TIMES
        if (when := parse_iso(entry.get(name))) is not None
    ]
    return min(found) if found else fallback


def message_first_sent(message: Message) -> datetime | None:
    """When ``message`` was first sent: from the record a redriven copy carries, else its SentTimestamp."""
    return first_sent_time(read_failure(message.sqs_attributes), message.sent_at)


def original_message_id(message: Message) -> str:
    """The id ``message`` had when first sent, kept through dead-letter and redrive round trips.

    A redriven copy is a new SQS message with a new id; the failure record it carries (an SQS attribute)
    names the first one. A message without a record is its own original.
    """
    record = read_failure(message.sqs_attributes)
    if record is not None and record.original_message_id:
        return record.original_message_id
    return message.id


def _encode_attribute(attr: MessageAttribute) -> dict[str, str]:
    if isinstance(attr.value, bytes):
        return {"DataType": attr.data_type, "BinaryValue": base64.b64encode(attr.value).decode()}
    return {"DataType": attr.data_type, "StringValue": attr.value}


def _decode_attribute(raw: Mapping[str, str]) -> MessageAttribute:
    if "BinaryValue" in raw:
        return MessageAttribute(raw["DataType"], base64.b64decode(raw["BinaryValue"]))
    return MessageAttribute(raw["DataType"], raw.get("StringValue", ""))


def _decodable(raw: object) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("DataType"), str):
        return False
    value = raw.get("BinaryValue", raw.get("StringValue", ""))
    if not isinstance(value, str):
        return False
    if "BinaryValue" in raw:
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            return False
    return True


def message_size(body: str, attributes: Mapping[str, MessageAttribute]) -> int:
    """Bytes SQS counts for a message: body plus each attribute's name, type and value."""
    return len(body.encode()) + sum(len(name.encode()) + attr.size() for name, attr in attributes.items())


def build_dead_letter(
    message: Message,
    record: FailureRecord,
    *,
    fifo: bool,
    offloaded: PayloadPointer | None = None,
    trace_header: str | None = None,
) -> dict[str, Any]:
    """SendMessage arguments (without QueueUrl) for the DLQ copy of ``message``; pure.

    The copy's ``AWSTraceHeader`` system attribute is ``trace_header``, else the message's own (if any).

    Raises DeadLetterTooLarge when even a minimal record does not fit: the caller then stores the body in
    S3 and builds the copy again with ``offloaded`` (the body becomes that ``PayloadS3Pointer``, with an
    ``ExtendedPayloadSize`` attribute), or, with no bucket configured, leaves the message on the source
    queue for the broker's own RedrivePolicy, which moves it unchanged.
    """
    # Originals as first received: a redriven message carries its old record (and what it displaced).
    originals = restore_attributes(message.sqs_attributes)
    body = message.raw_body
    extra: dict[str, MessageAttribute] = {}
    if offloaded is not None:
        body = offloaded.to_body()
        extra = size_attribute(len(message.raw_body.encode()))
        originals = {name: attr for name, attr in originals.items() if name not in SIZE_ATTRIBUTES}
    kept = dict(sorted(originals.items()))
    displaced: dict[str, Any] = {}
    while len(kept) > SQS_MAX_ATTRIBUTES - 1 - len(extra):
        name = next(reversed(kept))
        displaced[name] = _encode_attribute(kept.pop(name))
    if displaced:
        record = _replace(record, displaced_attributes=dict(sorted(displaced.items())))
    for candidate in (record, _replace(record, error_message=record.error_message[:256]), _minimal(record)):
        attributes = {**kept, **extra, FAILURE_ATTRIBUTE: MessageAttribute("String", candidate.to_json())}
        if message_size(body, attributes) <= SQS_MAX_MESSAGE_BYTES:
            break
    else:
        raise DeadLetterTooLarge(f"message {message.id} leaves no room for failure metadata")
    request: dict[str, Any] = {
        "MessageBody": body,
        "MessageAttributes": {name: attr.to_sqs() for name, attr in attributes.items()},
    }
    header = trace_header or message.system_attributes.get(AWS_TRACE_HEADER)
    if header:  # a system attribute: not one of the 10, not counted in the message size
        request["MessageSystemAttributes"] = {AWS_TRACE_HEADER: {"DataType": "String", "StringValue": header}}
    if fifo:
        request["MessageGroupId"] = message.group_id or "default"
        request["MessageDeduplicationId"] = dead_letter_dedup_id(
            record.original_message_id, record.redrive_count
        )
    return request


def dead_letter_object(record: FailureRecord, prefix: str = "") -> str:
    """The S3 key of an offloaded DLQ body: one per message and trip, so a retried send rewrites it."""
    return object_key(prefix, "dead-letters", record.original_message_id, str(record.redrive_count))


def dead_letter_dedup_id(original_message_id: str, redrive_count: int) -> str:
    """FIFO DLQ deduplication id from the source message id: never a content hash (SQS would drop repeats)."""
    return f"dlq-{original_message_id}-{redrive_count}"[:128]


def _replace(record: FailureRecord, **changes: Any) -> FailureRecord:
    data = asdict(record)
    data["history"] = record.history
    data.update(changes)
    return FailureRecord(**data)


def _minimal(record: FailureRecord) -> FailureRecord:
    return _replace(record, error_message="", history=(), source_queue_url="", handler_version="")


def read_failure(attributes: Mapping[str, MessageAttribute]) -> FailureRecord | None:
    """The failure metadata of a DLQ message, or None when it carries none (e.g. moved by the broker)."""
    attr = attributes.get(FAILURE_ATTRIBUTE)
    if attr is None:
        return None
    try:
        data = json.loads(attr.value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
        return None
    # The attribute arrives off the wire: a malformed record reads as none, never as an exception.
    history = data.get("history", [])
    displaced = data.get("displaced_attributes", {})
    if not isinstance(history, list) or not all(isinstance(item, dict) for item in history):
        return None
    if not isinstance(displaced, dict) or not all(_decodable(raw) for raw in displaced.values()):
        return None
    if not isinstance(data.get("redrive_count", 0), int):
        return None
    data["history"] = tuple(history)
    known = FailureRecord.__dataclass_fields__
    try:
        return FailureRecord(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def restore_attributes(attributes: Mapping[str, MessageAttribute]) -> dict[str, MessageAttribute]:
    """The original attributes of a dead-lettered message: metadata removed, displaced ones put back."""
    record = read_failure(attributes)
    restored = {k: v for k, v in attributes.items() if k != FAILURE_ATTRIBUTE}
    if record is not None:
        for name, raw in record.displaced_attributes.items():
            restored[name] = _decode_attribute(raw)
    return restored
