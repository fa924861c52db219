"""Per-entry failures of the batched SQS calls on LocalStack: ``Failed`` entries map back to their submitter.

A malformed receipt handle (LocalStack accepts stale but well-formed ones) fails only its own entry with
``ReceiptHandleIsInvalid``; the valid entries of the same call take effect, and each failed entry adds one
to ``worker_sqs_errors_total{operation}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import depth, send, wait_for
from worker.aws.batcher import BatchCall, Batcher
from worker.telemetry.metrics import Metrics

pytestmark = pytest.mark.localstack

MALFORMED = "not-a-receipt-handle"
INVALID = "ReceiptHandleIsInvalid"


def sqs_errors(metrics: Metrics, operation: str) -> float:
    """worker_sqs_errors_total{operation} (0 when never incremented)."""
    return metrics.registry.get_sample_value("worker_sqs_errors_total", {"operation": operation}) or 0.0


class CallLog:
    """The ``Entries`` of each call a real client makes to one method, recorded on the way through."""

    def __init__(self, client: Any, method: str) -> None:
        self.client, self.method = client, method
        self.entries: list[list[dict[str, Any]]] = []
        self._call: Callable[..., Any] = getattr(client, method)

    async def __call__(self, **kwargs: Any) -> Any:
        self.entries.append(list(kwargs["Entries"]))
        return await self._call(**kwargs)


@asynccontextmanager
async def running_batcher(client: Any, call: BatchCall, url: str, metrics: Metrics) -> AsyncIterator[Batcher]:
    """A Batcher on a real client (its batch window long enough to hold entries submitted together)."""
    batcher = Batcher(client, call, url, metrics, linger=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        try:
            yield batcher
        finally:
            batcher.close()


@asynccontextmanager
async def call_log(client: Any, method: str) -> AsyncIterator[CallLog]:
    """Record ``method``'s calls on ``client`` for a block."""
    log = CallLog(client, method)
    setattr(client, method, log)
    try:
        yield log
    finally:
        delattr(client, method)


async def receive_handles(sqs: Any, url: str, count: int, visibility: int = 60) -> dict[str, str]:
    """Receive ``count`` messages (hidden for ``visibility`` s): receipt handle by body."""
    handles: dict[str, str] = {}
    with anyio.fail_after(20):
        while len(handles) < count:
            response = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=visibility
            )
            for entry in response.get("Messages", []):
                handles[entry["Body"]] = entry["ReceiptHandle"]
    return handles


async def test_delete_batch_fails_only_the_malformed_entry(sqs: Any, queues: QueueFactory) -> None:
    """DeleteMessageBatch: the malformed entry gets its error code; the valid one in its call is deleted."""
    q = await queues()
    body = unique("valid")
    await send(sqs, q["url"], body)
    [handle] = (await receive_handles(sqs, q["url"], 1)).values()
    metrics = Metrics()
    results: dict[str, str | None] = {}

    async def submit(batcher: Batcher, name: str, receipt_handle: str) -> None:
        results[name] = await batcher.submit({"ReceiptHandle": receipt_handle})

    async with (
        call_log(sqs, "delete_message_batch") as calls,
        running_batcher(sqs, BatchCall.DELETE, q["url"], metrics) as batcher,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(submit, batcher, "malformed", MALFORMED)  # entry 0: not the last one
        tg.start_soon(submit, batcher, "valid", handle)

    assert [[e["ReceiptHandle"] for e in entries] for entries in calls.entries] == [[MALFORMED, handle]]
    assert results == {"malformed": INVALID, "valid": None}
    assert sqs_errors(metrics, "DeleteMessageBatch") == 1
    assert sqs_errors(metrics, "ChangeMessageVisibilityBatch") == 0
    await wait_for(lambda: _gone(sqs, q["url"]), timeout=10, what="the valid message deleted")


async def _gone(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


async def test_visibility_batch_fails_only_the_malformed_entry(sqs: Any, queues: QueueFactory) -> None:
    """ChangeMessageVisibilityBatch: only the malformed middle entry fails; both valid ones are released."""
    q = await queues()
    bodies = [unique("first"), unique("last")]
    for body in bodies:
        await send(sqs, q["url"], body)
    handles = await receive_handles(sqs, q["url"], 2, visibility=600)
    metrics = Metrics()
    results: dict[str, str | None] = {}

    def keep(name: str) -> Callable[[str | None], None]:
        return lambda error: results.__setitem__(name, error)

    first, last = handles[bodies[0]], handles[bodies[1]]
    async with (
        call_log(sqs, "change_message_visibility_batch") as calls,
        running_batcher(sqs, BatchCall.CHANGE_VISIBILITY, q["url"], metrics) as batcher,
    ):
        # Submitted without a checkpoint in between: one batch, in this order.
        batcher.submit_nowait({"ReceiptHandle": first, "VisibilityTimeout": 0}, keep("first"))
        batcher.submit_nowait({"ReceiptHandle": MALFORMED, "VisibilityTimeout": 0}, keep("malformed"))
        batcher.submit_nowait({"ReceiptHandle": last, "VisibilityTimeout": 0}, keep("last"))
        await wait_for(lambda: len(results) == 3, timeout=10, what="every entry answered")

    assert len(calls.entries) == 1
    assert [e["ReceiptHandle"] for e in calls.entries[0]] == [first, MALFORMED, last]
    assert results == {"first": None, "malformed": INVALID, "last": None}
    assert sqs_errors(metrics, "ChangeMessageVisibilityBatch") == 1
    assert sqs_errors(metrics, "DeleteMessageBatch") == 0
    # Both valid changes took effect: hidden for 600 s at receive, the two messages are visible again now.
    again = await receive_handles(sqs, q["url"], 2)
    assert sorted(again) == sorted(bodies)
