"""WORKER_MAX_MESSAGE_AGE_SECONDS: first send kept through dead-letters and redrives; the cap, live."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests import handlers
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, depth, drain, running_worker, send, wait_for
from tests.test_redrive_support import record_of, redrive
from worker.deadletter.record import (
    FAILURE_ATTRIBUTE,
    FailureRecord,
    build_dead_letter,
    failure_record,
    first_sent_time,
    message_first_sent,
    read_failure,
)
from worker.engine.message import Message, MessageAttribute, parse_message, parse_sqs_attributes
from worker.engine.policy import Condition
from worker.ops.redrive.plan import DeadLetteredMessage, Verdict, plan_redrive
from worker.timestamps import iso_utc, parse_iso

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"
DLQ = "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq"
FIRST_SENT_MS = 1_717_230_000_000  # 2024-06-01T08:20:00Z
FIRST_SENT = "2024-06-01T08:20:00Z"
NOW = datetime(2024, 6, 2, tzinfo=UTC)


def received(
    message_id: str, sent_ms: int | None, attributes: dict[str, Any] | None = None, receive_count: int = 1
) -> Message:
    """A message as the worker receives it (``attributes`` in SendMessage shape, e.g. a redriven copy's)."""
    system = {"ApproximateReceiveCount": str(receive_count)}
    if sent_ms is not None:
        system["SentTimestamp"] = str(sent_ms)
    entry = {
        "MessageId": message_id,
        "ReceiptHandle": "rh",
        "Body": '{"order": 1}',
        "Attributes": system,
        "MessageAttributes": attributes or {},
    }
    return parse_message(entry, QUEUE)


def dead_lettered(message: Message, now: datetime = NOW) -> FailureRecord:
    """The record the DeadLetterWriter builds for ``message``."""
    return failure_record(
        message,
        error_type="RuntimeError",
        error_message="boom",
        condition="RetriesExhausted",
        attempts=5,
        source_queue_arn=QUEUE_ARN,
        handler="pkg:fn",
        handler_version="v1",
        now=now,
        previous=read_failure(message.sqs_attributes),
    )


def redriven(
    message: Message, record: FailureRecord, *, copy_id: str, sent_ms: int, when: datetime
) -> Message:
    """The copy ``worker redrive`` (app mode) sends back to the source, as the worker then receives it."""
    request = build_dead_letter(message, record, fifo=False)
    dlq_copy = {
        "MessageId": f"dlq-{copy_id}",
        "ReceiptHandle": "rh",
        "Body": request["MessageBody"],
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(sent_ms)},
        "MessageAttributes": request["MessageAttributes"],
    }
    plan = plan_redrive(
        DeadLetteredMessage.from_entry(dlq_copy, DLQ), target_url=QUEUE, dlq_url=DLQ, max_redrives=5, now=when
    )
    assert plan.verdict is Verdict.MOVE
    assert plan.request is not None
    return received(copy_id, sent_ms + 60_000, plan.request["MessageAttributes"])


# --- the first send time, pure ----------------------------------------------------------------------------


def test_first_dead_letter_records_the_copy_sent_time() -> None:
    """A message never redriven: first_sent_at is its own SentTimestamp, in the record's JSON too."""
    message = received("m1", FIRST_SENT_MS)
    assert message_first_sent(message) == parse_iso(FIRST_SENT)
    record = dead_lettered(message)
    assert record.first_sent_at == record.sent_at == FIRST_SENT
    assert json.loads(record.to_json())["first_sent_at"] == FIRST_SENT


def test_first_send_survives_two_redrives() -> None:
    """Dead-letter, redrive, dead-letter, redrive: every copy's record keeps the original's send time."""
    message = received("m1", FIRST_SENT_MS)
    sent_ms = FIRST_SENT_MS
    for trip in (1, 2):
        record = dead_lettered(message)
        assert record.first_sent_at == FIRST_SENT
        sent_ms += 3_600_000 * trip
        message = redriven(message, record, copy_id=f"copy-{trip}", sent_ms=sent_ms, when=NOW)
        assert iso_utc(message.sent_at) != FIRST_SENT  # every copy has a SentTimestamp of its own
        carried = read_failure(message.sqs_attributes)
        assert carried is not None
        assert carried.first_sent_at == FIRST_SENT
        assert carried.original_message_id == "m1"
        assert message_first_sent(message) == parse_iso(FIRST_SENT)
    final = dead_lettered(message)
    assert final.first_sent_at == FIRST_SENT
    assert final.sent_at != FIRST_SENT  # the copy's own send time is a different field
    assert [entry["first_sent_at"] for entry in final.history] == [FIRST_SENT, FIRST_SENT]


def old_record(**times: str | None) -> FailureRecord:
    """A record as an older worker wrote it (no first_sent_at), with the given times."""
    base = dead_lettered(received("m1", FIRST_SENT_MS))
    return dataclasses.replace(
        base,
        first_sent_at=None,
        sent_at=times.get("sent_at"),
        first_received_at=times.get("first_received_at"),
        dead_lettered_at=times.get("dead_lettered_at") or "",
        history=({"sent_at": times["history"]},) if times.get("history") else (),
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            old_record(sent_at="2024-06-01T09:00:00Z", dead_lettered_at="2024-06-01T10:00:00Z"),
            "2024-06-01T09:00:00Z",
        ),
        (old_record(first_received_at="2024-06-01T09:30:00Z"), "2024-06-01T09:30:00Z"),
        (old_record(sent_at="2024-06-01T09:00:00Z", history="2024-05-30T00:00:00Z"), "2024-05-30T00:00:00Z"),
        (old_record(dead_lettered_at="2024-06-01T11:00:00Z"), "2024-06-01T11:00:00Z"),
        (old_record(sent_at="not a time"), None),
        (old_record(), None),
    ],
)
def test_old_records_fall_back_to_their_oldest_time(record: FailureRecord, expected: str | None) -> None:
    """A record without first_sent_at gives the oldest time it or its history names, else this copy's send."""
    fallback = datetime(2024, 6, 3, tzinfo=UTC)
    assert first_sent_time(record, fallback) == (parse_iso(expected) if expected else fallback)
    message = received(
        "copy",
        1_717_372_800_000,
        {FAILURE_ATTRIBUTE: {"DataType": "String", "StringValue": record.to_json()}},
    )
    assert message_first_sent(message) == (parse_iso(expected) if expected else message.sent_at)


def test_old_record_read_back_and_filled_in_by_redrive() -> None:
    """A JSON record without first_sent_at still reads; a redrive writes the first send time it can find."""
    data = json.loads(dead_lettered(received("m1", FIRST_SENT_MS)).to_json())
    del data["first_sent_at"]
    record = read_failure({FAILURE_ATTRIBUTE: MessageAttribute("String", json.dumps(data))})
    assert record is not None
    assert record.first_sent_at is None
    message = received("m1", FIRST_SENT_MS)
    copy = redriven(message, record, copy_id="c1", sent_ms=FIRST_SENT_MS + 7_200_000, when=NOW)
    carried = read_failure(copy.sqs_attributes)
    assert carried is not None
    assert carried.first_sent_at == FIRST_SENT


def test_broker_moved_message_records_its_sent_time() -> None:
    """A message the broker dead-lettered (no record): the redrive's record takes its SentTimestamp."""
    entry = {
        "MessageId": "moved",
        "ReceiptHandle": "rh",
        "Body": "{}",
        "Attributes": {"SentTimestamp": str(FIRST_SENT_MS), "DeadLetterQueueSourceArn": QUEUE_ARN},
    }
    plan = plan_redrive(
        DeadLetteredMessage.from_entry(entry, DLQ),
        target_url=QUEUE,
        dlq_url=DLQ,
        max_redrives=3,
        now=NOW,
        source_url=QUEUE,
    )
    assert plan.request is not None
    record = read_failure(parse_sqs_attributes(plan.request["MessageAttributes"]))
    assert record is not None
    assert record.first_sent_at == FIRST_SENT


def test_message_without_sent_timestamp_has_no_age() -> None:
    """No SentTimestamp and no record: the first send is unknown (the cap then never applies)."""
    assert message_first_sent(received("m1", None)) is None


# --- live: the cap dead-letters after a real run, and a redriven copy keeps its age ------------------------


@pytest.mark.localstack
async def test_message_past_the_cap_is_dead_lettered_and_its_redrive_keeps_the_age(
    sqs: Any, queues: QueueFactory
) -> None:
    """RetryLater forever, 2 s cap: MaxAgeExceeded after real runs; a redriven copy runs once, then DLQ."""
    q = await queues()
    key = unique("aged")
    sink = Collecting()
    async with running_worker(q, sink=sink, max_message_age_seconds=2, max_attempts=100):
        await send(sqs, q["url"], {"key": key, "do": "retry_later", "delay": 0.5})
        [first] = await wait_for(lambda: sink.outcomes, timeout=15, what="dead-letter by age")
        assert first.condition is Condition.MAX_AGE_EXCEEDED
        runs = handlers.CALLS[key]
        assert runs >= 1  # dead-lettered only after a real run (retried with RetryLater while under 2 s)
        sent_at = first.message.sent_at
        assert sent_at is not None
        report = await redrive(q["dlq_url"], queue_url=q["url"], mode="app")
        assert report.tally.moved == 1
        await wait_for(lambda: len(sink.outcomes) == 2, timeout=15, what="the redriven copy dead-lettered")
        again = sink.outcomes[1]
        assert again.condition is Condition.MAX_AGE_EXCEEDED
        assert handlers.CALLS[key] == runs + 1  # the copy ran once (never dead-lettered unrun), then aged out
        assert again.message.id != first.message.id
        assert again.message.sent_at is not None
        assert again.message.sent_at > sent_at
    [entry] = await drain(sqs, q["dlq_url"], expect=1, timeout=10)
    record = record_of(entry)
    assert record.condition == "MaxAgeExceeded"
    assert record.error_type == "RetryLater"
    assert record.redrive_count == 1
    assert parse_iso(record.first_sent_at) == sent_at  # the original's, not the redriven copy's
    assert record.sent_at == iso_utc(again.message.sent_at) != record.first_sent_at
    [earlier] = record.history
    assert earlier["first_sent_at"] == record.first_sent_at
    assert earlier["condition"] == "MaxAgeExceeded"
    # Neither dead-letter came before the cap: both are at least 2 s after the first send.
    for when in (earlier["dead_lettered_at"], record.dead_lettered_at):
        dead_at = parse_iso(when)
        assert dead_at is not None
        assert (dead_at - sent_at).total_seconds() >= 2
    assert await depth(sqs, q["url"]) == 0
