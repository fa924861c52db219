"""Large payloads, the extended-client pattern: pointers (pure), and the real AWS libraries on LocalStack.

The producers are the real Python extended client libraries (``amazon-sqs-extended-client``,
``amazon-sns-extended-client``), sync boto3 run in a thread against LocalStack; the worker resolves their
pointers, keeps them in the DLQ, and writes its own oversized records in the same format, which the
library reads back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests import payload_handlers
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, depth, running_worker, wait_for
from tests.payload_handlers import SEEN, digest
from tests.test_redrive_support import redrive
from worker.cli import build_parser
from worker.deadletter.record import (
    FAILURE_ATTRIBUTE,
    build_dead_letter,
    dead_letter_object,
    failure_record,
    read_failure,
    restore_attributes,
)
from worker.deadletter.writer import DeadLetterWriter
from worker.destinations.record import DestinationRecord, RequestContext, ResponseContext, WorkerContext
from worker.destinations.targets import SnsDestination, SqsDestination
from worker.destinations.uri import parse_destination
from worker.engine.batch import BatchResult
from worker.engine.handler import LoadedHandler
from worker.engine.message import Message, parse_message
from worker.engine.outcome import Outcome
from worker.engine.payload_pointer import (
    LEGACY_POINTER_CLASS,
    POINTER_CLASS,
    SIZE_ATTRIBUTE,
    PayloadMissing,
    PayloadNotAllowed,
    PayloadPointer,
    PayloadTooLarge,
    PayloadUnavailable,
    PointerError,
    declared_size,
    find_pointer,
    object_key,
    parse_pointer,
    resolved,
)
from worker.engine.payloads import ExtendedPayloads, PayloadCleanup, PayloadOffload, PayloadStore
from worker.engine.policy import Condition
from worker.errors import ConfigError
from worker.limits import SNS_MAX_BYTES, SQS_MAX_MESSAGE_BYTES
from worker.ops.dlq import inspect
from worker.ops.settings import ToolSettings
from worker.settings import load_settings
from worker.settings_groups import ExtendedPayloadSettings
from worker.telemetry.metrics import Metrics

QUEUE = "http://127.0.0.1:1/000000000000/source"
#: A payload above the libraries' 256 KiB threshold, with 2-, 3- and 4-byte UTF-8 characters.
TEXT = "é€😀" * 32_000


def entry(body: str, attributes: dict[str, tuple[str, str]] | None = None, **system: str) -> dict[str, Any]:
    """A ReceiveMessage entry with String/Number attributes given as ``name: (type, value)``."""
    return {
        "MessageId": unique("m"),
        "ReceiptHandle": "rh",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "1", **system},
        "MessageAttributes": {
            name: {"DataType": kind, "StringValue": value}
            for name, (kind, value) in (attributes or {}).items()
        },
    }


def message(body: str, attributes: dict[str, tuple[str, str]] | None = None, **system: str) -> Message:
    """A parsed Message (SNS envelopes unwrapped, as received)."""
    return parse_message(entry(body, attributes, **system), QUEUE)


def sized(pointer: PayloadPointer, size: int = 10) -> Message:
    """A message carrying ``pointer`` and its ExtendedPayloadSize, as the libraries send it."""
    return message(pointer.to_body(), {SIZE_ATTRIBUTE: ("Number", str(size)), "run": ("String", "r")})


# -- the pointer format (pure) --


def test_pointer_body_is_what_jackson_writes_and_reads_back() -> None:
    """The worker writes the Java library's exact bytes (compact wrapper array) and reads them back."""
    pointer = PayloadPointer("my-bucket", "a/b c.json")
    assert pointer.to_body() == (
        '["software.amazon.payloadoffloading.PayloadS3Pointer",'
        '{"s3BucketName":"my-bucket","s3Key":"a/b c.json"}]'
    )
    assert parse_pointer(pointer.to_body()) == pointer
    assert pointer.uri == "s3://my-bucket/a/b c.json"


@pytest.mark.parametrize(
    ("body", "want"),
    [
        # amazon-sqs-extended-client / amazon-sns-extended-client: json.dumps with its default separators
        (f'["{POINTER_CLASS}", {{"s3BucketName": "b-1", "s3Key": "k"}}]', ("b-1", "k", POINTER_CLASS)),
        # sqs-extended-client and the 1.x Java library: the legacy class
        (
            f'["{LEGACY_POINTER_CLASS}",{{"s3BucketName":"b-1","s3Key":"k"}}]',
            ("b-1", "k", LEGACY_POINTER_CLASS),
        ),
        # unknown properties are ignored (Jackson: FAIL_ON_UNKNOWN_PROPERTIES off); legacy bucket names
        (
            f' ["{POINTER_CLASS}",{{"s3BucketName":"Old_Bucket","s3Key":"é/k","x":1}}]',
            ("Old_Bucket", "é/k", POINTER_CLASS),
        ),
    ],
)
def test_pointers_of_every_library_are_read(body: str, want: tuple[str, str, str]) -> None:
    """Both pointer classes, spaced or compact JSON, extra properties: bucket, key and class come out."""
    pointer = parse_pointer(body)
    assert pointer is not None
    assert (pointer.bucket, pointer.key, pointer.pointer_class) == want


@pytest.mark.parametrize(
    "body",
    [
        "plain text",
        '{"s3BucketName": "b", "s3Key": "k"}',
        '["S3Pointer", "not a pointer class"]',
        '["something.else.S3Pointer", {"s3BucketName": "bkt", "s3Key": "k"}]',
        "[1, 2, 3]",
        f'["{POINTER_CLASS}", broken json',
        f'["{POINTER_CLASS}", {{"s3BucketName": "bkt", "s3Key": "{"k" * 9000}"}}]',  # too long for a pointer
    ],
)
def test_other_bodies_are_not_pointers(body: str) -> None:
    """Ordinary bodies, other arrays and oversized texts are no pointers: the handler gets them as sent."""
    assert parse_pointer(body) is None
    assert find_pointer(message(body)) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("", "not [class"),
        (', {"s3BucketName": "bkt"}', "lacks a string"),
        (', {"s3BucketName": "bkt", "s3Key": 7}', "lacks a string"),
        (', {"s3BucketName": "../etc", "s3Key": "k"}', "bucket must be"),
        (', {"s3BucketName": "a..b", "s3Key": "k"}', "must not contain"),
        (', {"s3BucketName": "bkt", "s3Key": ""}', "key is empty"),
        (', {"s3BucketName": "bkt", "s3Key": "' + "é" * 513 + '"}', "1026 bytes"),
        (', {"s3BucketName": "bkt", "s3Key": "k"}, 3', "not [class"),
    ],
)
def test_malformed_pointers_are_decode_errors(fields: str, reason: str) -> None:
    """A body naming a pointer class without a usable bucket and key is a DecodeError (dead-lettered)."""
    with pytest.raises(PointerError, match=re.escape(reason)):
        parse_pointer(f'["{POINTER_CLASS}"{fields}]')


def test_size_attribute_without_a_pointer_is_a_decode_error() -> None:
    """ExtendedPayloadSize (or the legacy SQSLargePayloadSize) on a body that is no pointer cannot be read."""
    for name in (SIZE_ATTRIBUTE, "SQSLargePayloadSize"):
        with pytest.raises(PointerError, match="not a payload pointer"):
            find_pointer(message("hello", {name: ("Number", "5")}))
    pointer = PayloadPointer("bkt", "k")
    assert find_pointer(message(pointer.to_body())) == pointer  # no attribute: the body decides


def test_declared_size() -> None:
    """The declared size is read from either attribute; garbage and negatives read as unknown."""
    assert declared_size(sized(PayloadPointer("bkt", "k"), 42).attributes) == 42
    assert declared_size(message("x", {"SQSLargePayloadSize": ("Number", " 7 ")}).attributes) == 7
    assert declared_size(message("x", {SIZE_ATTRIBUTE: ("Number", "-1")}).attributes) is None
    assert declared_size(message("x", {SIZE_ATTRIBUTE: ("String", "lots")}).attributes) is None
    assert declared_size(message("x").attributes) is None


def test_resolved_message_is_the_payload_for_the_handler_only() -> None:
    """body/json() are the payload (a fresh JSON cache), raw_body and sqs_attributes still the pointer's."""
    original = sized(PayloadPointer("bkt", "k"))
    assert isinstance(original.json(), list)  # the pointer array: fills the received message's cache
    seen = resolved(original, '{"order": 7}')
    assert seen.json() == {"order": 7}
    assert seen.body == '{"order": 7}'
    assert seen.raw_body == original.raw_body
    assert SIZE_ATTRIBUTE not in seen.attributes
    assert "run" in seen.attributes
    assert SIZE_ATTRIBUTE in seen.sqs_attributes  # what a dead-letter keeps
    assert original.json()[0] == POINTER_CLASS  # the received message is unchanged
    assert (seen.id, seen.receipt_handle, seen.queue_url) == (original.id, original.receipt_handle, QUEUE)


def test_resolved_sns_envelope_is_unwrapped() -> None:
    """A payload that was a whole SQS body holding an SNS notification is unwrapped like a received body."""
    envelope = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
            "Message": "inner payload",
            "MessageAttributes": {"tenant": {"Type": "String", "Value": "acme"}},
        }
    )
    seen = resolved(sized(PayloadPointer("bkt", "k")), envelope)
    assert seen.body == "inner payload"
    assert seen.sns is not None
    assert seen.sns.topic_arn.endswith(":t")
    assert seen.attributes["tenant"].value == "acme"


def test_object_keys() -> None:
    """Keys join a prefix and parts with single slashes; no prefix adds nothing."""
    assert object_key("", "dead-letters", "id", "0") == "dead-letters/id/0"
    assert (
        object_key("/a/b/", "records", "2026/01/01/Success/m.json") == "a/b/records/2026/01/01/Success/m.json"
    )


# -- the dead-letter copy of an oversized body (pure) --


def _failure(msg: Message) -> Any:
    return failure_record(
        msg,
        error_type="RuntimeError",
        error_message="boom",
        condition="RetriesExhausted",
        attempts=3,
        source_queue_arn="arn:aws:sqs:us-east-1:000000000000:source",
        handler="h:h",
        handler_version="v",
        now=datetime.now(UTC),
    )


def test_offloaded_dead_letter_keeps_ten_attributes_and_its_metadata() -> None:
    """The body becomes the pointer with ExtendedPayloadSize; 10 originals: 2 move into the metadata."""
    originals = {f"a{i}": ("String", f"v{i}") for i in range(10)}
    body = "x" * (SQS_MAX_MESSAGE_BYTES - 200)
    msg = message(body, originals)
    record = _failure(msg)
    pointer = PayloadPointer("bkt", dead_letter_object(record, "p"))
    assert pointer.key == f"p/dead-letters/{msg.id}/0"
    request = build_dead_letter(msg, record, fifo=False, offloaded=pointer)
    assert request["MessageBody"] == pointer.to_body()
    attributes = request["MessageAttributes"]
    assert len(attributes) == 10
    assert attributes[SIZE_ATTRIBUTE] == {"DataType": "Number", "StringValue": str(len(body))}
    dlq = message(
        request["MessageBody"], {k: (v["DataType"], v["StringValue"]) for k, v in attributes.items()}
    )
    restored = restore_attributes(dlq.sqs_attributes)
    assert {name: attr.value for name, attr in restored.items() if name != SIZE_ATTRIBUTE} == {
        name: value for name, (_, value) in originals.items()
    }
    failure = read_failure(dlq.sqs_attributes)
    assert failure is not None
    assert failure.error_message == "boom"  # the whole record fits now


# -- settings --


def test_settings_defaults_and_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults resolve and keep objects; each bad variable stops start-up with one line naming it."""
    settings = load_settings(queue_url=QUEUE, handler="a:b")
    assert settings.extended_payloads == ExtendedPayloadSettings()
    assert settings.extended_payloads.resolve is True
    assert settings.extended_payloads.delete_after_success is False
    assert settings.extended_payloads.bucket is None
    monkeypatch.setenv("WORKER_EXTENDED_PAYLOADS__ALLOWED_BUCKETS", "one-bucket, Legacy_Two")
    monkeypatch.setenv("WORKER_EXTENDED_PAYLOADS__BUCKET", "my.payloads-1")
    loaded = load_settings(queue_url=QUEUE, handler="a:b").extended_payloads
    assert loaded.allowed_buckets == ["one-bucket", "Legacy_Two"]
    assert loaded.bucket == "my.payloads-1"
    cases = {
        "WORKER_EXTENDED_PAYLOADS__BUCKET": ("Upper_Case", "WORKER_EXTENDED_PAYLOADS__BUCKET: must be 3-63"),
        "WORKER_EXTENDED_PAYLOADS__ALLOWED_BUCKETS": ("ok-bkt,a/b", "ALLOWED_BUCKETS: entry must be"),
        "WORKER_EXTENDED_PAYLOADS__MAX_BYTES": ("0", "WORKER_EXTENDED_PAYLOADS__MAX_BYTES: Input should be"),
        "WORKER_EXTENDED_PAYLOADS__TYPO": ("1", "WORKER_EXTENDED_PAYLOADS__TYPO: not a setting"),
    }
    for variable, (value, expected) in cases.items():
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            with pytest.raises(ConfigError) as caught:
                load_settings(queue_url=QUEUE, handler="a:b")
            assert expected in str(caught.value)
            assert "\n" not in str(caught.value)
    monkeypatch.setenv("WORKER_EXTENDED_PAYLOADS__RESOLVE", "false")
    monkeypatch.setenv("WORKER_EXTENDED_PAYLOADS__DELETE_AFTER_SUCCESS", "true")
    with pytest.raises(
        ConfigError, match="DELETE_AFTER_SUCCESS: needs WORKER_EXTENDED_PAYLOADS__RESOLVE=true"
    ):
        load_settings(queue_url=QUEUE, handler="a:b")


# -- resolving around the handler, with a fake store --


class FakeStore:
    """A PayloadStore stand-in: objects in a dict; counts reads and deletes."""

    def __init__(self, objects: dict[str, str]) -> None:
        self.objects = objects
        self.reads: list[str] = []
        self.deleted: list[str] = []

    async def fetch(self, pointer: PayloadPointer, max_bytes: int) -> str:
        """The object, or PayloadMissing."""
        self.reads.append(pointer.key)
        if pointer.key not in self.objects:
            raise PayloadMissing(f"payload {pointer.uri} does not exist (NoSuchKey)")
        return self.objects[pointer.key]

    async def delete(self, pointer: PayloadPointer) -> None:
        """Forget it."""
        self.deleted.append(pointer.key)
        self.objects.pop(pointer.key, None)


def _payloads(store: FakeStore, **settings: Any) -> ExtendedPayloads:
    payloads = ExtendedPayloads(ExtendedPayloadSettings(**settings))
    payloads.store = store  # type: ignore[assignment]
    return payloads


def _handler(calls: list[Any], *, batch: bool = False, report: object = None) -> LoadedHandler:
    async def invoke(msg: Message) -> object:
        calls.append(msg)
        return "ok"

    async def invoke_batch(messages: list[Message]) -> object:
        calls.append(list(messages))
        return report

    return LoadedHandler(path="t:h", invoke=invoke, invoke_batch=invoke_batch if batch else None)


async def test_wrapped_handler_sees_the_payload_and_failures_are_classified() -> None:
    """The handler gets the payload; missing object, other bucket and size cap fail before it runs."""
    store = FakeStore({"k": "the payload"})
    calls: list[Any] = []
    payloads = _payloads(store, allowed_buckets=["bkt"], max_bytes=100)
    handler = payloads.wrap(_handler(calls))
    assert await handler.invoke(sized(PayloadPointer("bkt", "k"))) == "ok"
    assert calls[-1].body == "the payload"
    plain = message("not a pointer")
    await handler.invoke(plain)
    assert calls[-1] is plain  # ordinary messages pass untouched, no S3 call
    assert store.reads == ["k"]
    with pytest.raises(PayloadMissing):
        await handler.invoke(sized(PayloadPointer("bkt", "gone")))
    with pytest.raises(PayloadNotAllowed):
        await handler.invoke(sized(PayloadPointer("other-bkt", "k")))
    with pytest.raises(PayloadTooLarge):
        await handler.invoke(sized(PayloadPointer("bkt", "k"), size=101))  # declared: no S3 call
    with pytest.raises(PointerError):
        await handler.invoke(message("x", {SIZE_ATTRIBUTE: ("Number", "1")}))
    assert store.reads == ["k", "gone"]
    assert len(calls) == 2
    off = _payloads(store, resolve=False)
    assert off.wrap(_handler(calls)).invoke is not handler.invoke  # resolve off: the handler as loaded
    pointer_message = sized(PayloadPointer("bkt", "k"))
    await off.wrap(_handler(calls)).invoke(pointer_message)
    assert calls[-1] is pointer_message


async def test_batch_handler_gets_what_resolved_and_a_report_of_the_rest() -> None:
    """In a batch the failed resolutions are reported per message; FIFO: the rest of their group waits."""
    store = FakeStore({"a": "A", "c": "C"})
    calls: list[Any] = []
    inner_failure = RuntimeError("handler says no")
    payloads = _payloads(store)
    ok_a = sized(PayloadPointer("bkt", "a"), 1)
    missing = sized(PayloadPointer("bkt", "missing"), 1)
    ok_c = message("plain")
    report = BatchResult(failures={ok_c.id: inner_failure}, responses={ok_a.id: 1})
    handler = payloads.wrap(_handler(calls, batch=True, report=report))
    assert handler.invoke_batch is not None
    result = await handler.invoke_batch([ok_a, missing, ok_c])
    assert [m.body for m in calls[-1]] == ["A", "plain"]
    assert isinstance(result, BatchResult)
    assert result.responses == {ok_a.id: 1}
    assert set(result.failures) == {missing.id, ok_c.id}
    assert isinstance(result.failures[missing.id], PayloadMissing)
    assert result.failures[ok_c.id] is inner_failure
    # FIFO: a group's messages after a failed resolution are not handed to the handler.
    g1 = [sized(PayloadPointer("bkt", key), 1) for key in ("missing", "a")]
    g1 = [
        parse_message(
            {**entry(m.raw_body, {SIZE_ATTRIBUTE: ("Number", "1")}), "Attributes": {"MessageGroupId": "g1"}},
            QUEUE,
        )
        for m in g1
    ]
    g2 = parse_message(
        {**entry(PayloadPointer("bkt", "c").to_body()), "Attributes": {"MessageGroupId": "g2"}}, QUEUE
    )
    handler = payloads.wrap(_handler(calls, batch=True, report=None))
    assert handler.invoke_batch is not None
    result = await handler.invoke_batch([*g1, g2])
    assert [m.body for m in calls[-1]] == ["C"]
    assert isinstance(result, BatchResult)
    assert set(result.failures) == {g1[0].id, g1[1].id}
    assert result.failures[g1[1].id] is None  # held back behind the group's failed message
    # All failed: the handler is not called with an empty batch.
    count = len(calls)
    result = await handler.invoke_batch([missing])
    assert len(calls) == count
    assert isinstance(result, BatchResult)
    assert set(result.failures) == {missing.id}


def _outcome(msg: Message, condition: Condition, *, deleted: bool = True) -> Outcome:
    return Outcome(
        message=msg,
        condition=condition,
        attempts=1,
        handler="t:h",
        handler_version="v",
        timestamp=0.0,
        deleted=deleted,
    )


async def test_cleanup_deletes_succeeded_payloads_only_and_forwards_every_outcome() -> None:
    """Only a pointer that succeeded and left SQS is deleted (not DLQ, plain, still queued); all forwarded."""
    store = FakeStore({"done": "x", "failed": "y", "kept": "z"})
    inner = Collecting()
    cleanup = PayloadCleanup(store, inner)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(cleanup.run)
        cleanup.submit(_outcome(sized(PayloadPointer("bkt", "done")), Condition.SUCCESS))
        cleanup.submit(_outcome(sized(PayloadPointer("bkt", "failed")), Condition.RETRIES_EXHAUSTED))
        cleanup.submit(_outcome(message("plain"), Condition.SUCCESS))
        # Succeeded, but its SQS delete failed: it comes back, so its payload must stay.
        cleanup.submit(_outcome(sized(PayloadPointer("bkt", "kept")), Condition.SUCCESS, deleted=False))
        await wait_for(lambda: cleanup.deleted == 1, timeout=5, what="the delete")
        tg.cancel_scope.cancel()
    assert store.deleted == ["done"]
    assert "failed" in store.objects
    assert "kept" in store.objects
    assert len(inner.outcomes) == 4
    assert (cleanup.failed, cleanup.skipped) == (0, 0)


async def test_oversized_records_become_pointers_with_an_offload() -> None:
    """Above the SQS/SNS limit a record is stored first, then sent as a pointer; below it, as itself."""

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []
            self.stored: list[tuple[PayloadPointer, bytes]] = []

        async def send_message(self, **request: Any) -> None:
            self.sent.append(request)

        async def publish(self, **request: Any) -> None:
            self.sent.append(request)

        async def put(self, pointer: PayloadPointer, data: bytes) -> None:
            self.stored.append((pointer, data))

    recorder = Recorder()
    offload = PayloadOffload(store=recorder, bucket="bkt", prefix="pre")  # type: ignore[arg-type]
    sqs = SqsDestination(parse_destination("http://127.0.0.1:1/000000000000/dest"), recorder, offload)  # type: ignore[arg-type]
    sns = SnsDestination(parse_destination("sns:arn:aws:sns:us-east-1:000000000000:t"), recorder, offload)  # type: ignore[arg-type]
    assert sqs.limit is None
    assert sns.limit is None
    small, big = _record("s" * 100), _record("b" * SNS_MAX_BYTES)
    await sns.deliver(small, None)
    assert recorder.sent[-1] == {
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
        "Message": small.to_json(),
    }
    await sns.deliver(big, None)
    pointer, data = recorder.stored[-1]
    assert pointer == PayloadPointer("bkt", f"pre/records/2026/01/02/Success/{big.message_id}.json")
    assert data == big.to_json().encode()
    assert recorder.sent[-1]["Message"] == pointer.to_body()
    assert recorder.sent[-1]["MessageAttributes"] == {
        SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(len(data))}
    }
    await sqs.deliver(big, None)  # 256 KiB fits SQS's 1 MiB: sent whole
    assert recorder.sent[-1]["MessageBody"] == big.to_json()
    assert len(recorder.stored) == 1
    without = SnsDestination(parse_destination("sns:arn:aws:sns:us-east-1:000000000000:t"), recorder)  # type: ignore[arg-type]
    assert without.limit == SNS_MAX_BYTES  # no bucket: cut as before


def _record(payload: str) -> DestinationRecord:
    return DestinationRecord(
        version="1.0",
        timestamp="2026-01-02T03:04:05.000Z",
        request_context=RequestContext("orig", "t:h", "Success", 1),
        request_payload=payload,
        response_context=ResponseContext(200, "v"),
        response_payload=None,
        worker=WorkerContext(queue_url=QUEUE, message_id=unique("m")),
    )


# -- LocalStack, with the real libraries as producers --


@pytest.fixture
async def bucket(aws: Callable[[str], Any]) -> AsyncIterator[str]:
    """A fresh S3 bucket, emptied and removed after the test."""
    s3 = await aws("s3")
    name = unique("payloads")
    await s3.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):  # best-effort cleanup of a throwaway bucket
        listed = await s3.list_objects_v2(Bucket=name)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=name, Key=item["Key"])
        await s3.delete_bucket(Bucket=name)


@contextlib.contextmanager
def _libraries() -> Iterator[tuple[Any, Any]]:
    """The two session classes, imported without leaving boto3.Session patched for the rest of the process."""
    import boto3
    import boto3.session

    session, default = boto3.session.Session, boto3.DEFAULT_SESSION
    try:
        from sns_extended_client.session import SNSExtendedClientSession
        from sqs_extended_client.client import SQSExtendedClientSession

        yield SQSExtendedClientSession, SNSExtendedClientSession
    finally:  # their packages replace boto3.Session at import: put the original back
        boto3.session.Session = session  # type: ignore[misc]
        boto3.Session = session  # type: ignore[misc]
        boto3.DEFAULT_SESSION = default


@dataclasses.dataclass
class Library:
    """The real extended clients on LocalStack (sync boto3: call them through ``run``)."""

    sqs: Any
    sns: Any
    s3: Any

    async def run(self, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        """Call a library method in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: fn(**kwargs))


@pytest.fixture(scope="module")
def extended_clients(localstack_endpoint: str) -> Library:
    """The SQS and SNS extended clients on LocalStack, made once (boto3 clients are costly to build)."""
    import boto3

    region = {"region_name": "us-east-1"}
    s3 = boto3.session.Session(**region).client("s3", endpoint_url=localstack_endpoint)
    with _libraries() as (sqs_session, sns_session):
        sqs = sqs_session(**region).client("sqs", endpoint_url=localstack_endpoint)
        sns = sns_session(**region).client("sns", endpoint_url=localstack_endpoint)
    for client in (sqs, sns):
        client.s3_client = s3  # the libraries make theirs from the session, without our endpoint
    return Library(sqs=sqs, sns=sns, s3=s3)


@pytest.fixture
def library(extended_clients: Library, bucket: str) -> Library:
    """The extended clients offloading to this test's ``bucket`` (every body above 256 KiB through S3)."""
    for client in (extended_clients.sqs, extended_clients.sns):
        client.large_payload_support = bucket
    return extended_clients


def _attributes(run: str) -> dict[str, dict[str, str]]:
    return {"run": {"DataType": "String", "StringValue": run}}


async def _objects(s3: Any, bucket: str) -> list[str]:
    listed = await s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.mark.localstack
async def test_sqs_extended_client_round_trip_through_the_worker(
    sqs: Any,
    queues: QueueFactory,
    aws: Callable[[str], Any],
    bucket: str,
    library: Library,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real library -> worker: the handler sees the payload; success deletes the object only after the SQS
    delete; a poison message reaches the DLQ as the pointer, ``worker dlq`` shows it, ``worker redrive``
    moves it back intact, and the worker then processes the payload."""
    s3 = await aws("s3")
    q = await queues()
    ok, poison = unique("run"), unique("run")
    payload_handlers.POISONED.add(poison)
    body = json.dumps({"text": TEXT}, ensure_ascii=False)
    depth_at_delete: list[int] = []
    original_delete = PayloadStore.delete

    async def spying_delete(self: PayloadStore, pointer: PayloadPointer) -> None:
        depth_at_delete.append(await depth(sqs, q["url"]))
        await original_delete(self, pointer)

    monkeypatch.setattr(PayloadStore, "delete", spying_delete)
    sink = Collecting()
    async with running_worker(
        q,
        sink=sink,
        handler="tests.payload_handlers:record",
        extended_payloads={"delete_after_success": True},
    ):
        await library.run(
            library.sqs.send_message, QueueUrl=q["url"], MessageBody=body, MessageAttributes=_attributes(ok)
        )
        [seen] = await wait_for(lambda: SEEN.get(ok), what="the handler's call")
        assert (seen.size, seen.digest) == (len(body.encode()), digest(body))
        assert json.loads(seen.raw_body)[0] == POINTER_CLASS
        assert SIZE_ATTRIBUTE not in seen.attributes
        assert "run" in seen.attributes
        await wait_for(lambda: depth_at_delete, what="the payload's delete")
        assert depth_at_delete == [0]  # the message had left the queue when its object was deleted
        assert await wait_for(lambda: _no_objects(s3, bucket), timeout=10, what="the object deleted")

        # A poison message: dead-lettered as the pointer, its object kept (no delete on failure).
        await library.run(
            library.sqs.send_message,
            QueueUrl=q["url"],
            MessageBody=body,
            MessageAttributes=_attributes(poison),
        )
        await wait_for(lambda: _depth_is(sqs, q["dlq_url"], 1), what="the dead-letter")
        [key] = await _objects(s3, bucket)
        [first] = SEEN[poison]
        assert first.digest == digest(body)
        args = build_parser().parse_args(["dlq", "--dlq", q["dlq_url"], "--json", "--show-body"])
        report = await inspect(args, ToolSettings())
        [row] = report["scan"]["records"]
        assert row["body"] == first.raw_body  # the pointer, byte for byte
        assert row["error_type"] == "PermanentError"
        assert SIZE_ATTRIBUTE in row["attributes"]
        assert json.loads(row["body"])[1] == {"s3BucketName": bucket, "s3Key": key}

        payload_handlers.POISONED.discard(poison)
        result = await redrive(q["dlq_url"], mode="app")
        assert result.tally.moved == 1
        await wait_for(lambda: len(SEEN[poison]) == 2, what="the redriven message's call")
        again = SEEN[poison][1]
        assert again.raw_body == first.raw_body  # redrive sent the pointer on, not the payload
        assert again.digest == digest(body)
        assert await wait_for(lambda: _no_objects(s3, bucket), timeout=10, what="the object deleted")
    assert depth_at_delete == [0, 0]
    assert [o.condition for o in sink.outcomes] == [
        Condition.SUCCESS,
        Condition.PERMANENT_ERROR,
        Condition.SUCCESS,
    ]
    assert json.loads(sink.outcomes[0].message.body)[0] == POINTER_CLASS  # records keep the pointer too


async def _no_objects(s3: Any, bucket: str) -> bool:
    return not await _objects(s3, bucket)


async def _depth_is(sqs: Any, url: str, want: int) -> bool:
    return await depth(sqs, url) == want


@pytest.mark.localstack
async def test_sns_extended_client_raw_and_enveloped(
    sqs: Any, queues: QueueFactory, aws: Callable[[str], Any], library: Library
) -> None:
    """The SNS library's pointer is resolved from an SNS envelope and from raw delivery alike."""
    sns = await aws("sns")
    topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
    enveloped, raw = await queues(), await queues()
    for q, is_raw in ((enveloped, "false"), (raw, "true")):
        await sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=q["arn"], Attributes={"RawMessageDelivery": is_raw}
        )
    run = unique("run")
    body = TEXT + "!"
    try:
        async with (
            running_worker(enveloped, handler="tests.payload_handlers:record"),
            running_worker(raw, handler="tests.payload_handlers:record"),
        ):
            await library.run(
                library.sns.publish, TopicArn=topic, Message=body, MessageAttributes=_attributes(run)
            )
            seen = await wait_for(lambda: len(SEEN.get(run, ())) == 2 and SEEN[run], what="both deliveries")
    finally:
        await sns.delete_topic(TopicArn=topic)
    assert all((s.size, s.digest) == (len(body.encode()), digest(body)) for s in seen)
    assert sorted(s.topic_arn is not None for s in seen) == [False, True]  # one envelope, one raw
    assert all(SIZE_ATTRIBUTE not in s.attributes and "run" in s.attributes for s in seen)


@pytest.mark.localstack
async def test_oversized_destination_record_is_a_pointer_the_library_reads(
    sqs: Any, queues: QueueFactory, aws: Callable[[str], Any], bucket: str, library: Library
) -> None:
    """An on-success record above SNS's 256 KiB goes to S3; the SNS message is a pointer the SQS extended
    client library resolves to the complete record."""
    sns = await aws("sns")
    topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
    q, out = await queues(), await queues()
    await sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=out["arn"], Attributes={"RawMessageDelivery": "true"}
    )
    run = unique("run")
    body = "p" * 200_000  # a plain message: echoed, its record holds it twice
    try:
        async with running_worker(
            q,
            sink=None,
            handler="tests.payload_handlers:echo",
            on_success=f"sns:{topic}",
            extended_payloads={"bucket": bucket, "prefix": "worker"},
        ):
            await sqs.send_message(QueueUrl=q["url"], MessageBody=body, MessageAttributes=_attributes(run))
            await wait_for(lambda: _depth_is(sqs, out["url"], 1), what="the record's message")
    finally:
        await sns.delete_topic(TopicArn=topic)
    received = await library.run(
        library.sqs.receive_message, QueueUrl=out["url"], MessageAttributeNames=["All"], WaitTimeSeconds=1
    )
    [entry_] = received["Messages"]
    record = json.loads(entry_["Body"])  # the library fetched the object the pointer names
    assert record["requestPayload"] == body
    assert record["responsePayload"] == {"echo": body}
    assert "truncated" not in record
    [key] = await _objects(await aws("s3"), bucket)
    assert key.startswith("worker/records/")
    assert key.endswith(f"/Success/{record['worker']['messageId']}.json")


@pytest.mark.localstack
async def test_dead_letter_too_large_for_its_metadata_goes_through_s3(
    sqs: Any, queues: QueueFactory, aws: Callable[[str], Any], bucket: str, library: Library
) -> None:
    """A body with no room for worker.failure: stored in S3 first, then the DLQ copy is the pointer with
    the metadata; redrive sends the pointer on and the library reads the original body from the source.
    Without a reachable bucket nothing is sent (the message stays on the source queue)."""
    s3 = await aws("s3")
    q = await queues()
    body = "z" * (SQS_MAX_MESSAGE_BYTES - 100)
    msg = parse_message(
        {**entry(body, {"tenant": ("String", "acme")}), "Attributes": {"SentTimestamp": "1717230000000"}},
        q["url"],
    )

    def writer(offload: PayloadOffload) -> DeadLetterWriter:
        return DeadLetterWriter(
            sqs,
            q["dlq_url"],
            source_queue_arn=q["arn"],
            handler="h:h",
            handler_version="v",
            metrics=Metrics(),
            offload=offload,
        )

    store = PayloadStore()
    try:
        missing = PayloadOffload(store=store, bucket=unique("nobucket"))
        assert not await writer(missing).send(msg, "RetriesExhausted", "RuntimeError", "boom", 3)
        assert await depth(sqs, q["dlq_url"]) == 0  # S3 refused: no DLQ copy either
        assert await writer(PayloadOffload(store=store, bucket=bucket, prefix="dlq")).send(
            msg, "RetriesExhausted", "RuntimeError", "boom", 3
        )
        stored = PayloadPointer(bucket, f"dlq/dead-letters/{msg.id}/0")
        assert await store.fetch(stored, len(body)) == body  # read back in several chunks
        with pytest.raises(PayloadTooLarge):
            await store.fetch(stored, len(body) - 1)
        with pytest.raises(PayloadMissing, match="NoSuchKey"):
            await store.fetch(PayloadPointer(bucket, "no/such/key"), 10)
        with pytest.raises(PayloadMissing, match="NoSuchBucket"):
            await store.fetch(PayloadPointer(unique("nobucket"), "k"), 10)
    finally:
        await store.aclose()
    with pytest.raises(PayloadUnavailable, match="closed"):
        await store.fetch(stored, len(body))
    peek = await sqs.receive_message(QueueUrl=q["dlq_url"], MessageAttributeNames=["All"], WaitTimeSeconds=1)
    [copy] = peek["Messages"]
    await sqs.change_message_visibility(
        QueueUrl=q["dlq_url"], ReceiptHandle=copy["ReceiptHandle"], VisibilityTimeout=0
    )
    pointer = parse_pointer(copy["Body"])
    assert pointer == PayloadPointer(bucket, f"dlq/dead-letters/{msg.id}/0")
    assert copy["MessageAttributes"][SIZE_ATTRIBUTE]["StringValue"] == str(len(body))
    failure = json.loads(copy["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"])
    assert (failure["error_message"], failure["original_message_id"]) == ("boom", msg.id)
    stored = await s3.get_object(Bucket=bucket, Key=pointer.key)
    async with stored["Body"] as stream:
        assert (await stream.read()).decode() == body
    result = await redrive(q["dlq_url"], queue_url=q["url"], mode="app")
    assert result.tally.moved == 1
    received = await library.run(
        library.sqs.receive_message, QueueUrl=q["url"], MessageAttributeNames=["All"], WaitTimeSeconds=2
    )
    [back] = received["Messages"]
    assert back["Body"] == body  # the library resolved the worker's pointer
    assert back["MessageAttributes"]["tenant"]["StringValue"] == "acme"
    assert FAILURE_ATTRIBUTE in back["MessageAttributes"]  # the redrive's record rides along
