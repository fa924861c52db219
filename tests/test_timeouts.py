"""The per-message deadline (WORKER_TIMEOUT_SECONDS) on LocalStack: what it cancels, abandons and frees.

An async handler is cancelled at its deadline (its code after the await never runs); a plain def handler
cannot be cancelled, so its thread is abandoned: the message is retried and its slot serves other
messages while the thread still blocks.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from tests import timeout_handlers as th
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, running_worker, send, wait_for
from worker.aws.names import queue_name
from worker.engine.policy import Condition
from worker.telemetry.metrics import Metrics

pytestmark = pytest.mark.localstack

TIMEOUT = 1.0
#: Event-loop lag allowed between the deadline and the handler seeing its cancellation (2 busy cores).
CANCEL_MARGIN = 1.0
#: From a message's release with visibility N to its next delivery: N plus at most this much.
REDELIVERY_MARGIN = 2.5


def counter(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    """A counter's value (0 when never incremented)."""
    return metrics.registry.get_sample_value(f"{name}_total", labels) or 0.0


def handler_labels(q: dict[str, str], handler: str) -> dict[str, str]:
    """The labels of the per-handler metrics of a worker on ``q`` running ``handler``."""
    return {"queue": queue_name(q["url"]), "handler": handler, "handler_version": "unknown"}


async def test_async_handler_is_cancelled_at_its_deadline(sqs: Any, queues: QueueFactory) -> None:
    """An async handler past its deadline is cancelled there: code after its await never runs, it retries."""
    q = await queues()
    key = unique("cancel")
    sleep = 4.0  # what the handler would sleep if nothing cancelled it
    handler = "tests.timeout_handlers:cancellable"
    sink, metrics = Collecting(), Metrics()
    async with running_worker(
        q,
        sink=sink,
        metrics=metrics,
        handler=handler,
        timeout_seconds=TIMEOUT,
        max_attempts=2,
        immediate_retries=0,
        backoff_base_seconds=1,
        backoff_max_seconds=1,
    ):
        await send(sqs, q["url"], {"key": key, "sleep": sleep})
        await wait_for(lambda: sink.outcomes, timeout=30, what="the dead-letter outcome")
        # Stay well past the end of the sleep the last run would have done: "after" must still not appear.
        last_start = th.events(key, "start")[-1].at
        await anyio.sleep(max(0.0, last_start + sleep + 1.0 - time.monotonic()))
        assert th.events(key, "after") == [], "code after the handler's await ran: it was not cancelled"

    starts, cancels = th.events(key, "start"), th.events(key, "cancelled")
    assert [e.receive_count for e in starts] == [1, 2]
    assert [e.receive_count for e in cancels] == [1, 2]
    for start, cancel in zip(starts, cancels, strict=True):
        ran = cancel.at - start.at
        assert TIMEOUT - 0.1 <= ran <= TIMEOUT + CANCEL_MARGIN, f"cancelled {ran:.2f}s after its start"
    # Given back at the deadline with the 1 s backoff (immediate_retries=0): the retry starts that late.
    gap = starts[1].at - starts[0].at
    assert TIMEOUT + 1.0 - 0.1 <= gap <= TIMEOUT + 1.0 + REDELIVERY_MARGIN, (
        f"retry {gap:.2f}s after the first"
    )
    [outcome] = sink.outcomes
    assert outcome.condition is Condition.TIMEOUT
    assert outcome.attempts == 2
    assert outcome.error_type == "Timeout"
    assert counter(metrics, "worker_handler_timeouts", handler_labels(q, handler)) == 2
    assert counter(metrics, "worker_retries", {"queue": queue_name(q["url"]), "kind": "delayed"}) == 1


async def test_sync_handler_timeout_abandons_thread_and_frees_its_slot(
    sqs: Any, queues: QueueFactory
) -> None:
    """A plain def past its deadline: thread abandoned, its only slot serves another message, it retries."""
    q = await queues()
    hung, other = unique("hung"), unique("next")
    block = 6.0  # the first run blocks its thread this long; the deadline is TIMEOUT
    handler = "tests.timeout_handlers:blocking"
    sink, metrics = Collecting(), Metrics()
    async with running_worker(
        q,
        sink=sink,
        metrics=metrics,
        handler=handler,
        concurrency=1,
        max_abandoned_threads=2,  # the default (the concurrency, 1) would pause receiving at this timeout
        timeout_seconds=TIMEOUT,
        max_attempts=3,
        immediate_retries=0,
        backoff_base_seconds=1,
        backoff_max_seconds=1,
    ):
        await send(sqs, q["url"], {"key": hung, "sleep": block, "block_until": 1})
        await wait_for(lambda: th.events(hung, "start"), timeout=15, what="the blocking run started")
        await send(sqs, q["url"], {"key": other})
        await wait_for(lambda: len(sink.outcomes) == 2, timeout=30, what="both messages succeeded")
        # The abandoned thread still finishes its sleep in the background: wait for it, then check when.
        await wait_for(
            lambda: th.events(hung, "after"), timeout=block + 10, what="the abandoned thread ended"
        )

    [first] = th.events(hung, "start")[:1]
    [thread_end] = th.events(hung, "after")
    [other_done] = th.events(other, "done")
    assert thread_end.at - first.at >= block - 0.1  # the thread really blocked that long
    # With concurrency 1 the other message could only run in the slot the hung one gave back: it finished
    # well before the blocked thread did.
    assert other_done.at < thread_end.at - 2.0, (
        f"next message done {other_done.at - first.at:.2f}s after the hung start, thread ended "
        f"{thread_end.at - first.at:.2f}s after it"
    )
    # The timed-out message was given back and delivered again (receive count 2), while its thread still
    # blocked, and its second run succeeded.
    starts = th.events(hung, "start")
    assert [e.receive_count for e in starts] == [1, 2]
    assert starts[1].at < thread_end.at
    assert [e.receive_count for e in th.events(hung, "done")] == [2]
    by_key = {str(o.message.json()["key"]): o for o in sink.outcomes}
    assert by_key[hung].condition is Condition.SUCCESS
    assert by_key[hung].attempts == 2
    assert by_key[other].condition is Condition.SUCCESS
    assert by_key[other].attempts == 1
    assert counter(metrics, "worker_handler_timeouts", handler_labels(q, handler)) == 1
    assert counter(metrics, "worker_retries", {"queue": queue_name(q["url"]), "kind": "delayed"}) == 1
