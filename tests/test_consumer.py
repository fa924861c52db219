"""The consumer pipeline on both SQS emulators (LocalStack, moto): success, retries, timeouts, DLQ."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from tests import handlers
from tests.conftest import QueueFactory, on_emulators, unique
from tests.helpers import Collecting, depth, drain, running_worker, send, wait_for
from worker.deadletter.record import FAILURE_ATTRIBUTE, read_failure
from worker.engine.message import parse_sqs_attributes
from worker.engine.policy import Condition

pytestmark = [pytest.mark.localstack, on_emulators()]


def failure_of(entry: dict[str, Any]) -> Any:
    """The failure record a DLQ entry carries."""
    record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
    assert record is not None, f"no {FAILURE_ATTRIBUTE} on {entry.get('MessageAttributes')}"
    return record


async def test_success_deletes_and_reports(sqs: Any, queues: QueueFactory) -> None:
    """A successful message is deleted and reported once with the handler's response."""
    q = await queues()
    key = unique("ok")
    sink = Collecting()
    async with running_worker(q, sink=sink):
        await send(sqs, q["url"], {"key": key})
        await wait_for(lambda: sink.outcomes, what="an outcome")
        await wait_for(lambda: _empty(sqs, q["url"]), what="source queue empty")
    assert [o.condition for o in sink.outcomes] == [Condition.SUCCESS]
    assert sink.outcomes[0].response == {"ok": True, "key": key}
    assert handlers.CALLS[key] == 1


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


async def test_immediate_retry_then_success(sqs: Any, queues: QueueFactory) -> None:
    """A transient failure is retried at once in process, on the same delivery."""
    q = await queues()
    key = unique("imm")
    sink = Collecting()
    async with running_worker(q, sink=sink, immediate_retries=1):
        await send(sqs, q["url"], {"key": key, "do": "fail_times", "n": 1})
        await wait_for(lambda: sink.outcomes, what="an outcome")
    assert handlers.CALLS[key] == 2
    receive_counts = [rc for k, rc, _ in handlers.LOG if k == key]
    assert receive_counts == [1, 1]
    assert sink.outcomes[0].condition is Condition.SUCCESS
    assert sink.outcomes[0].attempts == 2


async def test_persistent_failure_dead_lettered_after_max_attempts(sqs: Any, queues: QueueFactory) -> None:
    """An always-failing message runs max_attempts times, delays in bounds, then goes to the DLQ."""
    q = await queues()
    key = unique("fail")
    sink = Collecting()
    body = json.dumps({"key": key, "do": "fail"})
    async with running_worker(q, sink=sink, max_attempts=4, immediate_retries=1):
        await send(
            sqs, q["url"], body, MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}}
        )
        await wait_for(lambda: sink.outcomes, timeout=40, what="dead-letter outcome")
    assert handlers.CALLS[key] == 4
    times = [t for k, _, t in handlers.LOG if k == key]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < 1.0  # immediate retry
    for gap in gaps[1:]:  # delayed: whole seconds, 1..backoff_max (2) plus polling slack
        assert 0.9 <= gap <= 2 + 2.5, gaps
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    assert entry["Body"] == body
    assert entry["MessageAttributes"]["tenant"]["StringValue"] == "acme"
    record = failure_of(entry)
    assert record.condition == "RetriesExhausted"
    assert record.error_type == "RuntimeError"
    assert record.attempts == 4
    assert record.source_queue_url == q["url"]
    assert record.source_queue_arn == q["arn"]
    assert record.handler == "tests.handlers:scripted"
    assert sink.outcomes[0].condition is Condition.RETRIES_EXHAUSTED
    assert await depth(sqs, q["url"]) == 0


@pytest.mark.parametrize(
    ("body", "condition", "error_type"),
    [
        ({"do": "permanent"}, "PermanentError", "PermanentError"),
        ("this is {not json", "DecodeError", "DecodeError"),
    ],
)
async def test_terminal_errors_dead_letter_on_first_attempt(
    sqs: Any, queues: QueueFactory, body: Any, condition: str, error_type: str
) -> None:
    """PermanentError and undecodable bodies go to the DLQ at once: one attempt, on the first receive."""
    q = await queues()
    sink = Collecting()
    if isinstance(body, dict):
        body = {**body, "key": unique("term")}
    async with running_worker(q, sink=sink):
        await send(sqs, q["url"], body)
        await wait_for(lambda: sink.outcomes, what="outcome")
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = failure_of(entry)
    assert record.condition == condition
    assert record.error_type == error_type
    # One failed invocation (attempts count those): the scripted handler itself decodes the body
    # (message.json()), so a body that is not JSON fails inside a handler run too.
    assert record.attempts == 1
    assert record.receive_count == 1
    assert [o.attempts for o in sink.outcomes] == [1]
    if isinstance(body, dict):
        assert handlers.CALLS[body["key"]] == 1


async def test_schema_failure_dead_lettered_with_reason(sqs: Any, queues: QueueFactory) -> None:
    """A payload that fails the handler's pydantic model is dead-lettered with the field named."""
    q = await queues()
    sink = Collecting()
    async with running_worker(q, sink=sink, handler="tests.handlers:typed"):
        await send(sqs, q["url"], {"sku": "A1", "quantity": "many"})
        await send(sqs, q["url"], {"sku": "B2", "quantity": 3})
        await wait_for(lambda: len(sink.outcomes) == 2, what="two outcomes")
    by_condition = {o.condition: o for o in sink.outcomes}
    assert by_condition[Condition.SUCCESS].response == {"sku": "B2", "quantity": 3}
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = failure_of(entry)
    assert record.condition == "SchemaError"
    assert "quantity" in record.error_message


async def test_timeout_cancels_handler_and_counts_as_attempt(sqs: Any, queues: QueueFactory) -> None:
    """A handler over its deadline is cancelled; each timeout is an attempt; the last one says Timeout."""
    q = await queues()
    key = unique("slow")
    sink = Collecting()
    async with running_worker(q, sink=sink, timeout_seconds=0.3, max_attempts=2, immediate_retries=1):
        await send(sqs, q["url"], {"key": key, "sleep": 5})
        await wait_for(lambda: sink.outcomes, timeout=20, what="outcome")
    assert handlers.CALLS[key] == 2
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = failure_of(entry)
    assert record.condition == "Timeout"
    assert record.error_type == "Timeout"
    assert sink.outcomes[0].condition is Condition.TIMEOUT


async def test_retry_later_delay_is_honoured(sqs: Any, queues: QueueFactory) -> None:
    """RetryLater(delay) gives the message back for that many seconds and counts as an attempt."""
    q = await queues()
    key = unique("later")
    sink = Collecting()
    # max_attempts counts the first delivery's immediate-retry budget even when unused (an upper bound):
    # with 1 immediate retry, 3 attempts allow exactly two deliveries.
    async with running_worker(q, sink=sink, max_attempts=3, immediate_retries=1):
        await send(sqs, q["url"], {"key": key, "do": "retry_later", "delay": 2})
        await wait_for(lambda: sink.outcomes, timeout=20, what="outcome")
    times = [t for k, _, t in handlers.LOG if k == key]
    assert len(times) == 2  # no immediate retry for RetryLater
    assert times[1] - times[0] >= 1.9
    assert sink.outcomes[0].condition is Condition.RETRIES_EXHAUSTED


async def test_sync_handler_runs_in_thread(sqs: Any, queues: QueueFactory) -> None:
    """A plain def handler runs in a worker thread and succeeds."""
    q = await queues()
    sink = Collecting()
    async with running_worker(q, sink=sink, handler="tests.handlers:blocking"):
        await send(sqs, q["url"], {"sleep": 0.05})
        await wait_for(lambda: sink.outcomes, what="outcome")
    assert sink.outcomes[0].response == {"thread": True}
