"""Helpers of the redrive and DLQ tests (no tests here): seed a DLQ, run a redrive in-process, a fallback.

The fallback handler runs inside a ``worker run`` subprocess, which imports this module: it must never
import ``tests.conftest`` (that module rewrites the AWS environment when imported).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from worker import Message, PermanentError
from worker.deadletter.record import FAILURE_ATTRIBUTE, build_dead_letter, failure_record, read_failure
from worker.engine.message import parse_message, parse_sqs_attributes
from worker.ops.redrive.command import run_redrive
from worker.ops.redrive.options import RedriveOptions
from worker.ops.redrive.report import Report
from worker.ops.settings import ToolSettings


def dead_letter(
    source: dict[str, str],
    body: Any,
    *,
    error_type: str = "RuntimeError",
    condition: str = "RetriesExhausted",
    redrive_count: int = 0,
    dead_lettered_at: datetime | None = None,
    attributes: dict[str, str] | None = None,
    group: str | None = None,
    fifo: bool = False,
    original_id: str | None = None,
) -> dict[str, Any]:
    """SendMessage arguments of a DLQ copy exactly as the worker writes it, for a message of ``source``."""
    text = body if isinstance(body, str) else json.dumps(body)
    system = {"ApproximateReceiveCount": "5", "SentTimestamp": "1717230000000"}
    if group is not None:
        system["MessageGroupId"] = group
    entry = {
        "MessageId": original_id or str(uuid.uuid4()),
        "ReceiptHandle": "seed",
        "Body": text,
        "Attributes": system,
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value} for name, value in (attributes or {}).items()
        },
    }
    message = parse_message(entry, source["url"])
    record = failure_record(
        message,
        error_type=error_type,
        error_message=f"{error_type} happened",
        condition=condition,
        attempts=5,
        source_queue_arn=source["arn"],
        handler="tests.handlers:scripted",
        handler_version="v1",
        now=dead_lettered_at or datetime.now(UTC),
    )
    return build_dead_letter(message, dataclasses.replace(record, redrive_count=redrive_count), fifo=fifo)


async def seed(sqs: Any, url: str, requests: list[dict[str, Any]]) -> None:
    """Send these SendMessage argument sets to ``url``, 10 per call, in order."""
    for start in range(0, len(requests), 10):
        chunk = requests[start : start + 10]
        response = await sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), **r} for i, r in enumerate(chunk)]
        )
        assert not response.get("Failed"), response["Failed"]


def original_id(request: dict[str, Any]) -> str:
    """The original message id in a seeded request's failure record."""
    raw = request["MessageAttributes"][FAILURE_ATTRIBUTE]["StringValue"]
    return str(json.loads(raw)["original_message_id"])


def record_of(entry: dict[str, Any]) -> Any:
    """The failure record of a received entry (asserts there is one)."""
    record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
    assert record is not None, entry.get("MessageAttributes")
    return record


async def redrive(dlq_url: str, *, queue_url: str | None = None, **options: Any) -> Report:
    """``worker redrive`` in-process (no signal handlers, progress to a buffer)."""
    settings = ToolSettings(dlq_url=dlq_url, queue_url=queue_url)
    return await run_redrive(RedriveOptions(**options), settings, handle_signals=False, stderr=io.StringIO())


async def queue_counts(sqs: Any, url: str) -> dict[str, str]:
    """The ApproximateNumberOf* attributes of a queue."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    response = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return dict(response["Attributes"])


def _journal(key: object, original: str | None) -> None:
    path = os.environ.get("REDRIVE_JOURNAL")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "original": original}) + "\n")


async def fallback(message: Message) -> object:
    """The secondary consumer's handler: ``{"fallback": "ok"}`` succeeds, anything else is permanent."""
    doc = message.json()
    record = read_failure(message.sqs_attributes)
    _journal(doc.get("key"), record.original_message_id if record else None)
    if doc.get("fallback") != "ok":
        raise PermanentError("the fallback cannot handle it either")
    return {"handled_by": "fallback"}
