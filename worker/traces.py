"""Trace context as SQS messages carry it, and the attributes of the worker's spans (pure).

SQS carries an X-Ray trace header in the ``AWSTraceHeader`` message system attribute
(``Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1``): :func:`parse_xray` reads it
as the AWS X-Ray propagator (``opentelemetry-propagator-aws-xray``) does, so the worker needs only the
OpenTelemetry API, and :func:`xray_header` writes it as that propagator does. :func:`parse_traceparent` reads
a W3C ``traceparent`` as the API's TraceContext propagator does, at a fraction of its cost.
tests/test_tracing.py checks all three against those propagators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The SQS message system attribute holding the X-Ray trace header.
AWS_TRACE_HEADER = "AWSTraceHeader"
#: The W3C Trace Context message attributes (a producer's, or an SNS envelope's MessageAttributes).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_INVALID_TRACE_ID = 0
_INVALID_SPAN_ID = 0
#: The TraceContext propagator's pattern and length limit (opentelemetry-api), verbatim.
_TRACEPARENT = re.compile("^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX_LENGTH = 512
#: The common X-Ray header, read in one match; anything else goes through the propagator's pair rules.
_XRAY_CANONICAL = re.compile(
    r"Root=1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24});Parent=([0-9a-fA-F]{16});Sampled=([01])"
)
#: ``1-`` + 8 hex digits (epoch seconds) + ``-`` + 24 hex digits.
_XRAY_ROOT_LENGTH = 35
_XRAY_PARENT_LENGTH = 16

#: ``messaging.system`` of every span (OpenTelemetry messaging semantic conventions).
MESSAGING_SYSTEM = "aws_sqs"
#: ``worker.link`` of a link: where its context came from.
LINK_XRAY = "AWSTraceHeader"
LINK_DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class SpanRef:
    """A span's identity as it travels: trace id (128 bits), span id (64 bits), W3C trace flags."""

    trace_id: int
    span_id: int
    #: The W3C trace-flags byte; bit 0 is "sampled" (the only flag X-Ray has).
    flags: int = 1

    @property
    def sampled(self) -> bool:
        """The sampled flag."""
        return bool(self.flags & 1)

    @property
    def valid(self) -> bool:
        """Both ids non-zero and within their widths."""
        return 0 < self.trace_id < 1 << 128 and 0 < self.span_id < 1 << 64

    @property
    def trace_hex(self) -> str:
        """The trace id as 32 lower-case hex digits (what log lines and records show)."""
        return f"{self.trace_id:032x}"

    @property
    def span_hex(self) -> str:
        """The span id as 16 lower-case hex digits."""
        return f"{self.span_id:016x}"


def _hex_int(text: str) -> int | None:
    """``text`` as a hex number; None unless it is ASCII hex digits only (``int`` takes ``_`` and signs)."""
    if not text.isascii() or not text.isalnum():
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def parse_traceparent(value: str | None) -> SpanRef | None:
    """The span context of a W3C ``traceparent``, or None when absent or invalid (the API's rules)."""
    if not value or len(value) > _TRACEPARENT_MAX_LENGTH:
        return None
    match = _TRACEPARENT.search(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    ref = SpanRef(int(trace_hex, 16), int(span_hex, 16), int(flags, 16))
    return ref if ref.valid else None


def parse_xray(header: str | None) -> SpanRef | None:
    """The span context of an X-Ray trace header, or None when absent or invalid.

    The AWS X-Ray propagator's rules: ``key=value`` pairs split on ``;`` (spaces around keys and values
    ignored, unknown keys such as ``Lineage`` or ``Self`` skipped); ``Root`` is ``1-`` + 8 + ``-`` + 24 hex
    digits, ``Parent`` 16 hex digits, ``Sampled`` ``1`` or ``0`` (absent: not sampled). Any malformed pair, or
    a missing ``Root`` or ``Parent``, makes the whole header invalid.
    """
    if not header:
        return None
    canonical = _XRAY_CANONICAL.fullmatch(header)
    if canonical is not None:
        epoch, unique, parent, sampled_flag = canonical.groups()
        fast = SpanRef(int(epoch + unique, 16), int(parent, 16), int(sampled_flag))
        return fast if fast.valid else None
    trace_id, span_id, sampled = _INVALID_TRACE_ID, _INVALID_SPAN_ID, False
    for pair in header.split(";"):
        parts = pair.split("=")
        if len(parts) != 2:
            return None
        key, value = parts[0].strip(), parts[1].strip()
        if key == "Root":
            if len(value) != _XRAY_ROOT_LENGTH or value[:2] != "1-" or value[10] != "-":
                return None
            parsed = _hex_int(value[2:10] + value[11:])
            if parsed is None:
                return None
            trace_id = parsed
        elif key == "Parent":
            parsed = _hex_int(value) if len(value) == _XRAY_PARENT_LENGTH else None
            if parsed is None:
                return None
            span_id = parsed
        elif key == "Sampled":
            if value not in ("0", "1"):
                return None
            sampled = value == "1"
    ref = SpanRef(trace_id, span_id, int(sampled))
    return ref if ref.valid else None


def xray_header(ref: SpanRef) -> str:
    """The X-Ray trace header naming ``ref`` as the parent (what ``AWSTraceHeader`` carries)."""
    trace_hex = ref.trace_hex
    return f"Root=1-{trace_hex[:8]}-{trace_hex[8:]};Parent={ref.span_hex};Sampled={int(ref.sampled)}"


def from_hex(trace_id: object, span_id: object) -> SpanRef | None:
    """A SpanRef from the hex ids a record keeps (sampled), or None when either is missing or malformed."""
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    if len(trace_id) != 32 or len(span_id) != 16:
        return None
    trace_int, span_int = _hex_int(trace_id), _hex_int(span_id)
    if trace_int is None or span_int is None:
        return None
    ref = SpanRef(trace_int, span_int)
    return ref if ref.valid else None


def span_name(queue: str) -> str:
    """``process <queue>``: the conventions' ``{messaging.operation.name} {destination}``."""
    return f"process {queue}"


def common_attributes(queue: str, queue_url: str, handler: str, handler_version: str) -> dict[str, str]:
    """What every span of one queue's worker says, per-message or batch."""
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.operation": "process",  # the conventions' name before v1.26, still read by many back ends
        "messaging.destination.name": queue,
        "aws.sqs.queue.url": queue_url,
        "worker.handler": handler,
        "worker.handler_version": handler_version,
    }


def message_attributes(
    message_id: str,
    *,
    receive_count: int,
    attempt: int,
    original_message_id: str | None = None,
    redrive_count: int | None = None,
) -> dict[str, str | int]:
    """A per-message span's own attributes: the message, its delivery and attempt, its redrive history."""
    attributes: dict[str, str | int] = {
        "messaging.message.id": message_id,
        "worker.receive_count": receive_count,
        "worker.attempt": attempt,
    }
    if original_message_id is not None and original_message_id != message_id:
        attributes["worker.original_message_id"] = original_message_id
    if redrive_count:
        attributes["worker.redrive_count"] = redrive_count
    return attributes
