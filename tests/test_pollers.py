"""Poll planning and poller sizing: the pure decisions (unit and property tests) and the consumer applying
them on LocalStack (pollers grow under load, shrink when idle; a parked receive's messages are extended)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import QueueFactory, unique
from tests.helpers import depth, read_journal, running_worker, send_bodies, wait_for
from worker.aws.names import queue_name
from worker.engine.pollers import (
    AUTO_POLLERS_MAX,
    BUSY_WAIT,
    PARKED_VISIBILITY,
    handback_while_draining,
    next_pollers,
    plan_poll,
    pollers_bound,
)
from worker.limits import SQS_BATCH_MAX
from worker.telemetry.metrics import Metrics

# -- plan_poll --


def test_idle_poller_parks_with_a_short_visibility_and_the_full_wait() -> None:
    """After an empty receive: the full long-poll wait, a 5 s visibility, cancellable at stop."""
    plan = plan_poll(busy=False, wait=10, visibility=60)
    assert (plan.wait, plan.visibility, plan.parked) == (10, PARKED_VISIBILITY, True)
    assert plan.needs_extension(60)


def test_busy_poller_waits_briefly_with_the_full_lease() -> None:
    """After a receive that brought messages: a 1 s wait, the full lease, awaited at stop, no extension."""
    plan = plan_poll(busy=True, wait=10, visibility=60)
    assert (plan.wait, plan.visibility, plan.parked) == (BUSY_WAIT, 60, False)
    assert not plan.needs_extension(60)


def test_short_polls_and_short_leases_need_nothing_special() -> None:
    """A wait of 1 s or less is never parked; a lease below 5 s is asked as is (nothing to extend)."""
    for wait in (0, 1):
        assert plan_poll(busy=False, wait=wait, visibility=60) == plan_poll(
            busy=True, wait=wait, visibility=60
        )
        assert not plan_poll(busy=False, wait=wait, visibility=60).parked
    short = plan_poll(busy=False, wait=10, visibility=3)
    assert (short.visibility, short.parked, short.needs_extension(3)) == (3, True, False)


@given(busy=st.booleans(), wait=st.integers(0, 20), visibility=st.integers(1, 43_200))
def test_plan_properties(busy: bool, wait: int, visibility: int) -> None:
    """Never a longer wait or visibility than configured; only parked receives ask for less than the lease
    (PARKED_VISIBILITY at most); what a stop does not cancel waits 1 s at most."""
    plan = plan_poll(busy=busy, wait=wait, visibility=visibility)
    assert 0 <= plan.wait <= wait
    assert 1 <= plan.visibility <= visibility
    if plan.parked:
        assert plan.visibility <= PARKED_VISIBILITY
        assert not busy
    else:
        assert plan.visibility == visibility
        assert plan.wait <= BUSY_WAIT


# -- sizing --


@pytest.mark.parametrize(
    ("concurrency", "configured", "bound"),
    [(1, None, 1), (10, None, 1), (11, None, 2), (50, None, 5), (80, None, 8), (5000, None, 8), (50, 2, 2)],
)
def test_bound_follows_concurrency_unless_configured(
    concurrency: int, configured: int | None, bound: int
) -> None:
    """Auto: ceil(concurrency / 10), 1 to 8; WORKER_POLLERS set: exactly that."""
    assert pollers_bound(concurrency, configured) == bound


def test_grow_on_full_receives_shrink_on_empty_ones() -> None:
    """Full batch with free slots: one more; partial: unchanged; empty: one fewer, never below 1."""
    assert next_pollers(1, bound=5, asked=10, got=10, free=30) == 2
    assert next_pollers(5, bound=5, asked=10, got=10, free=30) == 5
    assert next_pollers(2, bound=5, asked=10, got=10, free=0) == 2  # no slot for another batch
    assert next_pollers(2, bound=5, asked=4, got=4, free=3) == 2  # slots ran short, not receives
    assert next_pollers(3, bound=5, asked=10, got=7, free=30) == 3
    assert next_pollers(3, bound=5, asked=10, got=0, free=50) == 2
    assert next_pollers(1, bound=5, asked=10, got=0, free=50) == 1


@given(
    active=st.integers(1, 64),
    bound=st.integers(1, 64),
    asked=st.integers(1, SQS_BATCH_MAX),
    got=st.integers(0, SQS_BATCH_MAX),
    free=st.integers(0, 10_000),
)
def test_sizing_properties(active: int, bound: int, asked: int, got: int, free: int) -> None:
    """Within [1, bound]; moves one step at most; grows only on a full batch with free slots; an empty
    receive never grows it."""
    got = min(got, asked)
    after = next_pollers(active, bound=bound, asked=asked, got=got, free=free)
    assert 1 <= after <= bound
    assert after <= max(active, 1) + 1
    assert after >= min(active, bound) - 1
    if after > active:
        assert got == asked == SQS_BATCH_MAX
        assert free > 0
    if got == 0:
        assert after <= max(1, min(active, bound))


@given(concurrency=st.integers(1, 10_000))
def test_auto_bound_properties(concurrency: int) -> None:
    """An automatic bound is 1 to 8 and never more pollers than batches of 10 the concurrency holds."""
    bound = pollers_bound(concurrency, None)
    assert 1 <= bound <= AUTO_POLLERS_MAX
    assert bound == 1 or (bound - 1) * 10 < concurrency


# -- the consumer applying them (LocalStack) --


def _pollers(metrics: Metrics, url: str) -> float:
    return metrics.registry.get_sample_value("worker_pollers", {"queue": queue_name(url)}) or 0.0


@pytest.mark.localstack
async def test_auto_pollers_grow_under_load_and_shrink_to_one_when_idle(
    sqs: Any, queues: QueueFactory
) -> None:
    """Started on an empty queue, concurrency 50: one poller once receives came back empty; then 300 queued
    0.2 s messages: more than one poller while full (never above the bound); back to 1 when empty."""
    q = await queues()
    metrics = Metrics()
    seen: list[float] = []

    def grown() -> bool:
        seen.append(_pollers(metrics, q["url"]))
        return seen[-1] >= 2

    async with running_worker(q, metrics=metrics, concurrency=50):
        await wait_for(lambda: _pollers(metrics, q["url"]) == 1, timeout=15, what="down to one poller")
        await send_bodies(sqs, q["url"], [{"key": unique("load"), "sleep": 0.2} for _ in range(300)])
        await wait_for(grown, timeout=20, interval=0.02, what="a second poller")
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=30, what="queue empty")
        await wait_for(lambda: _pollers(metrics, q["url"]) == 1, timeout=15, what="back to one poller")
    assert max(seen) <= pollers_bound(50, None)


@pytest.mark.localstack
async def test_fixed_pollers_stay_fixed(sqs: Any, queues: QueueFactory) -> None:
    """WORKER_POLLERS=3: three pollers from the start, still three after empty receives."""
    q = await queues()
    metrics = Metrics()
    async with running_worker(q, metrics=metrics, pollers=3):
        assert _pollers(metrics, q["url"]) == 3
        await wait_for(lambda: bool(_last_poll(metrics, q["url"])), what="an empty receive")
        assert _pollers(metrics, q["url"]) == 3


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


@pytest.mark.localstack
async def test_a_parked_receive_extends_what_it_brings_to_the_full_lease(
    sqs: Any, queues: QueueFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle worker (parked 2 s polls, 5 s visibility): a message whose handler runs 7 s is not visible to
    anyone meanwhile (extended to the 30 s lease), runs once and is deleted."""
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    q = await queues(visibility=30)
    key = unique("long")
    metrics = Metrics()
    async with running_worker(q, metrics=metrics, wait_time_seconds=2, visibility_timeout_seconds=30):
        # Once the first receive (busy: 1 s) has come back empty, the poller's next receives are parked.
        await wait_for(lambda: bool(_last_poll(metrics, q["url"])), what="an empty receive")
        await send_bodies(sqs, q["url"], [{"key": key, "sleep": 7}])
        await wait_for(lambda: read_journal(journal)["start"][key] == 1, timeout=10, what="handler started")
        started = time.monotonic()
        stolen = []
        while time.monotonic() - started < PARKED_VISIBILITY + 1.5:
            response = await sqs.receive_message(QueueUrl=q["url"], WaitTimeSeconds=1, VisibilityTimeout=1)
            stolen.extend(response.get("Messages", []))
        assert not stolen, "the message became visible while its handler ran: not extended"
        # (Without the extension the worker's own waiting poll usually retakes it first: run twice, below.)
        await wait_for(lambda: read_journal(journal)["done"][key] == 1, timeout=15, what="handler done")
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=10, what="deleted")
    assert read_journal(journal)["start"][key] == 1


def _last_poll(metrics: Metrics, url: str) -> float | None:
    labels = {"queue": queue_name(url)}
    return metrics.registry.get_sample_value("worker_last_poll_success_timestamp_seconds", labels)


def test_the_first_receive_is_a_short_poll_with_the_full_lease() -> None:
    """A starting worker's first receive waits for nothing and asks for the whole lease: what is waiting runs
    without an extension call, and a stop has nothing open to wait for or cancel."""
    plan = plan_poll(busy=False, wait=10, visibility=60, first=True)
    assert (plan.wait, plan.visibility, plan.parked, plan.needs_extension(60)) == (0, 60, False, False)
    assert plan_poll(busy=True, wait=10, visibility=60, first=True) == plan


def test_a_drain_hides_what_it_hands_back_until_its_own_open_receives_have_ended() -> None:
    """Handed back while draining: hidden 1 s past the end of the worker's receives still open on SQS's side
    (a cancelled 10 s poll sent 3 s ago: 8 s), 1 s when none is open, never more than the wait + 1."""
    assert handback_while_draining(open_until=110.0, now=103.0, wait=10) == 8
    assert handback_while_draining(open_until=100.0, now=103.0, wait=10) == 1
    assert handback_while_draining(open_until=103.2, now=103.0, wait=10) == 2
    assert handback_while_draining(open_until=150.0, now=103.0, wait=10) == 11


@pytest.mark.localstack
async def test_an_empty_receive_beside_a_held_message_does_not_make_the_worker_quiet(
    sqs: Any, queues: QueueFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message waiting, its handler 4 s: receives come back empty while it runs, yet the worker is not
    quiet (the permission check, 0.2 s of event loop, waits); it is once a receive finds nothing held."""
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    q = await queues()
    key = unique("held")
    await send_bodies(sqs, q["url"], [{"key": key, "sleep": 4}])
    metrics = Metrics()
    async with running_worker(q, metrics=metrics, concurrency=50) as worker:
        await wait_for(lambda: read_journal(journal)["start"][key] == 1, timeout=10, what="handler started")
        held_since = time.time()
        await wait_for(
            lambda: (_last_poll(metrics, q["url"]) or 0.0) > held_since,
            timeout=3,
            interval=0.01,
            what="a receive answered (empty) while the message is held",
        )
        assert read_journal(journal)["done"][key] == 0, "the handler finished: nothing was held"
        assert not worker.quiet.is_set()
        await wait_for(lambda: read_journal(journal)["done"][key] == 1, timeout=10, what="handler done")
        await wait_for(worker.quiet.is_set, timeout=10, what="quiet once nothing is held")


@pytest.mark.localstack
async def test_an_idle_worker_with_fixed_pollers_becomes_quiet(sqs: Any, queues: QueueFactory) -> None:
    """WORKER_POLLERS=3 on an empty queue: the others' parked long polls are always out, and a receive
    coming back empty beside them still makes the worker quiet (the permission check runs then)."""
    q = await queues()
    metrics = Metrics()
    async with running_worker(q, metrics=metrics, pollers=3) as worker:
        assert _pollers(metrics, q["url"]) == 3
        await wait_for(worker.quiet.is_set, timeout=10, what="quiet on the empty queue")
