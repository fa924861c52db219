"""Tracing: an OpenTelemetry CONSUMER span per handler call, parented and linked from the message's context.

The worker uses the OpenTelemetry API only; spans are recorded when an SDK ``TracerProvider`` is configured
(``opentelemetry-instrument``, or in code before the handler is loaded: docs/tracing.md). ``WORKER_TRACING``:
``auto`` traces when one is, ``on`` always (the API's no-op tracer still carries the producer's context
into log lines, dead letters and destinations), ``off`` never.

A message's creation context comes from its ``traceparent`` (+ ``tracestate``) message attribute (W3C; an SNS
envelope's MessageAttributes count) or its ``AWSTraceHeader`` system attribute (X-Ray). The W3C one is the
span's parent when valid, else the X-Ray one; the X-Ray one, when it names another span, becomes a link, and
so does the span that dead-lettered a redriven message (its failure record names it). Every delivery of a
message extracts the same context, so retries, dead-letters and redrives stay in the producer's trace.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from worker._version import __version__
from worker.traces import (
    AWS_TRACE_HEADER,
    LINK_DEAD_LETTERED,
    LINK_XRAY,
    TRACEPARENT,
    TRACESTATE,
    SpanRef,
    common_attributes,
    message_attributes,
    parse_traceparent,
    parse_xray,
    span_name,
    xray_header,
)

log = logging.getLogger("worker.tracing")

#: The instrumentation scope of the worker's spans.
TRACER_NAME = "resilient-sqs-worker"
#: The longest ``tracestate`` read (the W3C and API limit).
_TRACESTATE_MAX_LENGTH = 512
_T = TypeVar("_T")


class _Attribute(Protocol):
    @property
    def value(self) -> str | bytes: ...


class Traced(Protocol):
    """What tracing reads of a message (``worker.engine.message.Message`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, _Attribute]: ...
    @property
    def system_attributes(self) -> Mapping[str, str]: ...


def _text(attributes: Mapping[str, _Attribute], name: str) -> str | None:
    attr = attributes.get(name)
    return attr.value if attr is not None and isinstance(attr.value, str) else None


def w3c_context(message: Traced) -> trace.SpanContext | None:
    """The span context of the message's ``traceparent`` (and ``tracestate``) attribute, if valid."""
    ref = parse_traceparent(_text(message.attributes, TRACEPARENT))
    if ref is None:
        return None
    tracestate = _text(message.attributes, TRACESTATE)
    if tracestate is None or len(tracestate) > _TRACESTATE_MAX_LENGTH:
        return _span_context(ref)
    return _span_context(ref, trace.TraceState.from_header([tracestate]))


def _span_context(ref: SpanRef, state: trace.TraceState | None = None) -> trace.SpanContext:
    return trace.SpanContext(
        ref.trace_id, ref.span_id, is_remote=True, trace_flags=trace.TraceFlags(ref.flags), trace_state=state
    )


def _ref(context: trace.SpanContext) -> SpanRef:
    return SpanRef(context.trace_id, context.span_id, int(context.trace_flags))


def xray_context(message: Traced) -> trace.SpanContext | None:
    """The span context of the message's ``AWSTraceHeader`` system attribute, if valid."""
    ref = parse_xray(message.system_attributes.get(AWS_TRACE_HEADER))
    return None if ref is None else _span_context(ref)


def _same(a: trace.SpanContext, b: trace.SpanContext) -> bool:
    return a.trace_id == b.trace_id and a.span_id == b.span_id


def parent_and_links(
    message: Traced, dead_lettered_by: SpanRef | None = None
) -> tuple[trace.SpanContext | None, list[trace.Link]]:
    """The message's parent (W3C, else X-Ray) and the links to the other contexts it names."""
    w3c, xray = w3c_context(message), xray_context(message)
    parent = w3c or xray
    links: list[trace.Link] = []
    if xray is not None and parent is not None and not _same(xray, parent):
        links.append(trace.Link(xray, {"worker.link": LINK_XRAY}))
    if dead_lettered_by is not None:
        by = _span_context(dead_lettered_by)
        if all(not _same(by, other) for other in (parent, *(link.context for link in links)) if other):
            links.append(trace.Link(by, {"worker.link": LINK_DEAD_LETTERED}))
    return parent, links


class ProcessSpan:
    """The span of one handler call (or one dead-letter without a call): what the worker tells it."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> ProcessSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if isinstance(exc, Exception):  # the worker's own failure (a handler's is an outcome)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        elif exc is not None:
            self._span.set_attribute("worker.decision", "interrupted")  # cancelled: the message goes back
        self._span.end()

    def outcome(self, result: str, error: BaseException | None) -> None:
        """How the handler call ended: ``worker.outcome``; on failure ERROR status and ``error.type``."""
        self._span.set_attribute("worker.outcome", result)
        if result != "Success":
            error_type = type(error).__name__ if error is not None else result
            self._span.set_attribute("error.type", error_type)
            # The type only: an error's text may quote the message (WORKER_LOG_BODIES governs that in logs).
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))

    def decided(self, decision: str, details: Mapping[str, str | int] | None = None) -> None:
        """What the worker did next: ``worker.decision`` (ack, retry_now, retry_after, dead_letter, ...).

        ``details`` become ``worker.<name>`` attributes (``retry_delay_seconds``, ``dead_letter_condition``).
        """
        self._span.set_attribute("worker.decision", decision)
        for name, value in (details or {}).items():
            self._span.set_attribute(f"worker.{name}", value)

    def failed_items(self, count: int, of: int) -> None:
        """A batch call's partial failure: ``worker.batch.failed_count`` and ERROR status when any failed."""
        self._span.set_attribute("worker.batch.failed_count", count)
        if count:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"{count} of {of} messages failed"))


class _NoSpan(ProcessSpan):
    """Tracing off: a reusable span that does nothing (one shared instance)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(trace.INVALID_SPAN)

    def __enter__(self) -> ProcessSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def outcome(self, result: str, error: BaseException | None) -> None:
        """Nothing."""

    def decided(self, decision: str, details: Mapping[str, str | int] | None = None) -> None:
        """Nothing."""

    def failed_items(self, count: int, of: int) -> None:
        """Nothing."""


#: The span the engine uses when tracing is off.
NO_SPAN: ProcessSpan = _NoSpan()


def configured(provider: trace.TracerProvider) -> bool:
    """True when ``provider`` records spans: anything but the API's default (proxy) or no-op provider."""
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Tracing:
    """The spans of one queue's worker, from the global TracerProvider."""

    def __init__(
        self, tracer: trace.Tracer, *, queue: str, queue_url: str, handler: str, handler_version: str
    ) -> None:
        self.tracer = tracer
        self.queue = queue
        self.name = span_name(queue)
        self.common = common_attributes(queue, queue_url, handler, handler_version)

    @classmethod
    def for_setting(
        cls, mode: str, *, queue: str, queue_url: str, handler: str, handler_version: str
    ) -> Tracing | None:
        """``WORKER_TRACING``: None when off (``off``, or ``auto`` with no SDK provider configured)."""
        if mode == "off":
            return None
        provider = trace.get_tracer_provider()
        if mode == "auto" and not configured(provider):
            return None
        log.info(
            "tracing on",
            extra={"event": "tracing", "mode": mode, "provider": type(provider).__name__, "queue": queue},
        )
        tracer = provider.get_tracer(TRACER_NAME, __version__)
        return cls(tracer, queue=queue, queue_url=queue_url, handler=handler, handler_version=handler_version)

    def process(
        self,
        message: Traced,
        *,
        receive_count: int,
        attempt: int,
        original_message_id: str | None = None,
        redrive_count: int | None = None,
        dead_lettered_by: SpanRef | None = None,
    ) -> ProcessSpan:
        """A started CONSUMER span for one call on ``message``; ``with`` it: current, then ended."""
        parent, links = parent_and_links(message, dead_lettered_by)
        context = (
            trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else otel_context.Context()
        )
        attributes: dict[str, str | int] = {
            **self.common,
            **message_attributes(
                message.id,
                receive_count=receive_count,
                attempt=attempt,
                original_message_id=original_message_id,
                redrive_count=redrive_count,
            ),
        }
        span = self.tracer.start_span(
            self.name, context=context, kind=trace.SpanKind.CONSUMER, attributes=attributes, links=links
        )
        return ProcessSpan(span)

    def batch(self, messages: Sequence[Traced]) -> ProcessSpan:
        """A started CONSUMER span for one batch call: a new trace, linked to each message's context."""
        links: list[trace.Link] = []
        for message in messages:
            parent, others = parent_and_links(message)
            for link in ([trace.Link(parent)] if parent else []) + others:
                attrs = {**(link.attributes or {}), "messaging.message.id": message.id}
                links.append(trace.Link(link.context, attrs))
        attributes: dict[str, str | int] = {**self.common, "messaging.batch.message_count": len(messages)}
        span = self.tracer.start_span(
            self.name,
            context=otel_context.Context(),
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return ProcessSpan(span)


def current_span() -> SpanRef | None:
    """The current span (the message being processed), or None outside one."""
    found = trace.get_current_span().get_span_context()
    return _ref(found) if found.is_valid else None


def dead_letter_trace(message: Traced) -> tuple[str | None, SpanRef | None]:
    """The ``AWSTraceHeader`` of ``message``'s dead-letter copy, and the span that dead-letters it.

    The header is the message's creation context: its own ``AWSTraceHeader`` as it came, else its
    ``traceparent`` in X-Ray form, else the dead-lettering span (which then becomes the context of the copy
    and of its redrives). Outside a span (tracing off) both are None: the copy keeps its own header only.
    The span is given only when an SDK made it (ended or not: a batch call's span ends before its dead
    letters are sent); the no-op tracer's non-recording spans name nothing to look up.
    """
    span = trace.get_current_span()
    current = span.get_span_context()
    if not current.is_valid:
        return None, None
    header = message.system_attributes.get(AWS_TRACE_HEADER)
    if not header:
        w3c = w3c_context(message)
        header = xray_header(_ref(w3c if w3c is not None else current))
    return header, None if isinstance(span, trace.NonRecordingSpan) else _ref(current)


def in_current_context(callback: Callable[..., _T]) -> Callable[..., _T]:
    """``callback`` bound to this task's context, so what it logs later carries the current span's ids."""
    return partial(contextvars.copy_context().run, callback)
