"""A dependency down 30 s: with the breaker none is dead-lettered, without it the queue drains to the DLQ."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, drain, http_get_async, running_worker, send_bodies, wait_for
from worker import DependencyDown, Message
from worker.engine.policy import Condition
from worker.telemetry.metrics import Metrics

#: How long the dependency is down (the issue's scenario: 30 s).
OUTAGE_SECONDS = float(os.environ.get("BREAKER_OUTAGE_SECONDS", "30"))
MESSAGES = 40
#: Switch name -> monotonic time until which "payments-api" is down.
DOWN_UNTIL: dict[str, float] = {}
#: Handler calls per switch: (failed, succeeded).
CALLS: dict[str, list[int]] = {}


async def pay(message: Message) -> object:
    """Calls "payments-api": raises DependencyDown while its switch says it is down, else succeeds."""
    body = message.json()
    calls = CALLS.setdefault(body["switch"], [0, 0])
    await anyio.sleep(0.02)
    if time.monotonic() < DOWN_UNTIL[body["switch"]]:
        calls[0] += 1
        raise DependencyDown("payments-api", reason="connection refused")
    calls[1] += 1
    return {"paid": body["key"]}


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.localstack
@pytest.mark.slow
async def test_breaker_saves_every_message_through_an_outage_and_its_absence_dead_letters(
    sqs: Any, queues: QueueFactory
) -> None:
    """Same outage, two workers: breaker on: 0 in the DLQ, all processed after recovery; off: DLQ'd."""
    with_breaker, without = await queues(), await queues()
    switch_on, switch_off = unique("on"), unique("off")
    start = time.monotonic()
    DOWN_UNTIL[switch_on] = DOWN_UNTIL[switch_off] = start + OUTAGE_SECONDS
    await send_bodies(
        sqs, with_breaker["url"], [{"key": unique("m"), "switch": switch_on} for _ in range(MESSAGES)]
    )
    await send_bodies(
        sqs, without["url"], [{"key": unique("m"), "switch": switch_off} for _ in range(MESSAGES)]
    )
    common: dict[str, Any] = {
        "handler": "tests.test_breaker_outage:pay",
        "concurrency": 10,
        "max_attempts": 5,
        "immediate_retries": 1,
        "backoff_base_seconds": 1,
        "backoff_max_seconds": 4,
    }
    breaker = {
        "min_calls": 10,
        "failure_ratio": 0.5,
        "window_seconds": 10,
        "open_seconds": 10,
        "half_open_calls": 2,
    }
    on_metrics, off_metrics = Metrics(), Metrics()
    on_sink, off_sink = Collecting(), Collecting()
    readyz: list[tuple[int, dict[str, Any]]] = []
    async with (
        running_worker(with_breaker, sink=on_sink, metrics=on_metrics, breaker=breaker, **common) as worker,
        running_worker(without, sink=off_sink, metrics=off_metrics, breaker={"enabled": False}, **common),
    ):

        async def breaker_open() -> bool:
            status, body = await http_get_async(worker.http_port, "/readyz")
            doc = json.loads(body)
            if doc.get("open_breakers"):
                readyz.append((status, doc))
                return True
            return False

        await wait_for(breaker_open, timeout=OUTAGE_SECONDS, what="/readyz to list the open breaker")
        await wait_for(
            lambda: len(off_sink.outcomes) == MESSAGES,
            timeout=OUTAGE_SECONDS + 30,
            what="every message without",
        )
        await wait_for(
            lambda: len(on_sink.outcomes) == MESSAGES, timeout=OUTAGE_SECONDS + 60, what="every message with"
        )
        recovered_after = time.monotonic() - start
    on_conditions = [o.condition for o in on_sink.outcomes]
    off_conditions = [o.condition for o in off_sink.outcomes]
    on_failed, on_succeeded = CALLS[switch_on]
    off_failed = CALLS[switch_off][0]
    summary = {
        "outage_s": OUTAGE_SECONDS,
        "messages": MESSAGES,
        "with_breaker": {
            "succeeded": on_conditions.count(Condition.SUCCESS),
            "dead_lettered": len(on_conditions) - on_conditions.count(Condition.SUCCESS),
            "handler_failures": on_failed,
            "breaker_hand_backs": _sample(
                on_metrics, "worker_retries_total", queue=_name(with_breaker), kind="breaker"
            ),
            "opened": _sample(
                on_metrics,
                "worker_circuit_transitions_total",
                queue=_name(with_breaker),
                dependency="payments-api",
                to="open",
            ),
            "all_done_after_s": round(recovered_after, 1),
        },
        "without_breaker": {
            "succeeded": off_conditions.count(Condition.SUCCESS),
            "dead_lettered": len(off_conditions) - off_conditions.count(Condition.SUCCESS),
            "handler_failures": off_failed,
        },
    }
    print("breaker outage:", json.dumps(summary))
    # The fault happened, on both sides.
    assert on_failed >= breaker["min_calls"], summary
    assert off_failed >= MESSAGES, summary
    # With the breaker: every message processed after recovery, none dead-lettered, far fewer failed calls.
    assert on_conditions.count(Condition.SUCCESS) == MESSAGES, summary
    assert on_succeeded >= MESSAGES
    assert summary["with_breaker"]["opened"] >= 1, summary
    assert summary["with_breaker"]["breaker_hand_backs"] > 0, summary
    assert on_failed < off_failed, summary
    assert await drain(sqs, with_breaker["dlq_url"], expect=0, timeout=2) == []
    # /readyz stayed 200 while the breaker was open, and named it.
    status, doc = readyz[0]
    assert status == 200
    assert doc["open_breakers"][0]["dependency"] == "payments-api"
    # Without it: the same outage dead-letters messages (each burned its attempts).
    assert off_conditions.count(Condition.RETRIES_EXHAUSTED) > 0, summary
    dead = await drain(
        sqs, without["dlq_url"], expect=summary["without_breaker"]["dead_lettered"], timeout=10
    )
    assert len(dead) == summary["without_breaker"]["dead_lettered"]


def _name(queue: dict[str, str]) -> str:
    return queue["url"].rsplit("/", 1)[-1]
