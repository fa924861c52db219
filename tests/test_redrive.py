"""``worker redrive`` on LocalStack, in-process: native and app mode, filters, limits, loop guard, FIFO."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import depth, drain, running_worker, send, wait_for
from tests.test_redrive_support import dead_letter, original_id, queue_counts, record_of, redrive, seed
from worker.deadletter.record import FAILURE_ATTRIBUTE
from worker.ops.filters import parse_filter
from worker.ops.redrive.plan import Verdict

pytestmark = pytest.mark.localstack


async def test_native_move_back_to_source(sqs: Any, queues: QueueFactory) -> None:
    """A native move task returns every DLQ message to WORKER_QUEUE_URL unchanged and empties the DLQ."""
    q = await queues()
    requests = [dead_letter(q, {"n": i}, attributes={"tenant": "acme"}) for i in range(15)]
    await seed(sqs, q["dlq_url"], requests)
    report = await redrive(q["dlq_url"], queue_url=q["url"])
    assert report.mode == "native"
    assert report.native is not None
    assert report.native.status == "COMPLETED"
    assert report.native.moved == 15
    assert report.exit_code == 0
    got = await drain(sqs, q["url"], expect=15)
    assert sorted(json.loads(e["Body"])["n"] for e in got) == list(range(15))
    assert {original_id(r) for r in requests} == {record_of(e).original_message_id for e in got}
    # SQS moves messages as they are: the record is untouched (the worker counts the trip on return).
    assert all(record_of(e).redrive_count == 0 and record_of(e).redriven_at is None for e in got)
    assert all(e["MessageAttributes"]["tenant"]["StringValue"] == "acme" for e in got)
    assert await depth(sqs, q["dlq_url"]) == 0


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("error_type=PermanentError", "err"),
        ("source=SOURCE_B", "src"),
        ("age>1h", "old"),
        ("attr.tenant=acme", "attr"),
    ],
)
async def test_app_mode_filter(sqs: Any, queues: QueueFactory, expr: str, want: str) -> None:
    """Each filter kind moves exactly the matching messages (to their own source) and leaves the others."""
    a, b = await queues(), await queues()
    old = datetime.now(UTC) - timedelta(hours=3)
    chosen = [
        dead_letter(a, {"k": "err"}, error_type="PermanentError"),
        dead_letter(b, {"k": "src"}),
        dead_letter(a, {"k": "old"}, dead_lettered_at=old),
        dead_letter(a, {"k": "attr"}, attributes={"tenant": "acme"}),
    ]
    await seed(sqs, a["dlq_url"], chosen)
    filt = parse_filter(expr.replace("SOURCE_B", b["url"].rsplit("/", 1)[-1]))
    report = await redrive(a["dlq_url"], filters=(filt,))
    assert report.mode == "app"
    assert (report.tally.moved, report.tally.skipped, report.tally.failed) == (1, 3, 0)
    target = b["url"] if want == "src" else a["url"]
    [moved] = await drain(sqs, target, expect=1, timeout=5)
    assert json.loads(moved["Body"]) == {"k": want}
    assert record_of(moved).redrive_count == 1
    counts = await queue_counts(sqs, a["dlq_url"])
    assert counts["ApproximateNumberOfMessages"] == "3"  # the others are visible again at once
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"


async def test_dry_run_changes_nothing(sqs: Any, queues: QueueFactory) -> None:
    """A dry run lists what would move and leaves both queues' attributes exactly as they were."""
    q = await queues()
    requests = [
        dead_letter(q, {"n": i}, error_type="PermanentError" if i < 3 else "RuntimeError") for i in range(8)
    ]
    await seed(sqs, q["dlq_url"], requests)
    before = (await queue_counts(sqs, q["dlq_url"]), await queue_counts(sqs, q["url"]))
    report = await redrive(
        q["dlq_url"], queue_url=q["url"], dry_run=True, filters=(parse_filter("error_type=PermanentError"),)
    )
    after = (await queue_counts(sqs, q["dlq_url"]), await queue_counts(sqs, q["url"]))
    assert before == after
    assert report.tally.moved == 3
    assert report.tally.skipped == 5
    assert sorted(r.id for r in report.results if r.dry_run) == sorted(original_id(r) for r in requests[:3])
    assert all(r.target == q["url"] for r in report.results)
    assert "nothing was moved" in report.render()


async def test_max_and_rate(sqs: Any, queues: QueueFactory) -> None:
    """--max 200 of 250 moves exactly 200, and --rate 100 holds within 20 % (from the targets' timestamps)."""
    q = await queues()
    await seed(sqs, q["dlq_url"], [dead_letter(q, {"n": i}) for i in range(250)])
    report = await redrive(q["dlq_url"], queue_url=q["url"], max_messages=200, rate=100.0)
    assert report.tally.moved == 200
    assert report.exit_code == 0
    got = await drain(sqs, q["url"], expect=200, timeout=20)
    assert len(got) == 200
    stamps = sorted(int(e["Attributes"]["SentTimestamp"]) for e in got)
    span = (stamps[-1] - stamps[0]) / 1000
    # The first batch of 10 goes at once (the bucket's burst); the other 190 are paced.
    rate = (len(stamps) - 10) / span
    assert 80 <= rate <= 120, rate
    assert 80 <= report.rate <= 120, report.rate
    assert await depth(sqs, q["dlq_url"]) == 50


async def test_redrive_counter_and_loop_guard(sqs: Any, queues: QueueFactory) -> None:
    """Each redrive of a failing message raises its count by one; at --max-redrives it stays, reported."""
    q = await queues()
    key = unique("poison")
    first_id = await send(sqs, q["url"], {"key": key, "do": "permanent"})
    moved = []
    async with running_worker(q):
        for _ in range(3):
            await wait_for(lambda: _visible(sqs, q["dlq_url"]), timeout=20, what="a dead-letter")
            report = await redrive(q["dlq_url"], queue_url=q["url"], mode="app", max_redrives=2)
            moved.append(report.tally.moved)
    assert moved == [1, 1, 0]
    assert report.tally.held == 1
    assert report.exit_code == 1
    [held] = [r for r in report.results if r.verdict is Verdict.HOLD]
    assert held.id == first_id
    assert "redriven 2 times" in held.reason
    [entry] = await drain(sqs, q["dlq_url"], expect=1)
    record = record_of(entry)
    assert record.redrive_count == 2
    assert record.original_message_id == first_id
    # History: each earlier failure with the redrive that followed it (count and time).
    assert [h["redrive_count"] for h in record.history] == [1, 2]
    assert all(h.get("redriven_at") for h in record.history)


async def _visible(sqs: Any, url: str) -> bool:
    return (await queue_counts(sqs, url))["ApproximateNumberOfMessages"] == "1"


async def test_broker_dead_lettered_message_returns_to_its_source(sqs: Any, queues: QueueFactory) -> None:
    """A message SQS dead-lettered itself (no worker record) goes back to DeadLetterQueueSourceArn's queue,
    gains a record, and counts toward the loop guard when SQS moves it again."""
    q = await queues(max_receive_count=1)
    attrs = {"tenant": {"DataType": "String", "StringValue": "acme"}}
    message_id = await send(sqs, q["url"], "raw body, not JSON", MessageAttributes=attrs)

    async def bounce() -> None:
        for _ in range(2):  # the second receive is over maxReceiveCount: SQS moves it to the DLQ
            await sqs.receive_message(QueueUrl=q["url"], VisibilityTimeout=0, WaitTimeSeconds=0)
        await wait_for(lambda: _visible(sqs, q["dlq_url"]), timeout=10, what="broker dead-letter")

    await bounce()
    report = await redrive(q["dlq_url"])  # no --to, no WORKER_QUEUE_URL: the message names its source
    assert report.mode == "app"
    assert report.tally.moved == 1
    [entry] = await drain(sqs, q["url"], expect=1, timeout=5)
    assert entry["Body"] == "raw body, not JSON"
    assert entry["MessageAttributes"]["tenant"]["StringValue"] == "acme"
    record = record_of(entry)
    assert record.condition == "MaxReceiveCountExceeded"
    assert record.original_message_id == message_id
    assert record.source_queue_arn == q["arn"]
    assert record.redrive_count == 1
    # Sent again (the drained copy is gone), bounced by SQS again: the count survives the broker's move.
    await sqs.send_message(
        QueueUrl=q["url"], MessageBody=entry["Body"], MessageAttributes=entry["MessageAttributes"]
    )
    await bounce()
    report = await redrive(q["dlq_url"], max_redrives=1)
    assert report.tally.held == 1


async def test_fifo_target_keeps_groups_order_and_dedup(sqs: Any, queues: QueueFactory) -> None:
    """FIFO: each group's order is kept, group ids carried, dedup id = original id + redrive count."""
    q = await queues(fifo=True)
    requests = [dead_letter(q, {"g": g, "n": n}, group=g, fifo=True) for g in ("a", "b") for n in range(4)]
    await seed(sqs, q["dlq_url"], requests)
    report = await redrive(q["dlq_url"], queue_url=q["url"])
    assert report.mode == "app"
    assert report.tally.moved == 8
    got = await drain(sqs, q["url"], expect=8, timeout=10)
    for group in ("a", "b"):
        entries = [e for e in got if e["Attributes"]["MessageGroupId"] == group]
        assert [json.loads(e["Body"])["n"] for e in entries] == [0, 1, 2, 3]
        for entry in entries:
            record = record_of(entry)
            assert entry["Attributes"]["MessageDeduplicationId"] == f"redrive-1-{record.original_message_id}"
    assert await depth(sqs, q["dlq_url"]) == 0


async def test_bad_messages_fail_and_stay(sqs: Any, queues: QueueFactory) -> None:
    """Malformed metadata, a deleted source queue, no source at all, a FIFO target without group id:
    each is a per-message failure with its reason, and every one of them stays in the DLQ."""
    q, gone = await queues(), await queues()
    await sqs.delete_queue(QueueUrl=gone["url"])
    malformed = {
        "MessageBody": "m",
        "MessageAttributes": {FAILURE_ATTRIBUTE: {"DataType": "String", "StringValue": "{not json"}},
    }
    await seed(
        sqs,
        q["dlq_url"],
        [
            malformed,
            dead_letter(gone, {"k": "gone"}),
            {"MessageBody": "nobody's"},
            dead_letter(q, {"k": "ok"}),
        ],
    )
    report = await redrive(q["dlq_url"], mode="app")
    assert (report.tally.moved, report.tally.failed) == (1, 3), report.to_json()
    assert report.exit_code == 1
    reasons = sorted(r.reason for r in report.results)
    assert any("unreadable worker.failure" in r for r in reasons)
    assert any("names no source queue" in r for r in reasons)
    assert any("NonExistentQueue" in r or "QueueDoesNotExist" in r for r in reasons), reasons
    counts = await queue_counts(sqs, q["dlq_url"])
    assert counts["ApproximateNumberOfMessages"] == "3"
    fifo = await queues(fifo=True)
    report = await redrive(q["dlq_url"], to=fifo["url"], filters=(parse_filter("error_type=RuntimeError"),))
    [failure] = report.results
    assert "FIFO target needs a message group id" in failure.reason
    assert (await queue_counts(sqs, q["dlq_url"]))["ApproximateNumberOfMessages"] == "3"
    assert await depth(sqs, fifo["url"]) == 0


async def test_to_sends_everything_to_one_queue(sqs: Any, queues: QueueFactory) -> None:
    """--to: messages of two sources all go to one quarantine queue; their records still name the source."""
    a, b, quarantine = await queues(), await queues(), await queues()
    await seed(sqs, a["dlq_url"], [dead_letter(a, {"k": "a"}), dead_letter(b, {"k": "b"})])
    report = await redrive(a["dlq_url"], queue_url=a["url"], to=quarantine["url"], mode="app")
    assert report.tally.moved == 2
    got = await drain(sqs, quarantine["url"], expect=2, timeout=5)
    assert {record_of(e).source_queue_url for e in got} == {a["url"], b["url"]}
    assert await depth(sqs, a["url"]) == 0
    assert await depth(sqs, b["url"]) == 0
