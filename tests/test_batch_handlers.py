"""Batch handlers: one call per receive, partial failures per message, whole-batch failures, FIFO order."""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, drain, running_worker, send, send_bodies, wait_for
from worker.deadletter.record import read_failure
from worker.engine.batch import BatchItemFailed, BatchReportInvalid, BatchResult, item_outcomes, read_report
from worker.engine.failure import classify
from worker.engine.handler import load_handler
from worker.engine.message import Message, parse_sqs_attributes
from worker.engine.policy import Condition, HandlerResult
from worker.errors import PermanentError

#: Every batch call: the keys it got, in order.
CALLS: list[list[str]] = []
#: Successful runs per key, in completion order.
DONE: list[str] = []
#: Runs per key.
RUNS: collections.Counter[str] = collections.Counter()


def _key(message: Message) -> str:
    return str(message.json()["key"])


async def mixed(messages: list[Message]) -> BatchResult:
    """Fails what each body asks for (permanent, once, always); the rest succeed with a response."""
    CALLS.append([_key(m) for m in messages])
    failures: dict[str, BaseException | None] = {}
    responses: dict[str, object] = {}
    for message in messages:
        key, do = _key(message), message.json().get("do")
        RUNS[key] += 1
        if do == "permanent":
            failures[message.id] = PermanentError("bad order")
        elif do == "fail_once" and RUNS[key] == 1:
            failures[message.id] = None
        elif do == "fail":
            failures[message.id] = ValueError("still down")
        else:
            DONE.append(key)
            responses[message.id] = {"done": key}
    return BatchResult(failures=failures, responses=responses)


def raising(messages: Sequence[Message]) -> None:
    """A plain def batch handler that raises on its first call and succeeds after."""
    CALLS.append([_key(m) for m in messages])
    if len(CALLS) == 1:
        raise ConnectionError("database unreachable")
    DONE.extend(_key(m) for m in messages)


async def lambda_style(messages: list[Message]) -> dict[str, Any]:
    """Reports failures the Lambda way; a body asking for it names an id not in the batch."""
    CALLS.append([_key(m) for m in messages])
    if any(m.json().get("do") == "bogus" for m in messages):
        return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}
    failed = [{"itemIdentifier": m.id} for m in messages if m.json().get("do") == "fail"]
    DONE.extend(_key(m) for m in messages if m.json().get("do") != "fail")
    return {"batchItemFailures": failed}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    DONE.clear()
    RUNS.clear()


# --- pure: what a call's result means for each message -------------------------------------------------


def _messages(*groups: str) -> list[Message]:
    return [
        Message(
            id=f"m{i}",
            receipt_handle=f"r{i}",
            raw_body="{}",
            body="{}",
            queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/q.fifo",
            system_attributes={"MessageGroupId": group} if group else {},
        )
        for i, group in enumerate(groups)
    ]


def _classify(exc: BaseException) -> HandlerResult:
    return classify(exc)


def test_none_means_every_message_succeeded_and_responses_follow_their_ids() -> None:
    """None: all succeed; a BatchResult's responses reach their own messages only."""
    ms = _messages("", "")
    assert [
        s.outcome for s in item_outcomes(ms, HandlerResult.SUCCESS, None, None, _classify, fifo=False)
    ] == [HandlerResult.SUCCESS] * 2
    report = BatchResult(responses={"m1": 7})
    shares = item_outcomes(ms, HandlerResult.SUCCESS, report, None, _classify, fifo=False)
    assert [s.response for s in shares] == [None, 7]


def test_reported_failures_are_classified_per_message() -> None:
    """PermanentError is permanent, None a transient BatchItemFailed, others transient; the rest succeed."""
    ms = _messages("", "", "", "")
    report = BatchResult(failures={"m0": PermanentError("x"), "m1": None, "m2": ValueError("y")})
    shares = item_outcomes(ms, HandlerResult.SUCCESS, report, None, _classify, fifo=False)
    assert [s.outcome for s in shares] == [
        HandlerResult.PERMANENT,
        HandlerResult.ERROR,
        HandlerResult.ERROR,
        HandlerResult.SUCCESS,
    ]
    assert isinstance(shares[1].error, BatchItemFailed)


@pytest.mark.parametrize(
    "returned",
    [
        {"batchItemFailures": [{"itemIdentifier": "unknown"}]},
        {"batchItemFailures": "m0"},
        {"batchItemFailures": [{"id": "m0"}]},
        {"something": "else"},
        BatchResult(failures={"unknown": None}),
        "ok",
        42,
    ],
)
def test_a_report_that_cannot_be_trusted_fails_the_whole_batch(returned: object) -> None:
    """Unknown ids, malformed Lambda reports and other return values fail every message (nothing deleted)."""
    ms = _messages("", "")
    assert isinstance(read_report(returned, ["m0", "m1"]), BatchReportInvalid)
    shares = item_outcomes(ms, HandlerResult.SUCCESS, returned, None, _classify, fifo=False)
    assert [s.outcome for s in shares] == [HandlerResult.ERROR] * 2
    assert all(isinstance(s.error, BatchReportInvalid) for s in shares)


def test_lambda_report_names_the_failed_ones() -> None:
    """A well-formed batchItemFailures fails exactly the named messages."""
    ms = _messages("", "", "")
    returned = {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    shares = item_outcomes(ms, HandlerResult.SUCCESS, returned, None, _classify, fifo=False)
    assert [s.outcome for s in shares] == [HandlerResult.SUCCESS, HandlerResult.ERROR, HandlerResult.SUCCESS]


def test_fifo_holds_back_what_follows_a_failure_in_its_group_only() -> None:
    """FIFO: after a group's first failure its later messages are held back; other groups are untouched."""
    ms = _messages("A", "B", "A", "A", "B")
    report = BatchResult(failures={"m2": None})
    shares = item_outcomes(ms, HandlerResult.SUCCESS, report, None, _classify, fifo=True)
    assert [(s.outcome, s.held_back) for s in shares] == [
        (HandlerResult.SUCCESS, False),
        (HandlerResult.SUCCESS, False),
        (HandlerResult.ERROR, False),
        (HandlerResult.SUCCESS, True),
        (HandlerResult.SUCCESS, False),
    ]
    whole = item_outcomes(ms, HandlerResult.TIMEOUT, None, None, _classify, fifo=True)
    assert [s.held_back for s in whole] == [False, False, True, True, True]


def test_a_list_or_sequence_of_messages_makes_a_batch_handler() -> None:
    """The first parameter's annotation decides: list[Message] / Sequence[Message] batch, Message does not."""
    import anyio

    limiter = anyio.CapacityLimiter(1)
    assert load_handler("tests.test_batch_handlers:mixed", thread_limiter=limiter).batch
    assert load_handler("tests.test_batch_handlers:raising", thread_limiter=limiter).batch
    assert not load_handler("tests.handlers:scripted", thread_limiter=limiter).batch


# --- live: LocalStack ------------------------------------------------------------------------------------


@pytest.mark.localstack
async def test_mixed_results_delete_successes_and_route_each_failure_alone(
    sqs: Any, queues: QueueFactory
) -> None:
    """Successes are deleted; a permanent failure is dead-lettered at once; a transient one retried alone."""
    q = await queues()
    ok = [unique("ok") for _ in range(6)]
    bad, flaky = unique("bad"), unique("flaky")
    bodies = [{"key": k} for k in ok[:3]] + [
        {"key": bad, "do": "permanent"},
        {"key": flaky, "do": "fail_once"},
    ]
    await send_bodies(sqs, q["url"], bodies + [{"key": k} for k in ok[3:]])
    sink = Collecting()
    async with running_worker(q, sink=sink, handler="tests.test_batch_handlers:mixed", immediate_retries=1):
        await wait_for(lambda: len(sink.outcomes) == 8, timeout=20, what="eight outcomes")
    by_key = {json.loads(o.message.body)["key"]: o for o in sink.outcomes}
    assert {k for k, o in by_key.items() if o.condition is Condition.SUCCESS} == {*ok, flaky}
    assert by_key[ok[0]].response == {"done": ok[0]}
    assert (by_key[bad].condition, by_key[bad].error_type, by_key[bad].attempts) == (
        Condition.PERMANENT_ERROR,
        "PermanentError",
        1,
    )
    assert RUNS[bad] == 1
    assert RUNS[flaky] == 2
    # The immediate retry called the handler again with the flaky message alone.
    assert [flaky] in CALLS
    assert max(len(c) for c in CALLS) > 1, f"never a batch: {CALLS}"
    [dead] = await drain(sqs, q["dlq_url"], expect=1, timeout=10)
    record = read_failure(parse_sqs_attributes(dead.get("MessageAttributes")))
    assert record is not None
    assert (record.condition, record.error_message) == ("PermanentError", "bad order")
    assert await drain(sqs, q["url"], expect=0, timeout=2) == []


@pytest.mark.localstack
async def test_an_exception_fails_the_whole_batch_and_retries_it(sqs: Any, queues: QueueFactory) -> None:
    """A raising (plain def) batch handler fails every message of the call; the retry runs them again."""
    q = await queues()
    keys = [unique("k") for _ in range(5)]
    await send_bodies(sqs, q["url"], [{"key": k} for k in keys])
    sink = Collecting()
    async with running_worker(q, sink=sink, handler="tests.test_batch_handlers:raising", immediate_retries=1):
        await wait_for(lambda: len(sink.outcomes) == 5, timeout=20, what="five outcomes")
    assert all(o.condition is Condition.SUCCESS for o in sink.outcomes)
    assert sorted(DONE) == sorted(keys)
    first = CALLS[0]
    assert len(CALLS) >= 2
    assert CALLS[1] == first  # the whole failed call came back at once (immediate retry)
    attempts = {json.loads(o.message.body)["key"]: o.attempts for o in sink.outcomes}
    assert {attempts[k] for k in first} == {2}


@pytest.mark.localstack
async def test_lambda_reports_and_untrusted_reports(sqs: Any, queues: QueueFactory) -> None:
    """batchItemFailures fails the named messages; a report naming a foreign id fails the whole call."""
    q = await queues()
    good, failing, bogus = unique("good"), unique("failing"), unique("bogus")
    await send_bodies(sqs, q["url"], [{"key": good}, {"key": failing, "do": "fail"}])
    sink = Collecting()
    async with running_worker(
        q, sink=sink, handler="tests.test_batch_handlers:lambda_style", immediate_retries=0, max_attempts=1
    ):
        await wait_for(lambda: len(sink.outcomes) == 2, timeout=20, what="two outcomes")
        await send(sqs, q["url"], {"key": bogus, "do": "bogus"})
        await wait_for(lambda: len(sink.outcomes) == 3, timeout=20, what="the bogus outcome")
    by_key = {json.loads(o.message.body)["key"]: o for o in sink.outcomes}
    assert by_key[good].condition is Condition.SUCCESS
    assert (by_key[failing].condition, by_key[failing].error_type) == (
        Condition.RETRIES_EXHAUSTED,
        "BatchItemFailed",
    )
    assert (by_key[bogus].condition, by_key[bogus].error_type) == (
        Condition.RETRIES_EXHAUSTED,
        "BatchReportInvalid",
    )


@pytest.mark.localstack
async def test_fifo_failure_holds_back_the_rest_of_its_group(sqs: Any, queues: QueueFactory) -> None:
    """FIFO: a failed message's later group mates go back (no attempt) and complete after it, in order."""
    q = await queues(fifo=True)
    a1, a2, a3 = unique("a1"), unique("a2"), unique("a3")
    for body in ({"key": a1}, {"key": a2, "do": "fail_once"}, {"key": a3}):
        await send(sqs, q["url"], body, MessageGroupId="A", MessageDeduplicationId=unique("d"))
    sink = Collecting()
    async with running_worker(
        q,
        sink=sink,
        handler="tests.test_batch_handlers:mixed",
        immediate_retries=0,
        backoff_base_seconds=1,
        backoff_max_seconds=1,
    ):
        await wait_for(lambda: len(sink.outcomes) == 3, timeout=30, what="three outcomes")
    assert all(o.condition is Condition.SUCCESS for o in sink.outcomes)
    # Completion order follows the group's order, whatever the handler reported for a3 the first time.
    last_success = {key: position for position, key in enumerate(DONE)}
    assert sorted((a1, a2, a3), key=last_success.__getitem__) == [a1, a2, a3]
    failing_call = next(c for c in CALLS if a2 in c)
    if a3 in failing_call:  # a3 was in the call that failed a2: held back, so it ran again later
        assert RUNS[a3] == 2
    attempts = {json.loads(o.message.body)["key"]: o.attempts for o in sink.outcomes}
    assert attempts[a3] == 1  # the hand-back was not an attempt
