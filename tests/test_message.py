"""Parsing of ReceiveMessage entries and SNS envelopes into Message (pure, no network)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from worker.engine.message import Message, MessageAttribute, parse_message, parse_or_fallback
from worker.errors import DecodeError, SchemaError

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
TOPIC = "arn:aws:sns:us-east-1:123456789012:orders-topic"
PROPS = settings(max_examples=200, deadline=None)


def entry(body: str, *, attributes: dict[str, Any] | None = None, **system: str) -> dict[str, Any]:
    """A ReceiveMessage entry as aiobotocore returns it."""
    out: dict[str, Any] = {
        "MessageId": "6f1c5b6e-0000-4000-8000-000000000001",
        "ReceiptHandle": "AQEB-receipt-handle",
        "MD5OfBody": "ignored",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "1", **system},
    }
    if attributes is not None:
        out["MessageAttributes"] = attributes
    return out


def envelope(message: object = "payload", **overrides: object) -> dict[str, Any]:
    """An SNS notification envelope (raw message delivery off), as a dict."""
    doc: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": "0b4d6f3a-sns-message-id",
        "TopicArn": TOPIC,
        "Subject": "order created",
        "Message": message,
        "Timestamp": "2024-05-01T12:34:56.789Z",
        "SignatureVersion": "1",
        "Signature": "c2lnbmF0dXJl",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    doc.update(overrides)
    return doc


SQS_ATTRIBUTES = {
    "trace": {"DataType": "String", "StringValue": "abc-123"},
    "amount": {"DataType": "Number", "StringValue": "12.50"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffraw"},
    "png": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG"},
    "count": {"DataType": "Number.int", "StringValue": "7"},
}


# --- raw SQS delivery -----------------------------------------------------------------------------------


def test_raw_entry_fields() -> None:
    """A plain SQS entry keeps id, receipt handle, queue and an identical body/raw_body, no SNS info."""
    message = parse_message(entry('{"order": 1}'), QUEUE)
    assert message.id == "6f1c5b6e-0000-4000-8000-000000000001"
    assert message.receipt_handle == "AQEB-receipt-handle"
    assert message.queue_url == QUEUE
    assert message.body == message.raw_body == '{"order": 1}'
    assert message.sns is None
    assert dict(message.attributes) == {}


def test_raw_entry_system_attributes() -> None:
    """Receive count, sent/first-receive timestamps (ms epoch, UTC) and FIFO ids come from Attributes."""
    message = parse_message(
        entry(
            "x",
            ApproximateReceiveCount="3",
            SentTimestamp="1700000000123",
            ApproximateFirstReceiveTimestamp="1700000005000",
            MessageGroupId="customer-42",
            MessageDeduplicationId="dedup-1",
            SequenceNumber="18881",
        ),
        QUEUE,
    )
    assert message.receive_count == 3
    assert message.sent_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert message.first_received_at == datetime(2023, 11, 14, 22, 13, 25, tzinfo=UTC)
    assert message.group_id == "customer-42"
    assert message.deduplication_id == "dedup-1"
    assert message.sequence_number == "18881"


def test_raw_entry_without_attributes_has_defaults() -> None:
    """No Attributes at all: receive count 1, no timestamps, not FIFO."""
    raw = entry("x")
    del raw["Attributes"]
    message = parse_message(raw, QUEUE)
    assert message.receive_count == 1
    assert message.sent_at is None
    assert message.first_received_at is None
    assert message.group_id is None
    assert message.deduplication_id is None


def test_raw_entry_message_attributes() -> None:
    """String, Number and Binary (bytes) attributes, custom type suffixes included, parse as given."""
    message = parse_message(entry("x", attributes=SQS_ATTRIBUTES), QUEUE)
    attrs = message.attributes
    assert attrs["trace"] == MessageAttribute("String", "abc-123")
    assert attrs["amount"] == MessageAttribute("Number", "12.50")
    assert attrs["blob"] == MessageAttribute("Binary", b"\x00\xffraw")
    assert attrs["png"] == MessageAttribute("Binary.png", b"\x89PNG")
    assert attrs["count"] == MessageAttribute("Number.int", "7")
    assert [attrs[n].kind for n in ("trace", "amount", "blob", "png", "count")] == [
        "String",
        "Number",
        "Binary",
        "Binary",
        "Number",
    ]
    assert dict(message.sqs_attributes) == dict(attrs)


def test_attribute_to_sqs_round_trips() -> None:
    """MessageAttribute.to_sqs gives SendMessage's shape: BinaryValue bytes or StringValue text."""
    message = parse_message(entry("x", attributes=SQS_ATTRIBUTES), QUEUE)
    assert {name: attr.to_sqs() for name, attr in message.attributes.items()} == SQS_ATTRIBUTES


def test_message_is_immutable() -> None:
    """Handlers cannot change a parsed message's body or attributes."""
    message = parse_message(entry("x", attributes=SQS_ATTRIBUTES), QUEUE)
    with pytest.raises(AttributeError):
        message.body = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.attributes["trace"] = MessageAttribute("String", "y")  # type: ignore[index]


# --- SNS envelopes --------------------------------------------------------------------------------------


def test_sns_envelope_is_unwrapped() -> None:
    """An SNS notification: body is the inner Message, raw_body the exact SQS body, SNS metadata set."""
    raw_body = json.dumps(envelope('{"order": 7}'), indent=2)
    message = parse_message(entry(raw_body), QUEUE)
    assert message.body == '{"order": 7}'
    assert message.raw_body == raw_body
    assert message.sns is not None
    assert message.sns.topic_arn == TOPIC
    assert message.sns.message_id == "0b4d6f3a-sns-message-id"
    assert message.sns.subject == "order created"
    assert message.sns.timestamp == datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert message.sns.type == "Notification"
    assert message.id == "6f1c5b6e-0000-4000-8000-000000000001"  # the SQS id, not the SNS one
    assert message.json() == {"order": 7}


def test_sns_envelope_without_subject_or_timestamp() -> None:
    """Subject null and a missing Timestamp give None, not an error."""
    doc = envelope("p", Subject=None)
    del doc["Timestamp"]
    message = parse_message(entry(json.dumps(doc)), QUEUE)
    assert message.sns is not None
    assert message.sns.subject is None
    assert message.sns.timestamp is None
    assert message.body == "p"


def test_sns_attributes_are_merged() -> None:
    """SNS attributes (Type/Value, Binary base64) join the SQS ones; sqs_attributes keep only SQS ones."""
    doc = envelope(
        "p",
        MessageAttributes={
            "tenant": {"Type": "String", "Value": "acme"},
            "priority": {"Type": "Number", "Value": "5"},
            "sig": {"Type": "Binary", "Value": base64.b64encode(b"\x01\x02\xfe").decode()},
            "tags": {"Type": "String.Array", "Value": '["a","b"]'},
        },
    )
    sqs_only = {"trace": {"DataType": "String", "StringValue": "t-1"}}
    message = parse_message(entry(json.dumps(doc), attributes=sqs_only), QUEUE)
    assert dict(message.attributes) == {
        "trace": MessageAttribute("String", "t-1"),
        "tenant": MessageAttribute("String", "acme"),
        "priority": MessageAttribute("Number", "5"),
        "sig": MessageAttribute("Binary", b"\x01\x02\xfe"),
        "tags": MessageAttribute("String.Array", '["a","b"]'),
    }
    assert dict(message.sqs_attributes) == {"trace": MessageAttribute("String", "t-1")}


def test_sns_envelope_with_empty_attributes() -> None:
    """An envelope with MessageAttributes {} (or absent) has no SNS attributes."""
    message = parse_message(entry(json.dumps(envelope("p", MessageAttributes={}))), QUEUE)
    assert dict(message.attributes) == {}
    assert message.sns is not None


MALFORMED = {
    "Message missing": {k: v for k, v in envelope().items() if k != "Message"},
    "MessageId missing": {k: v for k, v in envelope().items() if k != "MessageId"},
    "Message is an object": envelope({"order": 1}),
    "Message is a number": envelope(42),
    "Message is null": envelope(None),
    "bad base64 binary": envelope("p", MessageAttributes={"b": {"Type": "Binary", "Value": "not base64!"}}),
    "non-ascii base64": envelope("p", MessageAttributes={"b": {"Type": "Binary", "Value": "é"}}),
    "attribute not an object": envelope("p", MessageAttributes={"b": "plain"}),
    "attribute value not a string": envelope("p", MessageAttributes={"n": {"Type": "Number", "Value": 5}}),
    "MessageAttributes not an object": envelope("p", MessageAttributes=["x"]),
}


@pytest.mark.parametrize("doc", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_envelope_raises_decode_error(doc: dict[str, Any]) -> None:
    """A body claiming to be an SNS notification but malformed raises DecodeError from parse_message."""
    with pytest.raises(DecodeError):
        parse_message(entry(json.dumps(doc)), QUEUE)


@pytest.mark.parametrize("doc", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_envelope_falls_back_to_raw_message(doc: dict[str, Any]) -> None:
    """parse_or_fallback returns the raw message (body == raw_body, SQS attributes) plus the DecodeError."""
    raw_body = json.dumps(doc)
    message, error = parse_or_fallback(
        entry(raw_body, attributes=SQS_ATTRIBUTES, ApproximateReceiveCount="2", MessageGroupId="g"), QUEUE
    )
    assert isinstance(error, DecodeError)
    assert message.body == message.raw_body == raw_body
    assert message.sns is None
    assert message.receive_count == 2
    assert message.group_id == "g"
    assert message.receipt_handle == "AQEB-receipt-handle"
    assert dict(message.attributes) == dict(message.sqs_attributes)
    assert message.attributes["blob"] == MessageAttribute("Binary", b"\x00\xffraw")


def test_parse_or_fallback_without_error() -> None:
    """A well-formed entry gives the parsed message and no error."""
    message, error = parse_or_fallback(entry(json.dumps(envelope("inner"))), QUEUE)
    assert error is None
    assert message.body == "inner"
    assert message.sns is not None


NOT_ENVELOPES = [
    json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": TOPIC, "MessageId": "m", "Message": "x"}),
    json.dumps({"TopicArn": TOPIC, "Message": "x", "Type": "Event"}),
    json.dumps({"TopicArn": TOPIC, "note": "no Type key at all", "Message": 1}),
    json.dumps({"TopicArn": TOPIC, "Type": "Notification"})[:-1],  # truncated: not JSON
    json.dumps([{"Type": "Notification", "TopicArn": TOPIC, "Message": "x"}]),
    ' {"Type": "Notification", "TopicArn": "t", "MessageId": "m", "Message": "x"}',  # leading space
]


@pytest.mark.parametrize("body", NOT_ENVELOPES)
def test_non_envelope_bodies_are_left_alone(body: str) -> None:
    """JSON mentioning TopicArn that is not an SNS Notification object is the payload itself."""
    message = parse_message(entry(body), QUEUE)
    assert message.body == message.raw_body == body
    assert message.sns is None


# --- json() and model() ---------------------------------------------------------------------------------


def test_json_decodes_and_caches() -> None:
    """json() decodes the payload once: repeated calls return the very same object."""
    message = parse_message(entry('{"items": [1, 2]}'), QUEUE)
    first = message.json()
    assert first == {"items": [1, 2]}
    assert message.json() is first


def test_json_caches_falsy_values() -> None:
    """A payload decoding to null/0/empty is cached too and returned as is."""
    for body, expected in (("null", None), ("0", 0), ("[]", [])):
        message = parse_message(entry(body), QUEUE)
        assert message.json() == expected
        assert message.json() == expected


@pytest.mark.parametrize("body", ["", "not json", "{'single': 'quotes'}", '{"a": 1', "[" * 100_000])
def test_json_raises_decode_error(body: str) -> None:
    """Bad JSON (even absurdly nested) raises DecodeError carrying the body and the cause."""
    message = parse_message(entry(body), QUEUE)
    with pytest.raises(DecodeError) as caught:
        message.json()
    assert caught.value.data == body
    assert caught.value.cause is not None
    assert "JSON" in str(caught.value)
    with pytest.raises(DecodeError):
        message.json()  # a failure is not cached as a value


class Item(BaseModel):
    """A line of an order."""

    sku: str
    quantity: int


class Order(BaseModel):
    """A handler's payload model."""

    order_id: int
    items: list[Item]


def test_model_validates_payload() -> None:
    """model() returns the validated pydantic model of the payload."""
    message = parse_message(entry('{"order_id": 9, "items": [{"sku": "A", "quantity": 2}]}'), QUEUE)
    assert message.model(Order) == Order(order_id=9, items=[Item(sku="A", quantity=2)])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"items": []}', "order_id"),
        ('{"order_id": "nine", "items": []}', "order_id"),
        ('{"order_id": 1, "items": [{"sku": "A", "quantity": "many"}]}', "items.0.quantity"),
    ],
)
def test_model_raises_schema_error_naming_field(body: str, field: str) -> None:
    """A payload not matching the model raises SchemaError (a DecodeError) naming the model and field."""
    message = parse_message(entry(body), QUEUE)
    with pytest.raises(SchemaError) as caught:
        message.model(Order)
    assert isinstance(caught.value, DecodeError)
    assert "Order" in str(caught.value)
    assert f"{field}:" in str(caught.value)
    assert caught.value.data == body


def test_model_counts_further_errors() -> None:
    """With several invalid fields the reason names the first and counts the rest."""
    message = parse_message(entry('{"order_id": "x"}'), QUEUE)
    with pytest.raises(SchemaError, match=r"order_id: .*\(\+1 more\)"):
        message.model(Order)


def test_model_on_sns_payload() -> None:
    """model() validates the unwrapped SNS payload, not the envelope."""
    inner = json.dumps({"order_id": 3, "items": []})
    message = parse_message(entry(json.dumps(envelope(inner))), QUEUE)
    assert message.model(Order).order_id == 3


# --- properties -----------------------------------------------------------------------------------------

attribute_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}", fullmatch=True)
attribute_values = st.one_of(
    st.builds(MessageAttribute, st.just("String"), st.text(min_size=1)),
    st.builds(
        MessageAttribute, st.just("Number"), st.decimals(allow_nan=False, allow_infinity=False).map(str)
    ),
    st.builds(MessageAttribute, st.sampled_from(["Binary", "Binary.gz"]), st.binary(min_size=1)),
)


def sns_attribute(attr: MessageAttribute) -> dict[str, str]:
    """How SNS puts an attribute in the envelope: Type and Value (Binary base64-encoded)."""
    if isinstance(attr.value, bytes):
        return {"Type": attr.data_type, "Value": base64.b64encode(attr.value).decode()}
    return {"Type": attr.data_type, "Value": attr.value}


@given(body=st.text())
@PROPS
def test_any_text_body_delivered_raw_is_kept(body: str) -> None:
    """For any text body, raw delivery gives body == raw_body and no SNS info."""
    message = parse_message(entry(body), QUEUE)
    assert message.body == message.raw_body == body
    assert message.sns is None


@given(
    doc=st.dictionaries(
        st.text(max_size=10),
        st.none() | st.integers() | st.text(max_size=20),
        max_size=5,
    ),
    kind=st.text(max_size=15).filter(lambda t: t != "Notification"),
)
@PROPS
def test_json_with_topic_arn_but_not_notification_is_left_alone(doc: dict[str, Any], kind: str) -> None:
    """Any JSON object with TopicArn whose Type is not Notification is delivered as is."""
    body = json.dumps({**doc, "Type": kind, "TopicArn": TOPIC, "Message": "inner"})
    message = parse_message(entry(body), QUEUE)
    assert message.body == message.raw_body == body
    assert message.sns is None


@given(
    payload=st.text(),
    attributes=st.dictionaries(attribute_names, attribute_values, max_size=10),
    subject=st.none() | st.text(max_size=100),
    ensure_ascii=st.booleans(),
)
@PROPS
def test_sns_envelope_round_trip(
    payload: str, attributes: dict[str, MessageAttribute], subject: str | None, ensure_ascii: bool
) -> None:
    """Any payload and attributes wrapped in an SNS envelope parse back to the same payload and attributes."""
    doc = envelope(
        payload,
        Subject=subject,
        MessageAttributes={name: sns_attribute(attr) for name, attr in attributes.items()},
    )
    raw_body = json.dumps(doc, ensure_ascii=ensure_ascii)
    message = parse_message(entry(raw_body), QUEUE)
    assert message.body == payload
    assert message.raw_body == raw_body
    assert message.sns is not None
    assert message.sns.subject == subject
    assert dict(message.attributes) == attributes
    assert dict(message.sqs_attributes) == {}


@given(body=st.text())
@PROPS
def test_parse_or_fallback_never_raises_for_text(body: str) -> None:
    """parse_or_fallback turns any body into a Message; the raw body is always preserved."""
    message, error = parse_or_fallback(entry(body), QUEUE)
    assert isinstance(message, Message)
    assert message.raw_body == body
    assert error is None or message.body == body
