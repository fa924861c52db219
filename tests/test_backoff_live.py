"""Delayed retries end to end on LocalStack: SQS redelivers after exponentially growing, jittered delays.

With immediate_retries=0 every failure of a message's k-th delivery gives it back for
``max(1, floor(draw * ceiling_k))`` seconds, ``ceiling_k = base * 2^(k-1)`` (full jitter). The handler
records the monotonic time and receive count of every invocation; the worker's "retry_after" log lines say
which delay was drawn. The gaps between invocations must match the drawn delays (SQS really held the
message that long, no longer than a poll's latency more), stay under their ceilings, grow with the retry
number, and differ between messages at the same retry number.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from typing import Any

import pytest

from tests import timeout_handlers as th
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, running_worker, send_bodies, wait_for
from worker.engine.policy import Condition

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

MESSAGES = 12
MAX_ATTEMPTS = 6  # 5 delayed retries: ceilings 1, 2, 4, 8, 16 s
BASE = 1
#: From the visibility change to the next invocation: the drawn delay plus at most this much. LocalStack
#: was seen to redeliver about 1 s (one long-poll wait) after a message turned visible again.
REDELIVERY_MARGIN = 3.0


def ceiling(retry: int) -> int:
    """The ceiling of the ``retry``-th delayed retry (1-based)."""
    return BASE << (retry - 1)


async def test_delayed_retries_grow_exponentially_with_full_jitter(
    sqs: Any, queues: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redelivery gaps follow the drawn delays: at least 1 s, under base*2^(k-1), growing, jittered."""
    caplog.set_level(logging.WARNING, logger="worker.processor")
    q = await queues()
    run = unique("backoff")
    keys = [f"{run}-{i}" for i in range(MESSAGES)]
    sink = Collecting()
    async with running_worker(
        q,
        sink=sink,
        handler="tests.timeout_handlers:always_fails",
        max_attempts=MAX_ATTEMPTS,
        immediate_retries=0,
        backoff_base_seconds=BASE,
        backoff_max_seconds=3600,
        # Every call fails: the `handler` circuit breaker would open and hold the messages back (its job,
        # tests/test_breaker_outage.py); this test measures the backoff between attempts without it.
        breaker={"enabled": False},
    ):
        await send_bodies(sqs, q["url"], [{"key": key} for key in keys])
        # Worst case: 1 + 1 + 3 + 7 + 15 s of delays, plus a redelivery latency per retry.
        await wait_for(lambda: len(sink.outcomes) == MESSAGES, timeout=60, what="every message dead-lettered")
    assert {o.condition for o in sink.outcomes} == {Condition.RETRIES_EXHAUSTED}

    # The delay drawn for each (message id, receive count), from the worker's retry_after log lines.
    drawn: dict[tuple[str, int], int] = {}
    for record in caplog.records:
        if (
            getattr(record, "event", "") == "handler_failed"
            and getattr(record, "action", "") == "retry_after"
        ):
            drawn[(record.message_id, record.receive_count)] = int(record.delay)  # type: ignore[attr-defined]

    delays: dict[int, list[int]] = defaultdict(list)  # retry number -> drawn delay of each message
    for key in keys:
        starts = th.events(key, "start")
        assert [e.receive_count for e in starts] == list(range(1, MAX_ATTEMPTS + 1)), key
        for retry, (before, after) in enumerate(itertools.pairwise(starts), start=1):
            delay = drawn[(before.message_id, before.receive_count)]
            gap = after.at - before.at
            # Full jitter in whole seconds: at least 1 s, below the ceiling (a draw is < 1).
            assert 1 <= delay <= max(1, ceiling(retry) - 1), (key, retry, delay)
            # SQS held the message for the drawn delay: never less, at most a poll's latency more.
            assert delay - 0.05 <= gap <= delay + REDELIVERY_MARGIN, (key, retry, delay, gap)
            assert gap <= ceiling(retry) + REDELIVERY_MARGIN, (key, retry, gap)
            delays[retry].append(delay)
    assert sorted(delays) == list(range(1, MAX_ATTEMPTS))

    # Ceilings 1 and 2 leave only the 1 s floor.
    assert set(delays[1]) == set(delays[2]) == {1}
    # Growth: later retries wait longer than an earlier ceiling allows (and the gaps are at least the
    # delays, checked above). Fails by chance with probability (3/8)^12 + (5/16)^12 < 1e-5 (every draw of
    # retry 4 at most 2 s, or every draw of retry 5 at most 4 s).
    assert max(delays[4]) > ceiling(2), delays[4]
    assert max(delays[5]) > ceiling(3), delays[5]
    # Jitter: the same retry number draws different delays for different messages (all 12 equal by chance:
    # below 1e-7 for ceilings 8 and 16).
    assert len(set(delays[4])) > 1, delays[4]
    assert len(set(delays[5])) > 1, delays[5]
