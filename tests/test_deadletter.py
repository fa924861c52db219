"""The dead-letter record (pure parts): building the DLQ message within SQS limits, reading it back."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker._version import __version__
from worker.deadletter.record import (
    FAILURE_ATTRIBUTE,
    FORMAT_VERSION,
    MAX_ERROR_CHARS,
    DeadLetterTooLarge,
    FailureRecord,
    build_dead_letter,
    dead_letter_dedup_id,
    failure_record,
    message_size,
    read_failure,
    restore_attributes,
)
from worker.engine.message import Message, MessageAttribute, parse_message, parse_sqs_attributes
from worker.limits import SQS_MAX_ATTRIBUTES, SQS_MAX_MESSAGE_BYTES

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"
NOW = datetime(2024, 6, 1, 8, 30, 0, 250000, tzinfo=UTC)
#: What the failure attribute's name and type add to the message size.
RECORD_OVERHEAD = len(FAILURE_ATTRIBUTE) + len("String")
PROPS = settings(max_examples=200, deadline=None)
#: Characters SQS allows in a MessageDeduplicationId.
DEDUP_ID = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")


def make_message(
    body: str = '{"order": 1}',
    attributes: dict[str, MessageAttribute] | None = None,
    *,
    message_id: str = "11111111-2222-4333-8444-555555555555",
    receive_count: int = 5,
    group: str | None = None,
) -> Message:
    """A message as parse_message builds it from a ReceiveMessage entry."""
    system = {
        "ApproximateReceiveCount": str(receive_count),
        "SentTimestamp": "1717230000000",
        "ApproximateFirstReceiveTimestamp": "1717230001500",
    }
    if group is not None:
        system["MessageGroupId"] = group
        system["MessageDeduplicationId"] = "producer-dedup"
    entry: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": "rh",
        "Body": body,
        "Attributes": system,
        "MessageAttributes": {name: attr.to_sqs() for name, attr in (attributes or {}).items()},
    }
    return parse_message(entry, QUEUE)


def record_for(
    message: Message, error_message: str = "boom", previous: FailureRecord | None = None
) -> FailureRecord:
    """The failure record the DeadLetterWriter would build."""
    return failure_record(
        message,
        error_type="ValueError",
        error_message=error_message,
        condition="RetriesExhausted",
        attempts=5,
        source_queue_arn=QUEUE_ARN,
        handler="app.handlers:handle",
        handler_version="1.4.2",
        now=NOW,
        previous=previous,
    )


def received(request: dict[str, Any], *, message_id: str, receive_count: int = 1) -> Message:
    """The DLQ copy (or a redriven copy) as a consumer would receive it."""
    entry = {
        "MessageId": message_id,
        "ReceiptHandle": "rh2",
        "Body": request["MessageBody"],
        "Attributes": {"ApproximateReceiveCount": str(receive_count)},
        "MessageAttributes": request["MessageAttributes"],
    }
    return parse_message(entry, QUEUE)


def attrs_of(request: dict[str, Any]) -> dict[str, MessageAttribute]:
    """The request's attributes parsed back as a consumer sees them."""
    return parse_sqs_attributes(request["MessageAttributes"])


def request_size(request: dict[str, Any]) -> int:
    """SQS size of a SendMessage request."""
    return message_size(request["MessageBody"], attrs_of(request))


def ten_attributes() -> dict[str, MessageAttribute]:
    """Ten attributes of every kind, Binary ones included (the last by name is Binary)."""
    attrs = {f"a{i}": MessageAttribute("String", f"value {i} ✓") for i in range(7)}
    attrs["a7"] = MessageAttribute("Number", "3.25")
    attrs["a8"] = MessageAttribute("Binary", b"\x00\x01\xfe")
    attrs["a9"] = MessageAttribute("Binary.gz", bytes(range(256)))
    return attrs


# --- the copy keeps the message ---------------------------------------------------------------------------


def test_body_kept_byte_for_byte() -> None:
    """MessageBody is the source raw_body exactly (whitespace, unicode, escapes untouched)."""
    body = '  {"b": "é\\u00e9 😀",\n\t"a": [1, 2.50]}  \r\n'
    message = make_message(body)
    request = build_dead_letter(message, record_for(message), fifo=False)
    assert request["MessageBody"] == body
    assert request["MessageBody"].encode() == body.encode()


def test_sns_message_keeps_envelope_and_only_sqs_attributes() -> None:
    """An SNS-delivered message is dead-lettered as its raw envelope, with its SQS attributes only."""
    envelope = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Message": "inner",
            "MessageAttributes": {"sns_attr": {"Type": "String", "Value": "x"}},
        }
    )
    message = make_message(envelope, {"sqs_attr": MessageAttribute("String", "y")})
    assert message.body == "inner"
    request = build_dead_letter(message, record_for(message), fifo=False)
    assert request["MessageBody"] == envelope
    assert set(request["MessageAttributes"]) == {"sqs_attr", FAILURE_ATTRIBUTE}


def test_original_attributes_kept_plus_failure_attribute() -> None:
    """Original attributes go out unchanged in SendMessage shape, plus one String worker.failure."""
    originals = {
        "s": MessageAttribute("String", "text"),
        "n": MessageAttribute("Number.int", "42"),
        "b": MessageAttribute("Binary", b"\x00\xff"),
    }
    message = make_message(attributes=originals)
    request = build_dead_letter(message, record_for(message), fifo=False)
    sent = request["MessageAttributes"]
    assert {k: v for k, v in sent.items() if k != FAILURE_ATTRIBUTE} == {
        name: attr.to_sqs() for name, attr in originals.items()
    }
    assert sent["b"] == {"DataType": "Binary", "BinaryValue": b"\x00\xff"}
    assert sent[FAILURE_ATTRIBUTE]["DataType"] == "String"
    assert restore_attributes(attrs_of(request)) == originals


def test_failure_record_read_back_has_every_field() -> None:
    """worker.failure is JSON that read_failure turns back into the full record."""
    message = make_message(receive_count=4)
    request = build_dead_letter(message, record_for(message, "handler blew up"), fifo=False)
    raw = json.loads(request["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"])
    assert raw["v"] == FORMAT_VERSION == 1
    record = read_failure(attrs_of(request))
    assert record is not None
    assert record.v == 1
    assert record.error_type == "ValueError"
    assert record.error_message == "handler blew up"
    assert record.condition == "RetriesExhausted"
    assert record.attempts == 5
    assert record.receive_count == 4
    assert record.first_received_at == "2024-06-01T08:20:01.500000Z"
    assert record.sent_at == "2024-06-01T08:20:00Z"
    assert record.dead_lettered_at == "2024-06-01T08:30:00.250000Z"
    assert record.source_queue_url == QUEUE
    assert record.source_queue_arn == QUEUE_ARN
    assert record.handler == "app.handlers:handle"
    assert record.handler_version == "1.4.2"
    assert record.worker_version == __version__
    assert record.original_message_id == message.id
    assert record.redrive_count == 0
    assert record.history == ()
    assert dict(record.displaced_attributes) == {}
    assert record == record_for(message, "handler blew up")


def test_error_message_cut_to_limit() -> None:
    """failure_record keeps at most MAX_ERROR_CHARS characters of the error message."""
    record = record_for(make_message(), "e" * (MAX_ERROR_CHARS + 500))
    assert record.error_message == "e" * MAX_ERROR_CHARS


def test_error_message_with_lone_surrogate_is_sendable() -> None:
    """An error text with a lone surrogate (os.fsdecode of bad bytes) still builds and reads back equal."""
    message = make_message()
    text = "cannot open " + b"\xff".decode("utf-8", "surrogateescape") + " \ufffe"
    request = build_dead_letter(message, record_for(message, text), fifo=False)
    value = request["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"]
    assert value.isascii()
    record = read_failure(attrs_of(request))
    assert record is not None
    assert record.error_message == text


# --- ten-attribute limit ----------------------------------------------------------------------------------


def test_ten_originals_one_displaced_and_restored() -> None:
    """10 originals: 10 attributes go out, the last by name rides in the record, restore gives all back."""
    originals = ten_attributes()
    message = make_message(attributes=originals)
    request = build_dead_letter(message, record_for(message), fifo=False)
    sent = request["MessageAttributes"]
    assert len(sent) == SQS_MAX_ATTRIBUTES
    assert "a9" not in sent
    record = read_failure(attrs_of(request))
    assert record is not None
    assert set(record.displaced_attributes) == {"a9"}
    restored = restore_attributes(attrs_of(request))
    assert restored == originals
    assert restored["a9"].value == bytes(range(256))


def test_nine_originals_nothing_displaced() -> None:
    """With 9 originals the copy has exactly 10 attributes and displaces nothing."""
    originals = dict(list(ten_attributes().items())[:9])
    message = make_message(attributes=originals)
    request = build_dead_letter(message, record_for(message), fifo=False)
    assert len(request["MessageAttributes"]) == SQS_MAX_ATTRIBUTES
    record = read_failure(attrs_of(request))
    assert record is not None
    assert dict(record.displaced_attributes) == {}
    assert "displaced_attributes" not in request["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"]
    assert restore_attributes(attrs_of(request)) == originals


def test_restore_without_record_just_drops_nothing() -> None:
    """restore_attributes of a message without worker.failure (moved by the broker) is the identity."""
    originals = ten_attributes()
    assert restore_attributes(originals) == originals


# --- the 1 MiB limit --------------------------------------------------------------------------------------


def test_message_size_counts_utf8_bytes_names_types_values() -> None:
    """message_size = body bytes + each attribute's name, type and value bytes."""
    attrs = {"ab": MessageAttribute("String", "xyz"), "é": MessageAttribute("Binary", b"\x00\x01")}
    assert message_size("é€", attrs) == (2 + 3) + (2 + 6 + 3) + (2 + 6 + 2)
    assert message_size("", {}) == 0


def shrunk(record: FailureRecord) -> tuple[FailureRecord, FailureRecord]:
    """The shortened and minimal forms of a record, as documented: error cut to 256 chars / dropped."""
    short = dataclasses.replace(record, error_message=record.error_message[:256])
    minimal = dataclasses.replace(
        record, error_message="", history=(), source_queue_url="", handler_version=""
    )
    return short, minimal


def json_bytes(record: FailureRecord) -> int:
    """Bytes of the record's JSON."""
    return len(record.to_json().encode())


def test_size_boundaries_full_short_minimal_too_large() -> None:
    """Near 1 MiB: the full record while it fits, then the shortened, then the minimal, then an error."""
    record = record_for(make_message(), "x" * 5000)
    short, minimal = shrunk(record)
    assert json_bytes(record) > json_bytes(short) > json_bytes(minimal)

    def build(body_len: int) -> dict[str, Any]:
        message = make_message("a" * body_len)
        return build_dead_letter(message, record_for(message, "x" * 5000), fifo=False)

    full_fit = SQS_MAX_MESSAGE_BYTES - RECORD_OVERHEAD - json_bytes(record)
    request = build(full_fit)
    assert request_size(request) == SQS_MAX_MESSAGE_BYTES
    got = read_failure(attrs_of(request))
    assert got is not None
    assert len(got.error_message) == MAX_ERROR_CHARS

    request = build(full_fit + 1)
    got = read_failure(attrs_of(request))
    assert got is not None
    assert got.error_message == "x" * 256
    assert request_size(request) <= SQS_MAX_MESSAGE_BYTES

    short_fit = SQS_MAX_MESSAGE_BYTES - RECORD_OVERHEAD - json_bytes(short)
    request = build(short_fit + 1)
    got = read_failure(attrs_of(request))
    assert got is not None
    assert (got.error_message, got.source_queue_url, got.handler_version) == ("", "", "")
    assert (got.error_type, got.condition, got.attempts) == ("ValueError", "RetriesExhausted", 5)
    assert got.original_message_id == "11111111-2222-4333-8444-555555555555"
    assert request_size(request) <= SQS_MAX_MESSAGE_BYTES

    minimal_fit = SQS_MAX_MESSAGE_BYTES - RECORD_OVERHEAD - json_bytes(minimal)
    assert request_size(build(minimal_fit)) == SQS_MAX_MESSAGE_BYTES
    with pytest.raises(DeadLetterTooLarge):
        build(minimal_fit + 1)
    with pytest.raises(DeadLetterTooLarge):
        build(SQS_MAX_MESSAGE_BYTES)


def test_size_counts_multibyte_body_bytes() -> None:
    """A body of 3-byte characters near the limit is measured in bytes, not characters."""
    body = "€" * (SQS_MAX_MESSAGE_BYTES // 3)
    message = make_message(body)
    with pytest.raises(DeadLetterTooLarge):
        build_dead_letter(message, record_for(message), fifo=False)
    body = "€" * ((SQS_MAX_MESSAGE_BYTES - 2000) // 3)
    message = make_message(body)
    request = build_dead_letter(message, record_for(message), fifo=False)
    assert request["MessageBody"] == body
    assert request_size(request) <= SQS_MAX_MESSAGE_BYTES


def test_minimal_record_keeps_displaced_attributes() -> None:
    """Even the minimal record keeps displaced attributes, so nothing is lost near the size limit."""
    originals = ten_attributes()
    probe = make_message(attributes=originals)
    full = read_failure(attrs_of(build_dead_letter(probe, record_for(probe, "x" * 3000), fifo=False)))
    assert full is not None
    _, minimal = shrunk(full)
    kept = {k: v for k, v in originals.items() if k != "a9"}
    body_len = SQS_MAX_MESSAGE_BYTES - message_size("", kept) - RECORD_OVERHEAD - json_bytes(minimal)
    message = make_message("a" * body_len, originals)
    request = build_dead_letter(message, record_for(message, "x" * 3000), fifo=False)
    assert request_size(request) == SQS_MAX_MESSAGE_BYTES
    record = read_failure(attrs_of(request))
    assert record is not None
    assert record.error_message == ""
    assert restore_attributes(attrs_of(request)) == originals


def encoded(attr: MessageAttribute) -> dict[str, str]:
    """An attribute as the record stores a displaced one."""
    if isinstance(attr.value, bytes):
        return {"DataType": attr.data_type, "BinaryValue": base64.b64encode(attr.value).decode()}
    return {"DataType": attr.data_type, "StringValue": attr.value}


attribute_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}", fullmatch=True).filter(
    lambda n: n != FAILURE_ATTRIBUTE
)
attribute_values = st.one_of(
    st.builds(MessageAttribute, st.just("String"), st.text(min_size=1, max_size=300)),
    st.builds(MessageAttribute, st.just("Number"), st.integers().map(str)),
    st.builds(
        MessageAttribute, st.sampled_from(["Binary", "Binary.x"]), st.binary(min_size=1, max_size=3000)
    ),
)
body_lengths = st.one_of(
    st.integers(0, 5000),
    st.integers(SQS_MAX_MESSAGE_BYTES - 40_000, SQS_MAX_MESSAGE_BYTES),
    st.just(SQS_MAX_MESSAGE_BYTES),
)


@given(
    body_len=body_lengths,
    char=st.sampled_from(["a", "é", "€", "😀"]),
    originals=st.dictionaries(attribute_names, attribute_values, max_size=10),
    error=st.text(max_size=3000),
    fifo=st.booleans(),
)
@PROPS
def test_every_dead_letter_fits_sqs_limits(
    body_len: int, char: str, originals: dict[str, MessageAttribute], error: str, fifo: bool
) -> None:
    """Every copy is <= 1 MiB with <= 10 attributes and restores exactly; it refuses only when needed."""
    body = char * (body_len // len(char.encode()))
    message = make_message(body, originals, group="g" if fifo else None)
    record = record_for(message, error)
    try:
        request = build_dead_letter(message, record, fifo=fifo)
    except DeadLetterTooLarge:
        names = sorted(originals)
        kept = {n: originals[n] for n in names[: SQS_MAX_ATTRIBUTES - 1]}
        displaced = {n: encoded(originals[n]) for n in names[SQS_MAX_ATTRIBUTES - 1 :]}
        _, minimal = shrunk(dataclasses.replace(record, displaced_attributes=displaced))
        assert message_size(body, kept) + RECORD_OVERHEAD + json_bytes(minimal) > SQS_MAX_MESSAGE_BYTES
        return
    assert request["MessageBody"] == body
    assert len(request["MessageAttributes"]) <= SQS_MAX_ATTRIBUTES
    assert request_size(request) <= SQS_MAX_MESSAGE_BYTES
    assert restore_attributes(attrs_of(request)) == originals
    assert read_failure(attrs_of(request)) is not None


# --- FIFO -------------------------------------------------------------------------------------------------


def test_fifo_keeps_group_and_derives_dedup_id_from_message_id() -> None:
    """FIFO: MessageGroupId is the source group; the dedup id comes from the message id, not the body."""
    message = make_message("same body", group="customer-7")
    request = build_dead_letter(message, record_for(message), fifo=True)
    assert request["MessageGroupId"] == "customer-7"
    dedup = request["MessageDeduplicationId"]
    assert dedup == dead_letter_dedup_id(message.id, 0)
    assert message.id in dedup
    assert dedup != "producer-dedup"
    assert DEDUP_ID.fullmatch(dedup)


def test_fifo_dedup_id_ignores_content() -> None:
    """Same body, different ids: different dedup ids; same id, different body/error: the same one."""
    a = make_message("same body", message_id="id-a", group="g")
    b = make_message("same body", message_id="id-b", group="g")
    a2 = make_message("other body", message_id="id-a", group="g")
    ids = [
        build_dead_letter(m, record_for(m, err), fifo=True)["MessageDeduplicationId"]
        for m, err in ((a, "x"), (b, "x"), (a2, "y"))
    ]
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]


@given(
    message_id=st.text(alphabet="abcdef0123456789-", min_size=1, max_size=400), redrives=st.integers(0, 10**6)
)
@PROPS
def test_dedup_id_within_sqs_limits(message_id: str, redrives: int) -> None:
    """The dedup id is 1..128 allowed characters for any message id length and redrive count."""
    assert DEDUP_ID.fullmatch(dead_letter_dedup_id(message_id, redrives))


def test_standard_queue_has_no_fifo_fields() -> None:
    """A standard DLQ request carries neither MessageGroupId nor MessageDeduplicationId."""
    message = make_message(group=None)
    request = build_dead_letter(message, record_for(message), fifo=False)
    assert "MessageGroupId" not in request
    assert "MessageDeduplicationId" not in request


# --- redrive history --------------------------------------------------------------------------------------


def redrive_chain() -> tuple[list[dict[str, Any]], list[FailureRecord]]:
    """Dead-letter a FIFO message 3 times, redriven in between (new id, attributes unchanged, as the
    broker's move task does); return each DLQ request and record."""
    message = make_message(attributes=ten_attributes(), message_id="orig-1", group="g")
    previous: FailureRecord | None = None
    requests: list[dict[str, Any]] = []
    records: list[FailureRecord] = []
    for n in range(1, 4):
        record = record_for(message, f"failure {n}", previous=previous)
        request = build_dead_letter(message, record, fifo=True)
        requests.append(request)
        records.append(record)
        message = received(request, message_id=f"redriven-{n}", receive_count=5)
        previous = read_failure(message.sqs_attributes)
        assert previous is not None
    return requests, records


def test_redrive_history_grows_and_keeps_original_id() -> None:
    """A redriven message failing again: its record has the earlier ones in history and the first id."""
    _, records = redrive_chain()
    assert [r.original_message_id for r in records] == ["orig-1"] * 3
    assert [[h["error_message"] for h in r.history] for r in records] == [
        [],
        ["failure 1"],
        ["failure 1", "failure 2"],
    ]
    assert records[2].history[0]["original_message_id"] == "orig-1"
    assert all("history" not in h and "displaced_attributes" not in h for h in records[2].history)


def test_redrive_count_increments() -> None:
    """Each redrive of a dead-lettered message counts: 0, 1, 2."""
    _, records = redrive_chain()
    assert [r.redrive_count for r in records] == [0, 1, 2]


def test_redriven_dead_letters_get_distinct_dedup_ids() -> None:
    """A FIFO DLQ must not drop the second dead-letter of a redriven message as a duplicate of the first."""
    requests, _ = redrive_chain()
    dedup_ids = [r["MessageDeduplicationId"] for r in requests]
    assert len(set(dedup_ids)) == 3
    assert all("orig-1" in d and DEDUP_ID.fullmatch(d) for d in dedup_ids)


def test_redriven_dead_letters_keep_body_and_all_attributes() -> None:
    """After redrives the DLQ copy still has the original body and all 10 original attributes."""
    requests, _ = redrive_chain()
    for request in requests:
        assert request["MessageBody"] == '{"order": 1}'
        assert len(request["MessageAttributes"]) <= SQS_MAX_ATTRIBUTES
        assert restore_attributes(attrs_of(request)) == ten_attributes()


def test_same_life_dead_lettered_twice_keeps_dedup_id() -> None:
    """Redelivery of the same (not redriven) message gives the same dedup id, so SQS drops the duplicate."""
    message = make_message(group="g")
    again = make_message(group="g", receive_count=6)
    first = build_dead_letter(message, record_for(message), fifo=True)
    second = build_dead_letter(again, record_for(again, "other"), fifo=True)
    assert first["MessageDeduplicationId"] == second["MessageDeduplicationId"]


# --- reading back garbage ---------------------------------------------------------------------------------


def valid_record_json(**changes: Any) -> str:
    """A well-formed record's JSON with some fields changed."""
    data = json.loads(record_for(make_message()).to_json())
    data.update(changes)
    return json.dumps(data)


GARBAGE = {
    "not json": "not json",
    "a list": "[1, 2]",
    "deeply nested": "[" * 100_000,
    "fields missing": json.dumps({"v": 1}),
    "other version": valid_record_json(v=2),
    "history not a list": valid_record_json(history=5),
    "history of strings": valid_record_json(history=["x"]),
    "displaced not an object": valid_record_json(displaced_attributes=["x"]),
    "displaced value not an object": valid_record_json(displaced_attributes={"x": 1}),
    "displaced without type": valid_record_json(displaced_attributes={"x": {"StringValue": "no type"}}),
    "displaced bad base64": valid_record_json(
        displaced_attributes={"x": {"DataType": "Binary", "BinaryValue": "abc"}}
    ),
    "redrive_count not a number": valid_record_json(redrive_count="a"),
}


@pytest.mark.parametrize("value", list(GARBAGE.values()), ids=list(GARBAGE))
def test_unreadable_record_reads_as_none(value: str) -> None:
    """A malformed worker.failure reads as no record; restore and build still work, nothing raises."""
    attrs = {FAILURE_ATTRIBUTE: MessageAttribute("String", value), "k": MessageAttribute("String", "v")}
    assert read_failure(attrs) is None
    assert restore_attributes(attrs) == {"k": MessageAttribute("String", "v")}
    message = make_message(attributes=attrs)
    request = build_dead_letter(message, record_for(message, previous=read_failure(attrs)), fifo=True)
    assert set(request["MessageAttributes"]) == {"k", FAILURE_ATTRIBUTE}


def test_no_failure_attribute_reads_as_none() -> None:
    """A message moved by the broker (no worker.failure) has no record."""
    assert read_failure({"k": MessageAttribute("String", "v")}) is None


def test_valid_record_json_round_trip() -> None:
    """valid_record_json() (used above) is itself readable, so the garbage cases fail for their own reason."""
    attrs = {FAILURE_ATTRIBUTE: MessageAttribute("String", valid_record_json())}
    assert read_failure(attrs) == record_for(make_message())
