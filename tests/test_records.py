"""Destination records and destination URIs: pure builders, no AWS."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from worker.deadletter.record import FAILURE_ATTRIBUTE, failure_record
from worker.destinations.record import (
    build_record,
    fit_record,
    iso_timestamp,
    s3_key,
)
from worker.destinations.uri import parse_destination
from worker.engine.message import Message, MessageAttribute, SnsInfo
from worker.engine.outcome import Outcome
from worker.engine.policy import Condition
from worker.errors import ConfigError
from worker.limits import EVENTS_MAX_BYTES, SNS_MAX_BYTES, SQS_MAX_MESSAGE_BYTES
from worker.settings import load_settings

QUEUE = "http://127.0.0.1:4566/000000000000/orders"
#: 2026-11-26T10:11:12.345Z
WHEN = datetime(2026, 11, 26, 10, 11, 12, 345000, tzinfo=UTC).timestamp()


def message(body: str = '{"sku": "A1"}', *, id: str = "m-1", **kwargs: Any) -> Message:
    """A received message on the orders queue."""
    return Message(id=id, receipt_handle="rh", raw_body=body, body=body, queue_url=QUEUE, **kwargs)


def outcome(
    condition: Condition = Condition.SUCCESS,
    *,
    msg: Message | None = None,
    response: object = None,
    error_type: str | None = None,
    error_message: str | None = None,
    attempts: int = 1,
) -> Outcome:
    """An outcome of tests.handlers:scripted at version v7."""
    return Outcome(
        message=msg or message(),
        condition=condition,
        attempts=attempts,
        handler="tests.handlers:scripted",
        handler_version="v7",
        timestamp=WHEN,
        response=response,
        error_type=error_type,
        error_message=error_message,
    )


# -- record shape --


def test_success_record_is_shaped_like_a_lambda_destination_record() -> None:
    """A Success record has every Lambda field, status 200, the response, no functionError."""
    record = build_record(outcome(response={"ok": True, "n": [1, 2]}, attempts=2))
    assert record.to_dict() == {
        "version": "1.0",
        "timestamp": "2026-11-26T10:11:12.345Z",
        "requestContext": {
            "requestId": "m-1",
            "functionArn": "tests.handlers:scripted",
            "condition": "Success",
            "approximateInvokeCount": 2,
        },
        "requestPayload": {"sku": "A1"},
        "responseContext": {"statusCode": 200, "executedVersion": "v7"},
        "responsePayload": {"ok": True, "n": [1, 2]},
        "worker": {"queueUrl": QUEUE, "messageId": "m-1", "groupId": None, "snsTopicArn": None},
    }
    assert record.succeeded
    assert json.loads(record.to_json()) == record.to_dict()


@pytest.mark.parametrize(
    ("condition", "error_type", "error_message"),
    [
        (Condition.RETRIES_EXHAUSTED, "RuntimeError", "scripted failure"),
        (Condition.TIMEOUT, "Timeout", "handler exceeded its 30s timeout"),
        (Condition.PERMANENT_ERROR, "PermanentError", "unknown sku"),
        (Condition.DECODE_ERROR, "DecodeError", "body is not valid JSON"),
        (Condition.SCHEMA_ERROR, "SchemaError", "payload does not match Order: quantity: ..."),
    ],
)
def test_failure_record_carries_condition_and_error(
    condition: Condition, error_type: str, error_message: str
) -> None:
    """Every failure condition gives status 500, functionError, and errorType/errorMessage as response."""
    record = build_record(
        outcome(condition, error_type=error_type, error_message=error_message, attempts=3)
    ).to_dict()
    assert record["requestContext"]["condition"] == condition.value
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responseContext"] == {
        "statusCode": 500,
        "executedVersion": "v7",
        "functionError": error_type,
    }
    assert record["responsePayload"] == {"errorType": error_type, "errorMessage": error_message}
    assert "truncated" not in record
    assert "fullRecord" not in record


def test_failure_without_error_details_names_the_condition() -> None:
    """A failure outcome lacking an error type reports the condition as errorType (never null)."""
    record = build_record(outcome(Condition.RETRIES_EXHAUSTED)).to_dict()
    assert record["responseContext"]["functionError"] == "RetriesExhausted"
    assert record["responsePayload"] == {"errorType": "RetriesExhausted", "errorMessage": ""}


@pytest.mark.parametrize(
    ("body", "payload"),
    [
        ("this is {not json", "this is {not json"),
        ("", ""),
        ("42", 42),
        ('"text"', "text"),
        ("null", None),
        ("NaN", "NaN"),  # not strict JSON: kept as the string
        ('{"a": Infinity}', '{"a": Infinity}'),
        ('[1, {"b": 2}]', [1, {"b": 2}]),
    ],
)
def test_request_payload_is_parsed_json_or_the_string(body: str, payload: Any) -> None:
    """The body appears parsed when it is strict JSON, else verbatim as a string."""
    record = build_record(outcome(Condition.DECODE_ERROR, msg=message(body), error_type="DecodeError"))
    assert record.to_dict()["requestPayload"] == payload
    json.loads(record.to_json())  # always valid JSON


def test_request_payload_is_the_sns_payload_and_worker_section_names_topic_and_group() -> None:
    """For an SNS-wrapped FIFO message the payload is the SNS Message; topic and group are reported."""
    topic = "arn:aws:sns:us-east-1:000000000000:orders"
    msg = message(
        '{"sku": "B2"}',
        system_attributes=MappingProxyType({"MessageGroupId": "g-1"}),
        sns=SnsInfo(topic_arn=topic, message_id="sns-1", subject=None, timestamp=None),
    )
    record = build_record(outcome(msg=msg, response=None)).to_dict()
    assert record["requestPayload"] == {"sku": "B2"}
    assert record["responsePayload"] is None
    assert record["worker"] == {"queueUrl": QUEUE, "messageId": "m-1", "groupId": "g-1", "snsTopicArn": topic}


class _Model(BaseModel):
    sku: str
    at: datetime


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ((1, "two"), [1, "two"]),
        ({1: "int key"}, {"1": "int key"}),
        (_Opaque(), "<opaque>"),
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, repr({"when": datetime(2026, 1, 1, tzinfo=UTC)})),
        (b"\x00bytes", repr(b"\x00bytes")),
        (float("nan"), "nan"),
        (_Model(sku="A1", at=datetime(2026, 1, 1, tzinfo=UTC)), {"sku": "A1", "at": "2026-01-01T00:00:00Z"}),
    ],
)
def test_response_payload_is_json_or_its_repr(response: object, expected: Any) -> None:
    """A JSON-able return value is kept as JSON (models dumped), anything else becomes its repr string."""
    record = build_record(outcome(response=response))
    assert record.to_dict()["responsePayload"] == expected
    json.loads(record.to_json())


def test_request_id_is_the_original_message_id_after_a_redrive() -> None:
    """A redriven message (still carrying worker.failure) reports its first id as requestId."""
    first = message(id="orig-1")
    failure = failure_record(
        first,
        error_type="RuntimeError",
        error_message="x",
        condition="RetriesExhausted",
        attempts=3,
        source_queue_arn="arn:aws:sqs:us-east-1:000000000000:orders",
        handler="tests.handlers:scripted",
        handler_version="v7",
        now=datetime.now(UTC),
    )
    redriven = message(
        id="new-2",
        sqs_attributes=MappingProxyType({FAILURE_ATTRIBUTE: MessageAttribute("String", failure.to_json())}),
    )
    record = build_record(outcome(msg=redriven, response=1))
    assert record.request_context.request_id == "orig-1"
    assert record.message_id == "new-2"


def test_record_is_frozen_all_the_way_down() -> None:
    """Assigning a field or mutating a payload raises; to_dict hands out an independent mutable copy."""
    record = build_record(outcome(response={"items": [1, 2]}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.version = "2.0"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.request_context.condition = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.request_payload["sku"] = "B2"
    with pytest.raises(AttributeError):
        record.response_payload["items"].append(3)
    copy = record.to_dict()
    copy["responsePayload"]["items"].append(3)
    assert record.to_dict()["responsePayload"] == {"items": [1, 2]}


def test_json_is_ascii_and_survives_lone_surrogates() -> None:
    """to_json is ASCII-only (size = bytes), even for bodies with non-ASCII text and lone surrogates."""
    body = '{"name": "Zoë \\ud800 😀"}'
    record = build_record(outcome(msg=message(body), response="ü"))
    text = record.to_json()
    assert text.isascii()
    assert record.size() == len(text.encode())
    assert json.loads(text)["requestPayload"] == {"name": "Zoë \ud800 😀"}


def test_timestamp_is_iso_utc_with_milliseconds() -> None:
    """Timestamps are ISO-8601 UTC, milliseconds, Z suffix."""
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert iso_timestamp(WHEN) == "2026-11-26T10:11:12.345Z"
    assert iso_timestamp(float("nan")) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("results", "results/2026/11/26/PermanentError/m-1.json"),
        ("a/b/", "a/b/2026/11/26/PermanentError/m-1.json"),
        ("", "2026/11/26/PermanentError/m-1.json"),
    ],
)
def test_s3_key_is_dated_by_condition_and_message_id(prefix: str, expected: str) -> None:
    """S3 keys are prefix/YYYY/MM/DD/<condition>/<message id>.json."""
    record = build_record(outcome(Condition.PERMANENT_ERROR, error_type="PermanentError"))
    assert s3_key(record, prefix) == expected


# -- size limits --


def test_record_within_the_limit_is_left_alone() -> None:
    """A record that fits is returned unchanged (no flag, no pointer)."""
    record = build_record(outcome(response={"ok": True}))
    assert fit_record(record, SNS_MAX_BYTES, full_record="s3://b/k") is record


def test_large_record_is_cut_to_the_limit_with_flag_and_pointer() -> None:
    """A 300 KiB body is cut below 256 KiB: payloads become string prefixes, truncated and fullRecord set."""
    body = json.dumps({"blob": "x" * 300_000})
    record = build_record(outcome(msg=message(body), response={"ok": True}))
    assert record.size() > SNS_MAX_BYTES
    cut = fit_record(record, SNS_MAX_BYTES, full_record="s3://bucket/k.json")
    data = json.loads(cut.to_json())
    assert cut.size() <= SNS_MAX_BYTES
    assert cut.size() > SNS_MAX_BYTES - 1024  # the space is used, not wasted
    assert data["truncated"] is True
    assert data["fullRecord"] == "s3://bucket/k.json"
    assert isinstance(data["requestPayload"], str)
    assert body.replace(" ", "").startswith(data["requestPayload"].replace(" ", ""))
    assert json.loads(data["responsePayload"]) == {"ok": True}  # small: kept whole, as text
    assert data["requestContext"] == record.to_dict()["requestContext"]
    assert data["worker"] == record.to_dict()["worker"]


def test_cut_without_s3_has_no_pointer_and_respects_each_service_limit() -> None:
    """Without a full copy the cut record has the flag only; SQS's 1 MiB keeps a 300 KiB record whole."""
    record = build_record(outcome(msg=message("y" * 300_000), response="z" * 300_000))
    assert fit_record(record, SQS_MAX_MESSAGE_BYTES) is record
    for limit in (SNS_MAX_BYTES, EVENTS_MAX_BYTES - 100):
        data = json.loads(fit_record(record, limit).to_json())
        assert data["truncated"] is True
        assert "fullRecord" not in data
        # Both payloads are large: the space is shared.
        assert 100_000 < len(data["requestPayload"]) < 150_000
        assert 100_000 < len(data["responsePayload"]) < 150_000
        assert len(fit_record(record, limit).to_json()) <= limit


def test_cut_accounts_for_json_escaping() -> None:
    """Payloads of characters that escape to 6 or 12 bytes are cut by their escaped size."""
    record = build_record(outcome(msg=message("é😀\n" * 60_000), response=None))
    cut = fit_record(record, SNS_MAX_BYTES)
    assert cut.size() <= SNS_MAX_BYTES
    assert ("é😀\n" * 60_000).startswith(cut.request_payload)
    assert len(cut.request_payload) > 10_000


def test_limit_below_the_skeleton_is_an_error() -> None:
    """A limit too small for the record without payloads raises ValueError (delivery counts it failed)."""
    record = build_record(outcome(msg=message("x" * 1000)))
    with pytest.raises(ValueError, match="even without payloads"):
        fit_record(record, 200)


@settings(max_examples=60, deadline=None)
@given(
    body=st.text(max_size=3000),
    response=st.one_of(
        st.none(), st.text(max_size=3000), st.dictionaries(st.text(max_size=5), st.integers())
    ),
    limit=st.integers(min_value=1000, max_value=6000),
)
def test_fit_record_never_exceeds_the_limit(body: str, response: Any, limit: int) -> None:
    """For any body, response and limit, the fitted record fits and its payloads are prefixes."""
    record = build_record(outcome(msg=message(body), response=response))
    fitted = fit_record(record, limit, full_record="s3://bucket/key.json")
    assert fitted.size() <= limit
    if fitted is not record:
        assert fitted.truncated
        assert isinstance(fitted.request_payload, str)
        full = record.request_payload
        full_text = (
            full
            if isinstance(full, str)
            else json.dumps(record.to_dict()["requestPayload"], separators=(",", ":"), ensure_ascii=True)
        )
        assert full_text.startswith(fitted.request_payload)


# -- URIs --


@pytest.mark.parametrize(
    ("uri", "kind", "target", "label", "prefix"),
    [
        ("sqs://results", "sqs", "results", "sqs:results", ""),
        ("sqs://results.fifo", "sqs", "results.fifo", "sqs:results.fifo", ""),
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/results",
            "sqs",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/results",
            "sqs:results",
            "",
        ),
        ("http://127.0.0.1:4566/000000000000/r", "sqs", "http://127.0.0.1:4566/000000000000/r", "sqs:r", ""),
        (
            "arn:aws:sqs:eu-west-1:123456789012:results",
            "sqs",
            "arn:aws:sqs:eu-west-1:123456789012:results",
            "sqs:results",
            "",
        ),
        (
            "sns:arn:aws:sns:us-east-1:123456789012:alerts",
            "sns",
            "arn:aws:sns:us-east-1:123456789012:alerts",
            "sns:alerts",
            "",
        ),
        ("s3://my-bucket", "s3", "my-bucket", "s3:my-bucket", ""),
        ("s3://my-bucket/worker/results/", "s3", "my-bucket", "s3:my-bucket", "worker/results"),
        ("events:default", "events", "default", "events:default", ""),
        (
            "events:arn:aws:events:us-east-1:123456789012:event-bus/orders",
            "events",
            "arn:aws:events:us-east-1:123456789012:event-bus/orders",
            "events:orders",
            "",
        ),
        ("python:pkg.mod:fn", "python", "pkg.mod:fn", "python:pkg.mod:fn", ""),
    ],
)
def test_valid_uris_parse(uri: str, kind: str, target: str, label: str, prefix: str) -> None:
    """Each documented URI form parses to its kind, target, metrics label and S3 prefix."""
    parsed = parse_destination(uri)
    assert (parsed.kind, parsed.target, parsed.label, parsed.prefix) == (kind, target, label, prefix)
    assert parsed.uri == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("ftp://host/x", "unknown destination scheme 'ftp'"),
        ("kafka:topic", "unknown destination scheme 'kafka'"),
        ("results", "has no scheme"),
        ("", "empty destination"),
        ("s3://", "empty bucket"),
        ("s3:///prefix", "empty bucket"),
        ("s3://No_Such", "not a bucket name"),
        ("sns:alerts", "target must be a topic ARN"),
        ("sns:arn:aws:sqs:us-east-1:123456789012:q", "target must be a topic ARN"),
        ("sns:", "no topic ARN"),
        ("arn:aws:sns:us-east-1:123456789012:alerts", "written sns:<topic ARN>"),
        ("arn:aws:lambda:us-east-1:123456789012:function:f", "only SQS queue ARNs"),
        ("sqs://", "empty queue name"),
        ("sqs://a/b", "not a queue name"),
        ("https://sqs.amazonaws.com/", "not a queue URL"),
        ("events:", "empty bus name"),
        ("events:bad bus", "not a bus name"),
        ("python:module_only", "python:pkg.module:callable"),
        ("python:pkg.mod:fn()", "python:pkg.module:callable"),
        ("python:", "python:pkg.module:callable"),
    ],
)
def test_bad_uris_are_refused_with_a_reason(uri: str, reason: str) -> None:
    """A malformed destination raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_destination(uri)


def test_settings_report_a_bad_destination_in_one_line_naming_the_variable() -> None:
    """WORKER_ON_FAILURE with a bad URI is a one-line ConfigError naming the variable and the reason."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            queue_url=QUEUE,
            handler="tests.handlers:scripted",
            on_success="sqs://ok",
            on_failure="sqs://dead, s3://",
        )
    text = str(caught.value)
    assert text.startswith("WORKER_ON_FAILURE: ")
    assert "empty bucket" in text
    assert "\n" not in text
    fine = load_settings(
        queue_url=QUEUE, handler="tests.handlers:scripted", on_success="sqs://ok, python:a.b:c"
    )
    assert fine.on_success == ["sqs://ok", "python:a.b:c"]
