"""``worker dlq`` against LocalStack: totals, breakdown by error type / source / age, records, scan safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import QueueFactory
from tests.test_redrive_support import dead_letter, queue_counts, seed
from worker.cli import build_parser
from worker.ops.dlq import inspect, render_text
from worker.ops.settings import ToolError, ToolSettings

pytestmark = pytest.mark.localstack


async def report_of(dlq_url: str, *argv: str) -> dict[str, Any]:
    """``worker dlq --dlq URL ARGV...`` in-process; the report data."""
    args = build_parser().parse_args(["dlq", "--dlq", dlq_url, *argv])
    return await inspect(args, ToolSettings())


async def test_dlq_counts_and_grouping(sqs: Any, queues: QueueFactory) -> None:
    """Totals, groups by error type, source and age, records without bodies; all visible again afterwards."""
    a, b = await queues(), await queues()
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    await seed(
        sqs,
        a["dlq_url"],
        [dead_letter(a, {"n": i}, error_type="RuntimeError") for i in range(3)]
        + [
            dead_letter(b, {"n": i}, error_type="PermanentError", dead_lettered_at=two_days_ago)
            for i in range(2)
        ]
        + [{"MessageBody": "moved by someone else"}],
    )
    report = await report_of(a["dlq_url"], "--json")
    assert report["counts"] == {"visible": 6, "in_flight": 0, "delayed": 0}
    assert report["source_queues"] == [a["url"].rsplit("/", 1)[-1]]
    scan = report["scan"]
    assert scan["scanned"] == 6
    assert scan["complete"] is True
    assert scan["by_error_type"] == {"RuntimeError": 3, "PermanentError": 2, "none": 1}
    name_a, name_b = a["url"].rsplit("/", 1)[-1], b["url"].rsplit("/", 1)[-1]
    assert scan["by_source"] == {name_a: 3, name_b: 2, "(unknown)": 1}
    assert scan["by_age"] == {"< 1 h": 4, "1 - 7 d": 2}
    assert "receive count" in scan["note"]
    rows = scan["records"]
    assert len(rows) == 6
    assert rows[0]["error_type"] == "PermanentError"  # oldest first
    assert rows[0]["attempts"] == 5
    assert rows[0]["source"] == name_b
    assert all("body" not in row for row in rows)
    counts = await queue_counts(sqs, a["dlq_url"])
    assert counts["ApproximateNumberOfMessages"] == "6"
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
    # The scan is a receive: say so, and it shows in the receive count.
    response = await sqs.receive_message(
        QueueUrl=a["dlq_url"],
        MaxNumberOfMessages=1,
        VisibilityTimeout=0,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )
    assert response["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    text = render_text(await report_of(a["dlq_url"], "--filter", "error_type=RuntimeError", "--list", "1"))
    assert "raises each scanned message's receive count" in text
    assert "3 match error_type=RuntimeError" in text
    assert "Records (1 of 3" in text


async def test_dlq_bodies_only_when_asked(sqs: Any, queues: QueueFactory) -> None:
    """Bodies appear only with --show-body; --counts-only does not receive at all."""
    q = await queues()
    await seed(sqs, q["dlq_url"], [dead_letter(q, {"secret": "s3cr3t"})])
    plain = await report_of(q["dlq_url"], "--json")
    assert "s3cr3t" not in json.dumps(plain)
    shown = await report_of(q["dlq_url"], "--json", "--show-body")
    assert json.loads(shown["scan"]["records"][0]["body"]) == {"secret": "s3cr3t"}
    counts_only = await report_of(q["dlq_url"], "--counts-only")
    assert counts_only["scan"] is None
    response = await sqs.receive_message(
        QueueUrl=q["dlq_url"], MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )
    assert response["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "3"  # two scans, this one


async def test_dlq_with_own_redrive_policy_needs_force(sqs: Any, queues: QueueFactory) -> None:
    """A DLQ whose own RedrivePolicy could move messages because a scan raises receive counts: refused
    unless --force (and --counts-only is always allowed)."""
    q = await queues()
    parking = await queues()
    policy = json.dumps({"deadLetterTargetArn": parking["dlq_arn"], "maxReceiveCount": 3})
    await sqs.set_queue_attributes(QueueUrl=q["dlq_url"], Attributes={"RedrivePolicy": policy})
    await seed(sqs, q["dlq_url"], [dead_letter(q, {"n": 1})])
    with pytest.raises(ToolError, match="own RedrivePolicy"):
        await report_of(q["dlq_url"])
    assert (await report_of(q["dlq_url"], "--counts-only"))["counts"]["visible"] == 1
    forced = await report_of(q["dlq_url"], "--force")
    assert forced["scan"]["scanned"] == 1
