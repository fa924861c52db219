"""Tracing: X-Ray headers as the AWS propagator reads them, span parents and links, and the live flow.

The live test is the issue's "Done when": SNS publish with a ``traceparent`` -> queue -> worker (a message
failing twice, then succeeding) and a poison message -> DLQ -> ``worker redrive`` -> worker, on LocalStack,
with the SDK's in-memory exporter: every span shares the producer's trace id, parents and links as
docs/tracing.md says, and the log lines of those messages carry the trace id.

The worker reads the global TracerProvider (``opentelemetry.trace.get_tracer_provider``); a test hands it an
SDK provider by patching that getter for its own duration (``set_tracer_provider`` can be called only once
per process, and would trace every later test of this worker process).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.conftest import QueueFactory, unique
from tests.helpers import drain, running_worker, wait_for
from tests.test_redrive_support import redrive
from worker import BatchResult, Message, PermanentError
from worker.deadletter.record import FAILURE_ATTRIBUTE, build_dead_letter, failure_record, read_failure
from worker.destinations.record import build_record
from worker.destinations.sink import DestinationSink
from worker.destinations.targets import SqsDestination
from worker.destinations.uri import parse_destination
from worker.engine.message import MessageAttribute, parse_message
from worker.engine.outcome import Outcome
from worker.engine.policy import Condition
from worker.telemetry import tracing
from worker.telemetry.logs import TraceContextFilter, configure_logging
from worker.telemetry.metrics import Metrics
from worker.traces import SpanRef, from_hex, parse_traceparent, parse_xray, xray_header

PRODUCER_TRACE = 0x5759E988BD862E3FE1BE46A994272793
PRODUCER_SPAN = 0x53995C3F42CD8AD8
XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- the X-Ray header, against the AWS X-Ray propagator ------------------------------------------------------


def _propagator(header: str) -> SpanRef | None:
    """What opentelemetry-propagator-aws-xray extracts from ``header``."""
    found = trace.get_current_span(
        AwsXRayPropagator().extract({"X-Amzn-Trace-Id": header})
    ).get_span_context()
    return SpanRef(found.trace_id, found.span_id, int(found.trace_flags)) if found.is_valid else None


_hex = st.text("0123456789abcdefABCDEF", min_size=0, max_size=26)
_part = st.one_of(
    st.builds(lambda a, b: f"Root=1-{a}-{b}", st.text("0123456789abcdef", min_size=8, max_size=8), _hex),
    st.builds(lambda a, b: f"Root={a}-{b}", st.sampled_from(["1", "2", "1-"]), _hex),
    st.builds(lambda p: f"Parent={p}", _hex),
    st.builds(lambda s: f"Sampled={s}", st.sampled_from(["0", "1", "?", "d", "", "11"])),
    st.sampled_from(
        ["Lineage=a87bd80c:1|68fd508a:5", "Self=1-67891233-abcdef012345678912345678", "", "x", "a=b=c"]
    ),
)


@given(st.lists(_part, min_size=1, max_size=5), st.sampled_from([";", "; ", " ;"]))
def test_xray_header_reads_as_the_aws_propagator_reads_it(parts: list[str], separator: str) -> None:
    """Headers of well-formed and malformed parts (hex ids) give exactly the propagator's context, or none."""
    header = separator.join(parts)
    assert parse_xray(header) == _propagator(header)


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_xray_header_is_written_as_the_aws_propagator_writes_it(
    trace_id: int, span_id: int, sampled: bool
) -> None:
    """``xray_header`` is the propagator's injected header, and reads back to the same span."""
    ref = SpanRef(trace_id, span_id, int(sampled))
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0)
    context = trace.set_span_in_context(
        trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, False, flags))
    )
    carrier: dict[str, str] = {}
    AwsXRayPropagator().inject(carrier, context)
    assert xray_header(ref) == carrier["X-Amzn-Trace-Id"]
    assert parse_xray(xray_header(ref)) == ref


_w3c_hex = st.text("0123456789abcdef", min_size=1, max_size=34)
_traceparent = st.one_of(
    st.builds(
        lambda *parts: "-".join(parts),
        st.sampled_from(["00", "01", "ff", "0g", "000"]),
        st.one_of(_w3c_hex, st.just("0" * 32), st.text("0123456789abcdef", min_size=32, max_size=32)),
        st.one_of(_w3c_hex, st.just("0" * 16), st.text("0123456789abcdef", min_size=16, max_size=16)),
        st.sampled_from(["00", "01", "03", "ff", "1"]),
    ).flatmap(
        lambda base: st.builds(
            lambda pre, post: pre + base + post,
            st.sampled_from(["", " ", "\t", "x"]),
            st.sampled_from(["", " ", "-", "-extra", " \n", "\n", "x"]),
        )
    ),
    st.text(max_size=40),
    st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01" + " " * 500),
)


@given(_traceparent)
def test_traceparent_reads_as_the_api_propagator_reads_it(value: str) -> None:
    """Valid and malformed traceparent values give exactly the TraceContext propagator's context, or none."""
    found = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": value}))
    context = found.get_span_context()
    expected = (
        SpanRef(context.trace_id, context.span_id, int(context.trace_flags)) if context.is_valid else None
    )
    assert parse_traceparent(value) == expected


def test_xray_header_examples() -> None:
    """AWS's documented header reads; non-hex digits, a missing Parent or an unknown flag read as none."""
    assert parse_xray(XRAY) == SpanRef(PRODUCER_TRACE, PRODUCER_SPAN, 1)
    assert parse_xray(XRAY + ";Lineage=a87bd80c:1|68fd508a:5") == SpanRef(PRODUCER_TRACE, PRODUCER_SPAN, 1)
    assert parse_xray(XRAY.replace("Sampled=1", "Sampled=0")) == SpanRef(PRODUCER_TRACE, PRODUCER_SPAN, 0)
    assert parse_xray("Root=1-5759e988-bd862e3fe1be46a994272793") is None  # a root alone names no parent
    assert parse_xray(XRAY.replace("bd86", "bd_6")) is None  # int() would take "_" (the propagator does)
    assert parse_xray(XRAY.replace("Sampled=1", "Sampled=?")) is None
    assert parse_xray(None) is parse_xray("") is None
    assert from_hex(f"{PRODUCER_TRACE:032x}", f"{PRODUCER_SPAN:016x}") == SpanRef(
        PRODUCER_TRACE, PRODUCER_SPAN
    )
    assert from_hex("0" * 32, "1" * 16) is None
    assert from_hex(None, "1" * 16) is from_hex("xyz", "1" * 16) is None


# -- parents and links ------------------------------------------------------------------------------------


def _message(
    attributes: Mapping[str, str] | None = None, system: Mapping[str, str] | None = None, body: str = "{}"
) -> Message:
    entry: dict[str, Any] = {"MessageId": unique("m"), "ReceiptHandle": "rh", "Body": body}
    if attributes:
        entry["MessageAttributes"] = {
            k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
        }
    entry["Attributes"] = {"ApproximateReceiveCount": "1", **(system or {})}
    return parse_message(entry, "http://127.0.0.1:1/000000000000/orders")


def test_parent_is_traceparent_else_xray_and_the_other_a_link() -> None:
    """W3C first (with its tracestate), X-Ray otherwise; a different X-Ray span is a link, the same is not."""
    both = _message({"traceparent": TRACEPARENT, "tracestate": "vendor=1"}, {"AWSTraceHeader": XRAY})
    parent, links = tracing.parent_and_links(both)
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    assert parent.trace_state.get("vendor") == "1"
    assert [(link.context.span_id, dict(link.attributes or {})) for link in links] == [
        (PRODUCER_SPAN, {"worker.link": "AWSTraceHeader"})
    ]
    xray_only, links = tracing.parent_and_links(_message(system={"AWSTraceHeader": XRAY}))
    assert xray_only is not None
    assert (xray_only.trace_id, xray_only.span_id, links) == (PRODUCER_TRACE, PRODUCER_SPAN, [])
    same = xray_header(SpanRef(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331))
    assert tracing.parent_and_links(_message({"traceparent": TRACEPARENT}, {"AWSTraceHeader": same}))[1] == []
    assert tracing.parent_and_links(_message({"traceparent": "00-junk"})) == (None, [])
    # A redriven message links to the span that dead-lettered it, unless that span is already named.
    by = SpanRef(PRODUCER_TRACE, 0x1111)
    _, links = tracing.parent_and_links(_message(system={"AWSTraceHeader": XRAY}), by)
    assert [(link.context.span_id, dict(link.attributes or {})) for link in links] == [
        (0x1111, {"worker.link": "dead_lettered"})
    ]
    named = SpanRef(PRODUCER_TRACE, PRODUCER_SPAN)
    assert tracing.parent_and_links(_message(system={"AWSTraceHeader": XRAY}), named)[1] == []


def test_traceparent_inside_an_sns_envelope_is_the_parent() -> None:
    """An SNS notification's MessageAttributes (merged into Message.attributes) carry the W3C context."""
    envelope = {
        "Type": "Notification",
        "MessageId": "n-1",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:orders",
        "Message": "{}",
        "MessageAttributes": {"traceparent": {"Type": "String", "Value": TRACEPARENT}},
    }
    parent, _ = tracing.parent_and_links(_message(body=json.dumps(envelope)))
    assert parent is not None
    assert parent.span_id == 0xB7AD6B7169203331


def test_dead_letter_copy_carries_the_creation_context() -> None:
    """The copy's AWSTraceHeader: the message's own, else its traceparent as X-Ray, else the current span."""
    provider, _ = _sdk()
    with provider.get_tracer("t").start_as_current_span("dead-lettering") as span:
        ids = span.get_span_context()
        own = tracing.dead_letter_trace(_message({"traceparent": TRACEPARENT}, {"AWSTraceHeader": XRAY}))
        w3c = tracing.dead_letter_trace(_message({"traceparent": TRACEPARENT}))
        bare = tracing.dead_letter_trace(_message())
    by = SpanRef(ids.trace_id, ids.span_id, int(ids.trace_flags))
    assert own == (XRAY, by)
    assert w3c == (xray_header(SpanRef(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)), by)
    assert bare == (xray_header(by), by)
    outside = tracing.dead_letter_trace(_message({"traceparent": TRACEPARENT}))
    assert outside == (None, None)  # no span (tracing off): nothing
    # The no-op tracer's span (WORKER_TRACING=on, no SDK) carries the parent: a header, but no span to name.
    parent = trace.SpanContext(PRODUCER_TRACE, PRODUCER_SPAN, is_remote=True, trace_flags=trace.TraceFlags(1))
    with trace.use_span(trace.NonRecordingSpan(parent)):
        assert tracing.dead_letter_trace(_message()) == (XRAY, None)


def test_dead_letter_request_and_record_carry_the_trace() -> None:
    """SendMessage gets the header as a system attribute (no message attribute used); the record, the span."""
    message = _message({"a": "1"}, {"AWSTraceHeader": XRAY})
    by = SpanRef(PRODUCER_TRACE, 0x2222)
    record = failure_record(
        message,
        error_type="E",
        error_message="m",
        condition=Condition.RETRIES_EXHAUSTED.value,
        attempts=3,
        source_queue_arn="arn:aws:sqs:us-east-1:000000000000:orders",
        handler="h:h",
        handler_version="1",
        now=_now(),
        trace=by,
    )
    request = build_dead_letter(message, record, fifo=False)
    assert request["MessageSystemAttributes"] == {
        "AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}
    }
    assert set(request["MessageAttributes"]) == {"a", FAILURE_ATTRIBUTE}
    back = read_failure({FAILURE_ATTRIBUTE: MessageAttribute("String", record.to_json())})
    assert back is not None
    assert (back.trace_id, back.span_id) == (f"{PRODUCER_TRACE:032x}", f"{0x2222:016x}")
    other = build_dead_letter(message, record, fifo=False, trace_header="Root=x")
    assert other["MessageSystemAttributes"]["AWSTraceHeader"]["StringValue"] == "Root=x"
    untraced = _message()
    plain = failure_record(
        untraced,
        error_type="E",
        error_message="m",
        condition="RetriesExhausted",
        attempts=1,
        source_queue_arn="",
        handler="h:h",
        handler_version="1",
        now=_now(),
    )
    assert "MessageSystemAttributes" not in build_dead_letter(untraced, plain, fifo=False)
    assert "trace_id" not in plain.to_json()  # records without tracing stay as they were


async def test_destination_record_and_sqs_send_carry_the_span() -> None:
    """Submitted inside a span, a record names it (worker.traceId, spanId) and its SQS send carries it."""
    sent: list[dict[str, Any]] = []

    class Client:
        async def send_message(self, **request: Any) -> dict[str, str]:
            sent.append(request)
            return {"MessageId": "d-1"}

    uri = parse_destination("http://127.0.0.1:1/000000000000/records")
    sink = DestinationSink([SqsDestination(uri, Client())], [], Metrics())  # type: ignore[arg-type]
    outcome = Outcome(_message(), Condition.SUCCESS, 1, "h:h", "1", time.time())
    parent = trace.SpanContext(PRODUCER_TRACE, PRODUCER_SPAN, is_remote=True, trace_flags=trace.TraceFlags(1))
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        with trace.use_span(trace.NonRecordingSpan(parent)):
            sink.submit(outcome)
        await wait_for(lambda: len(sent) == 1, timeout=5, what="the traced record")
        sink.submit(outcome)  # outside a span
        await wait_for(lambda: len(sent) == 2, timeout=5, what="the other record")
        tg.cancel_scope.cancel()
    traced, plain = (json.loads(request["MessageBody"])["worker"] for request in sent)
    assert (traced["traceId"], traced["spanId"]) == (f"{PRODUCER_TRACE:032x}", f"{PRODUCER_SPAN:016x}")
    assert sent[0]["MessageSystemAttributes"] == {
        "AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}
    }
    assert "traceId" not in plain
    assert "MessageSystemAttributes" not in sent[1]
    assert "traceId" not in build_record(outcome).to_dict()["worker"]


def test_a_callback_bound_in_a_span_logs_with_it_later(caplog: pytest.LogCaptureFixture) -> None:
    """``in_current_context``: a delete's answer, run later in another task, logs with the span's ids."""
    caplog.handler.addFilter(TraceContextFilter())
    parent = trace.SpanContext(PRODUCER_TRACE, PRODUCER_SPAN, is_remote=True)
    with trace.use_span(trace.NonRecordingSpan(parent)):
        bound = tracing.in_current_context(logging.getLogger("worker.test").warning)
    bound("delete failed")
    logging.getLogger("worker.test").warning("unbound")
    first, second = caplog.records[-2:]
    assert getattr(first, "trace_id", None) == f"{PRODUCER_TRACE:032x}"
    assert not hasattr(second, "trace_id")


def test_tracing_setting_auto_follows_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: off with the API's default provider, on with an SDK one; on: always; off: never."""
    kwargs: dict[str, str] = {"queue": "q", "queue_url": "u", "handler": "h:h", "handler_version": "1"}
    assert tracing.Tracing.for_setting("auto", **kwargs) is None
    assert tracing.Tracing.for_setting("on", **kwargs) is not None
    provider, _ = _sdk()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert tracing.Tracing.for_setting("auto", **kwargs) is not None
    assert tracing.Tracing.for_setting("off", **kwargs) is None


def test_configured_logging_adds_trace_ids_inside_a_span(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON lines of configure_logging carry trace_id and span_id inside a span, nothing outside."""
    touched = [
        logging.getLogger(name) for name in ("", "worker", "botocore", "aiobotocore", "urllib3", "aiohttp")
    ]
    saved = [(logger, logger.handlers[:], logger.level) for logger in touched]
    try:
        configure_logging("INFO", "json")
        assert any(isinstance(f, TraceContextFilter) for f in logging.getLogger().handlers[0].filters)
        provider, _ = _sdk()
        with provider.get_tracer("t").start_as_current_span("s") as span:
            logging.getLogger("worker.test").info("inside")
        logging.getLogger("worker.test").info("outside")
    finally:
        for logger, handlers, level in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    context = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in outside


def _sdk() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -- the live flow on LocalStack ----------------------------------------------------------------------------


@dataclass
class _Calls:
    """What the traced handler saw, per body key."""

    count: collections.Counter[str] = field(default_factory=collections.Counter)
    headers: dict[str, list[str | None]] = field(default_factory=dict)


CALLS = _Calls()
handler_log = logging.getLogger("tests.tracing.handler")


async def traced_handler(message: Message) -> Any:
    """Fails its key's first ``fail`` calls, then succeeds; logs a line per call, keeps AWSTraceHeader."""
    doc = message.json()
    key = str(doc["key"])
    CALLS.count[key] += 1
    CALLS.headers.setdefault(key, []).append(message.system_attributes.get("AWSTraceHeader"))
    handler_log.info("handler called", extra={"message_id": message.id, "call": CALLS.count[key]})
    if CALLS.count[key] <= int(doc["fail"]):
        raise RuntimeError("not yet")
    return {"ok": key}


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK provider with an in-memory exporter as the global one, for this test only."""
    provider, exporter = _sdk()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


def _attrs(span: ReadableSpan) -> MappingProxyType[str, Any]:
    return MappingProxyType(dict(span.attributes or {}))


@pytest.mark.localstack
async def test_a_trace_survives_retries_dead_letter_and_redrive(
    sqs: Any,
    aws: Any,
    queues: QueueFactory,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SNS traceparent -> worker (fails twice, succeeds) and poison -> DLQ -> redrive -> worker: one trace."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(TraceContextFilter())
    q = await queues()
    queue_name = q["url"].rsplit("/", 1)[-1]
    sns = await aws("sns")
    topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
    producer = trace.get_tracer_provider().get_tracer("tests.producer")
    flaky_key, poison_key = unique("flaky"), unique("poison")
    publish_spans: dict[str, trace.SpanContext] = {}
    try:
        await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=q["arn"])
        with producer.start_as_current_span("checkout") as root:
            for key, fail in ((flaky_key, 2), (poison_key, 3)):
                with producer.start_as_current_span(f"publish {topic}", kind=trace.SpanKind.PRODUCER) as span:
                    carrier: dict[str, str] = {}
                    TraceContextTextMapPropagator().inject(carrier)
                    await sns.publish(
                        TopicArn=topic,
                        Message=json.dumps({"key": key, "fail": fail}),
                        MessageAttributes={
                            "traceparent": {"DataType": "String", "StringValue": carrier["traceparent"]}
                        },
                    )
                    publish_spans[key] = span.get_span_context()
        trace_id = root.get_span_context().trace_id

        def process_spans() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == f"process {queue_name}"]

        def of(key: str) -> list[ReadableSpan]:
            return [s for s in process_spans() if s.parent and s.parent.span_id == publish_spans[key].span_id]

        async with running_worker(
            q, handler="tests.test_tracing:traced_handler", max_attempts=3, immediate_retries=1
        ):
            # flaky: call 1 fails, its immediate retry fails, the next delivery succeeds; poison: the same
            # two calls, then a third that exhausts WORKER_MAX_ATTEMPTS=3 and dead-letters it.
            await wait_for(
                lambda: len(of(flaky_key)) == 3 and len(of(poison_key)) == 3, timeout=15, what="spans"
            )
            [dead] = (
                await sqs.receive_message(
                    QueueUrl=q["dlq_url"],
                    WaitTimeSeconds=5,
                    VisibilityTimeout=0,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                )
            )["Messages"]
            report = await redrive(q["dlq_url"])
            assert report.tally.moved == 1
            await wait_for(lambda: len(of(poison_key)) == 4, timeout=10, what="the redriven message's span")

        flaky, poison = of(flaky_key), of(poison_key)
        assert {s.context.trace_id for s in process_spans()} == {
            trace_id
        }  # every span in the producer's trace
        assert len(process_spans()) == 7
        for span in flaky + poison:
            assert span.kind is trace.SpanKind.CONSUMER
            attrs = _attrs(span)
            assert attrs["messaging.system"] == "aws_sqs"
            assert attrs["messaging.operation.type"] == "process"
            assert attrs["messaging.destination.name"] == queue_name
        outcome = [
            (_attrs(s)["worker.outcome"], _attrs(s)["worker.decision"], _attrs(s)["worker.attempt"])
            for s in flaky
        ]
        assert outcome == [("Error", "retry_now", 1), ("Error", "retry_after", 2), ("Success", "ack", 3)]
        assert [s.status.status_code for s in flaky] == [trace.StatusCode.ERROR] * 2 + [
            trace.StatusCode.UNSET
        ]
        assert all(not s.links for s in flaky)
        assert [_attrs(s)["worker.decision"] for s in poison] == [
            "retry_now",
            "retry_after",
            "dead_letter",
            "ack",
        ]

        # The DLQ copy carries the producer's context (AWSTraceHeader), its record the dead-lettering span.
        dead_lettering, redriven = poison[2], poison[3]
        publish = publish_spans[poison_key]
        assert dead["Attributes"]["AWSTraceHeader"] == xray_header(SpanRef(publish.trace_id, publish.span_id))
        record = read_failure(
            {
                FAILURE_ATTRIBUTE: MessageAttribute(
                    "String", dead["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"]
                )
            }
        )
        assert record is not None
        assert (record.trace_id, record.span_id) == (
            f"{trace_id:032x}",
            f"{dead_lettering.context.span_id:016x}",
        )

        # The redriven copy: a child of the producer's span again, linked to the span that dead-lettered it.
        attrs = _attrs(redriven)
        assert attrs["worker.redrive_count"] == 1
        assert attrs["worker.original_message_id"] == _attrs(poison[0])["messaging.message.id"]
        assert attrs["messaging.message.id"] != attrs["worker.original_message_id"]
        assert [(link.context.span_id, dict(link.attributes or {})) for link in redriven.links] == [
            (dead_lettering.context.span_id, {"worker.link": "dead_lettered"})
        ]
        assert CALLS.headers[poison_key][-1] == dead["Attributes"]["AWSTraceHeader"]  # kept by the redrive

        # Every log line about these messages, the worker's and the handler's, carries the trace id.
        ids = {str(_attrs(s)["messaging.message.id"]) for s in flaky + poison}
        lines = [
            r
            for r in caplog.records
            if getattr(r, "message_id", None) in ids and not r.name.startswith("worker.redrive")
        ]
        assert {r.name for r in lines} >= {"tests.tracing.handler", "worker.deadletter"}
        assert {getattr(r, "trace_id", None) for r in lines} == {f"{trace_id:032x}"}
        handler_lines = [r for r in lines if r.name == "tests.tracing.handler"]
        assert len(handler_lines) == 7
        assert {r.span_id for r in handler_lines} == {f"{s.context.span_id:016x}" for s in flaky + poison}
    finally:
        await sns.delete_topic(TopicArn=topic)


@pytest.mark.localstack
async def test_native_redrive_keeps_the_trace_header(sqs: Any, queues: QueueFactory) -> None:
    """A native move task (SQS's own, here LocalStack's) moves a dead letter with its AWSTraceHeader."""
    q = await queues()
    header = {"AWSTraceHeader": {"DataType": "String", "StringValue": XRAY}}
    await sqs.send_message(QueueUrl=q["dlq_url"], MessageBody="{}", MessageSystemAttributes=header)
    report = await redrive(q["dlq_url"], queue_url=q["url"])
    assert (report.mode, report.exit_code) == ("native", 0)
    [moved] = await drain(sqs, q["url"], expect=1)
    assert moved["Attributes"]["AWSTraceHeader"] == XRAY


async def traced_batch(messages: list[Message]) -> BatchResult:
    """A batch handler: ``{"permanent": true}`` bodies fail for good, the rest succeed; one log line each."""
    failures: dict[str, BaseException | None] = {}
    for message in messages:
        handler_log.info("batch item", extra={"message_id": message.id})
        if message.json().get("permanent"):
            failures[message.id] = PermanentError("bad order")
    return BatchResult(failures=failures)


@pytest.mark.localstack
async def test_batch_call_is_one_span_linked_to_each_message(
    sqs: Any, queues: QueueFactory, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch call is a new trace linked to every message; the DLQ copy keeps its own message's context."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(TraceContextFilter())
    q = await queues()
    producer = trace.get_tracer_provider().get_tracer("tests.producer")
    sent: dict[str, trace.SpanContext] = {}
    for body in ({"ok": True}, {"permanent": True}):
        with producer.start_as_current_span("send", kind=trace.SpanKind.PRODUCER) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            attributes = {"traceparent": {"DataType": "String", "StringValue": carrier["traceparent"]}}
            response = await sqs.send_message(
                QueueUrl=q["url"], MessageBody=json.dumps(body), MessageAttributes=attributes
            )
            sent[response["MessageId"]] = span.get_span_context()
    poison = list(sent.values())[1]  # the second body's producer span

    def calls() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]

    def linked() -> dict[str, int]:
        return {
            str(dict(link.attributes or {})["messaging.message.id"]): link.context.span_id
            for s in calls()
            for link in s.links
        }

    async with running_worker(q, handler="tests.test_tracing:traced_batch"):
        await wait_for(lambda: len(linked()) == 2, timeout=10, what="both messages' links")
        [dead] = await drain(sqs, q["dlq_url"], expect=1)
    assert linked() == {message_id: context.span_id for message_id, context in sent.items()}
    for span in calls():
        attrs = _attrs(span)
        assert span.parent is None  # a new trace: the messages' traces are links
        assert attrs["messaging.batch.message_count"] == len(span.links)
        assert "messaging.message.id" not in attrs
    assert sum(int(_attrs(s)["worker.batch.failed_count"]) for s in calls()) == 1
    assert [s.status.status_code for s in calls() if _attrs(s)["worker.batch.failed_count"]] == [
        trace.StatusCode.ERROR
    ]
    # The dead letter keeps its own producer's context; its record and log line name the batch call's span.
    assert dead["Attributes"]["AWSTraceHeader"] == xray_header(SpanRef(poison.trace_id, poison.span_id))
    [failed_call] = [s for s in calls() if _attrs(s)["worker.batch.failed_count"]]
    call_ids = (f"{failed_call.context.trace_id:032x}", f"{failed_call.context.span_id:016x}")
    record = read_failure(
        {
            FAILURE_ATTRIBUTE: MessageAttribute(
                "String", dead["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"]
            )
        }
    )
    assert record is not None
    assert (record.trace_id, record.span_id) == call_ids
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "dead_lettered"]
    assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == call_ids
