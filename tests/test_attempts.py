"""Attempts count handler runs: receives that ran no handler never dead-letter a message unrun."""

from __future__ import annotations

from typing import Any

import pytest

from tests import handlers
from tests.conftest import QueueFactory, on_emulators, unique
from tests.helpers import Collecting, drain, running_worker, send, wait_for
from worker.deadletter.record import read_failure
from worker.engine.message import parse_sqs_attributes
from worker.engine.policy import Condition

pytestmark = pytest.mark.localstack


async def inflate_receive_count(sqs: Any, url: str, receives: int) -> None:
    """Receive the one message ``receives`` times and give it straight back, as other workers would."""
    for _ in range(receives):
        response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5)
        [entry] = response["Messages"]
        await sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=entry["ReceiptHandle"], VisibilityTimeout=0
        )


@on_emulators()
async def test_exhausted_receive_count_still_runs_the_handler(sqs: Any, queues: QueueFactory) -> None:
    """A message received 5 times elsewhere (MAX_ATTEMPTS=3) runs once more and succeeds: no DLQ record."""
    q = await queues()
    key = unique("late")
    await send(sqs, q["url"], {"key": key})
    await inflate_receive_count(sqs, q["url"], 5)
    sink = Collecting()
    async with running_worker(q, sink=sink, max_attempts=3, immediate_retries=1):
        await wait_for(lambda: sink.outcomes, what="an outcome")
    [outcome] = sink.outcomes
    assert outcome.condition is Condition.SUCCESS
    assert handlers.CALLS[key] == 1
    assert outcome.message.receive_count == 6  # the fault happened: five receives ran no handler


@on_emulators()
async def test_exhausted_receive_count_dead_letters_with_the_real_error(
    sqs: Any, queues: QueueFactory
) -> None:
    """Past its attempts by receive count, a failing message runs once, then its record holds that error."""
    q = await queues()
    key = unique("late-fail")
    await send(sqs, q["url"], {"key": key, "do": "fail"})
    await inflate_receive_count(sqs, q["url"], 4)
    sink = Collecting()
    async with running_worker(q, sink=sink, max_attempts=3, immediate_retries=1):
        await wait_for(lambda: sink.outcomes, what="an outcome")
    assert handlers.CALLS[key] == 1
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
    assert record is not None
    assert record.condition == Condition.RETRIES_EXHAUSTED
    assert record.error_type == "RuntimeError"
    assert record.error_message == f"scripted failure of {key}"
    assert record.receive_count == 5
    assert record.handed_back == 0  # other consumers' receives are not known to this worker


async def test_fifo_hand_backs_cost_no_attempt(sqs: Any, queues: QueueFactory) -> None:
    """A FIFO message given back with its group's failed head still gets all its attempts (LocalStack)."""
    q = await queues(fifo=True)
    head, tail = unique("head"), unique("tail")
    for body in ({"key": head, "do": "fail_times", "n": 1}, {"key": tail, "do": "fail"}):
        await send(sqs, q["url"], body, MessageGroupId="G", MessageDeduplicationId=unique("d"))
    sink = Collecting()
    async with running_worker(
        q, sink=sink, max_attempts=2, immediate_retries=0, backoff_base_seconds=1, backoff_max_seconds=1
    ):
        await wait_for(lambda: len(sink.outcomes) == 2, timeout=30, what="two outcomes")
    # The head failed once: the tail went back with it unrun, then ran max_attempts (2) times.
    assert handlers.CALLS[head] == 2
    assert handlers.CALLS[tail] == 2
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
    assert record is not None
    assert (record.attempts, record.receive_count, record.handed_back) == (2, 3, 1)
