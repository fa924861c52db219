"""Destination records: what on-success / on-failure destinations receive (pure builders, no I/O).

A record is shaped like an AWS Lambda asynchronous-invocation destination record, plus a small
``worker`` section::

    {"version": "1.0", "timestamp": "2026-11-26T10:00:00.123Z",
     "requestContext": {"requestId": ..., "functionArn": <handler path>, "condition": "Success",
                        "approximateInvokeCount": 1},
     "requestPayload": <the body, parsed when it is JSON, else the string>,
     "responseContext": {"statusCode": 200, "executedVersion": <handler version>},
     "responsePayload": <the handler's return value>,
     "worker": {"queueUrl": ..., "messageId": ..., "groupId": null, "snsTopicArn": null}}

On failure ``statusCode`` is 500, ``responseContext.functionError`` is the error type and
``responsePayload`` is ``{"errorType": ..., "errorMessage": ...}``.

``requestId`` is the message's *original* id: the same across a dead-letter and redrive round trip
(taken from the ``worker.failure`` attribute a redriven message still carries); ``worker.messageId``
is the id of this delivery. When the message was traced, ``worker.traceId`` and ``worker.spanId`` name the
span that finished it (docs/tracing.md).

A record larger than a service accepts is cut by :func:`fit_record`: both payloads become truncated
strings, ``"truncated": true`` is set and, when given, ``"fullRecord"`` points at the complete record.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from worker.deadletter.record import read_failure
from worker.engine.outcome import Outcome
from worker.timestamps import iso_utc
from worker.traces import SpanRef

RECORD_VERSION = "1.0"
#: Bytes kept in hand below a limit when cutting a record.
TRUNCATION_MARGIN = 64


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What was invoked: ``request_id`` (original message id), handler path, condition, attempts."""

    request_id: str
    function_arn: str
    condition: str
    approximate_invoke_count: int

    def to_dict(self) -> dict[str, Any]:
        """The ``requestContext`` object."""
        return {
            "requestId": self.request_id,
            "functionArn": self.function_arn,
            "condition": self.condition,
            "approximateInvokeCount": self.approximate_invoke_count,
        }


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """How it ended: 200 or 500, the handler version, and the error type on failure."""

    status_code: int
    executed_version: str
    function_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``responseContext`` object (``functionError`` only on failure)."""
        data: dict[str, Any] = {"statusCode": self.status_code, "executedVersion": self.executed_version}
        if self.function_error is not None:
            data["functionError"] = self.function_error
        return data


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Where the message came from: queue URL, this delivery's message id, FIFO group, SNS topic."""

    queue_url: str
    message_id: str
    group_id: str | None = None
    sns_topic_arn: str | None = None
    #: The span that finished the message, when traced: ``traceId`` and ``spanId`` in the record.
    trace: SpanRef | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``worker`` object."""
        data: dict[str, Any] = {
            "queueUrl": self.queue_url,
            "messageId": self.message_id,
            "groupId": self.group_id,
            "snsTopicArn": self.sns_topic_arn,
        }
        if self.trace is not None:
            data["traceId"] = self.trace.trace_hex
            data["spanId"] = self.trace.span_hex
        return data


@dataclass(frozen=True, slots=True)
class DestinationRecord:
    """One destination record; immutable all the way down (payload objects are read-only views).

    Python hooks receive this object; every other destination receives ``to_json()``.
    """

    version: str
    timestamp: str
    request_context: RequestContext
    request_payload: Any
    response_context: ResponseContext
    response_payload: Any
    worker: WorkerContext
    truncated: bool = False
    full_record: str | None = None

    @property
    def condition(self) -> str:
        """The condition (``Success``, ``RetriesExhausted``, ...)."""
        return self.request_context.condition

    @property
    def succeeded(self) -> bool:
        """True for on-success records."""
        return self.request_context.condition == "Success"

    @property
    def message_id(self) -> str:
        """The id of the SQS message this record is about."""
        return self.worker.message_id

    def to_dict(self) -> dict[str, Any]:
        """A fresh plain-JSON dict (lists and dicts, safe to mutate)."""
        data: dict[str, Any] = {
            "version": self.version,
            "timestamp": self.timestamp,
            "requestContext": self.request_context.to_dict(),
            "requestPayload": thaw(self.request_payload),
            "responseContext": self.response_context.to_dict(),
            "responsePayload": thaw(self.response_payload),
            "worker": self.worker.to_dict(),
        }
        if self.truncated:
            data["truncated"] = True
        if self.full_record is not None:
            data["fullRecord"] = self.full_record
        return data

    def to_json(self) -> str:
        """Compact, ASCII-only JSON (every character is one byte, lone surrogates are escaped)."""
        return _dumps(self.to_dict())

    def size(self) -> int:
        """Bytes of ``to_json()``."""
        return len(self.to_json())


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def freeze(value: Any) -> Any:
    """A read-only copy of a JSON value: dicts become mapping proxies, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON value of a frozen one (mapping proxies to dicts, tuples to lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_payload(body: str) -> Any:
    """The body parsed as strict JSON (no NaN/Infinity), or the body itself when it is not JSON."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return body


def jsonable(value: object) -> Any:
    """A JSON value for a handler's return value: itself when JSON-able, else its ``repr``."""
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump) and not isinstance(value, type):
        with contextlib.suppress(Exception):  # a failing model_dump falls back to the repr below
            value = dump(mode="json")
    try:
        return json.loads(_dumps(value))
    except (TypeError, ValueError, RecursionError):
        return _repr(value)


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return object.__repr__(value)


def iso_timestamp(unix: float) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as Lambda writes it."""
    if not math.isfinite(unix):
        unix = 0.0
    return str(iso_utc(datetime.fromtimestamp(unix, UTC), "milliseconds"))


def original_message_id(outcome: Outcome) -> str:
    """The id the message had when first sent: kept across dead-letter and redrive by ``worker.failure``."""
    previous = read_failure(outcome.message.sqs_attributes)
    if previous is not None and previous.original_message_id:
        return previous.original_message_id
    return outcome.message.id


def build_record(outcome: Outcome, trace: SpanRef | None = None) -> DestinationRecord:
    """The destination record of a finished message (complete, not size-limited); ``trace``: its span."""
    message = outcome.message
    succeeded = outcome.succeeded
    error_type = outcome.error_type or outcome.condition.value
    response: Any
    if succeeded:
        response = jsonable(outcome.response)
    else:
        response = {"errorType": error_type, "errorMessage": outcome.error_message or ""}
    try:
        request_payload = freeze(parse_payload(message.body))
        response_payload = freeze(response)
    except RecursionError:  # nested deeper than freezing allows: keep the text
        request_payload, response_payload = message.body, _repr(outcome.response)
    return DestinationRecord(
        version=RECORD_VERSION,
        timestamp=iso_timestamp(outcome.timestamp),
        request_context=RequestContext(
            request_id=original_message_id(outcome),
            function_arn=outcome.handler,
            condition=outcome.condition.value,
            approximate_invoke_count=outcome.attempts,
        ),
        request_payload=request_payload,
        response_context=ResponseContext(
            status_code=200 if succeeded else 500,
            executed_version=outcome.handler_version,
            function_error=None if succeeded else error_type,
        ),
        response_payload=response_payload,
        worker=WorkerContext(
            queue_url=message.queue_url,
            message_id=message.id,
            group_id=message.group_id,
            sns_topic_arn=message.sns.topic_arn if message.sns is not None else None,
            trace=trace,
        ),
    )


def s3_key(record: DestinationRecord, prefix: str = "") -> str:
    """``prefix/YYYY/MM/DD/<condition>/<message id>.json``, dated by the record's timestamp (UTC)."""
    day = record.timestamp[:10].replace("-", "/")
    key = f"{day}/{record.condition}/{record.message_id}.json"
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


def _as_text(payload: Any) -> str:
    return payload if isinstance(payload, str) else _dumps(thaw(payload))


def _escaped_len(text: str) -> int:
    return len(_dumps(text)) - 2


def _cut(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON-escaped form takes at most ``budget`` bytes."""
    if _escaped_len(text) <= budget:
        return text
    low, high = 0, min(len(text), max(0, budget))
    while low < high:  # the escaped length of a prefix grows with the prefix
        mid = (low + high + 1) // 2
        if _escaped_len(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def fit_record(record: DestinationRecord, limit: int, *, full_record: str | None = None) -> DestinationRecord:
    """``record`` when its JSON fits in ``limit`` bytes; else a cut copy that does.

    The cut copy has both payloads replaced by truncated strings (the JSON text of a non-string
    payload, or the string itself), ``truncated`` set, and ``full_record`` (e.g. ``s3://bucket/key``)
    when given. The space left is shared between the two payloads, the smaller one first.
    """
    if record.size() <= limit:
        return record
    skeleton = replace(
        record, request_payload="", response_payload="", truncated=True, full_record=full_record
    )
    available = limit - skeleton.size() - TRUNCATION_MARGIN
    if available < 0:
        raise ValueError(f"a destination record needs more than {limit} bytes even without payloads")
    texts = [_as_text(record.request_payload), _as_text(record.response_payload)]
    needs = [_escaped_len(t) for t in texts]
    small = 0 if needs[0] <= needs[1] else 1
    budgets = [0, 0]
    budgets[small] = min(needs[small], available // 2)
    budgets[1 - small] = min(needs[1 - small], available - budgets[small])
    cut = replace(
        skeleton,
        request_payload=_cut(texts[0], budgets[0]),
        response_payload=_cut(texts[1], budgets[1]),
    )
    if cut.size() > limit:  # cannot happen: the budgets above are measured on the escaped text
        raise ValueError(f"cut record still exceeds {limit} bytes")
    return cut
