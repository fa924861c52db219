"""Abandoned threads of timed-out sync handlers (WORKER_MAX_ABANDONED_THREADS): counted, bounded, resumed.

The unit tests drive ``AbandonedThreads`` through the real run path (``UserCallable.call`` in an anyio
worker thread, cancelled once the thread has started), then ``Slots`` and ``Health`` on top of it. The
LocalStack test runs a worker whose plain ``def`` handler blocks on a ``threading.Event`` until the test
sets it: two timeouts reach the limit of 2, the worker stops receiving, and resumes when they return.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from tests import timeout_handlers as th
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, http_get_async, running_worker, send, wait_for
from worker.aws.names import queue_name
from worker.engine.handler import UserCallable
from worker.engine.policy import Condition
from worker.engine.slots import Slots
from worker.engine.threads import AbandonedThreads
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

#: The longest a unit test waits for a thread to start or return (they take milliseconds).
DEADLINE = 5.0


class Blocked:
    """A plain def that signals its start, then blocks until ``release`` is set (or ``fail`` raises)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self.calls = 0

    def __call__(self, argument: object) -> object:
        """Run in the worker thread."""
        self.calls += 1
        self.started.set()
        self.release.wait(DEADLINE * 4)  # bounded: a failed test never leaves the thread blocked for good
        if self.fail:
            raise RuntimeError("handler failed after its deadline")
        return argument


async def abandon_one(threads: AbandonedThreads, fn: Blocked) -> None:
    """Run ``fn`` as a sync handler through ``UserCallable.call`` and cancel it once its thread runs."""
    user = UserCallable(fn=fn, target=fn, is_async=False)
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            await user.call("payload", anyio.CapacityLimiter(4), threads)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await wait_for(fn.started.is_set, timeout=DEADLINE, what="the handler thread started")
        scope.cancel()  # what the per-message deadline does


def notified(threads: AbandonedThreads) -> Callable[[], int]:
    """Count the event-loop notifications ``threads`` sends when abandoned threads return."""
    calls: list[None] = []
    threads.on_change(lambda: calls.append(None))
    return lambda: len(calls)


# -- the counter --


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
async def test_abandoned_thread_counted_until_it_returns_or_raises(fail: bool) -> None:
    """A cancelled sync call whose thread runs on counts 1 until the thread ends, by return or by raise."""
    threads = AbandonedThreads(limit=3)
    changes = notified(threads)
    fn = Blocked(fail=fail)
    await abandon_one(threads, fn)
    assert threads.count == 1
    assert changes() == 0
    fn.release.set()
    await wait_for(lambda: threads.count == 0, timeout=DEADLINE, what="the count back to 0")
    await wait_for(lambda: changes() == 1, timeout=DEADLINE, what="the event loop told")
    assert fn.calls == 1


async def test_a_call_that_returned_in_time_or_never_started_is_not_counted() -> None:
    """Cancelled after its thread returned: not counted; cancelled before it started: it never runs."""
    threads = AbandonedThreads(limit=1)
    returned = threads.watch(lambda argument: argument)
    assert returned("x") == "x"
    assert threads.abandon(returned) is False
    assert threads.count == 0

    calls: list[object] = []
    never = threads.watch(calls.append)
    assert threads.abandon(never) is False  # the caller gave up while the call was queued for a thread
    assert never("x") is None
    assert calls == []
    assert threads.count == 0


async def test_counts_each_abandoned_thread_and_pauses_at_the_limit() -> None:
    """Two abandoned threads with limit 2: paused with the readiness reason; one returns: not paused."""
    threads = AbandonedThreads(limit=2)
    first, second = Blocked(), Blocked()
    try:
        await abandon_one(threads, first)
        assert (threads.count, threads.paused, threads.pause_reason()) == (1, False, None)
        await abandon_one(threads, second)
        assert threads.count == 2
        assert threads.paused
        assert threads.pause_reason() == "2 abandoned handler threads (limit 2): not receiving"
        assert threads.slots_taken == 0
        first.release.set()
        await wait_for(lambda: threads.count == 1, timeout=DEADLINE, what="one thread returned")
        assert (threads.paused, threads.pause_reason()) == (False, None)
    finally:
        first.release.set()
        second.release.set()


# -- what the consumer and the probes do with it --


async def test_slots_receive_nothing_while_paused_and_resume_when_a_thread_returns() -> None:
    """At the limit a poller's reserve waits (liveness kept); a returning thread wakes it at once."""
    threads, health = AbandonedThreads(limit=1), Health()
    slots = Slots(4, threads)
    fn = Blocked()
    try:
        await abandon_one(threads, fn)
        taken: list[int] = []
        reserved = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def poller() -> None:
                taken.append(await slots.reserve(10, health))
                reserved.set()

            tg.start_soon(poller)
            await anyio.wait_all_tasks_blocked()
            assert taken == [], "reserved while the limit of abandoned threads was reached"
            assert health.last_turn is not None  # waiting keeps liveness
            fn.release.set()
            with anyio.fail_after(0.8):  # woken by the return, before the poller's 1 s re-check
                await reserved.wait()
        assert taken == [4]
    finally:
        fn.release.set()


async def test_closing_slots_releases_a_paused_poller() -> None:
    """A stopping worker's poller held back by abandoned threads returns with nothing instead of waiting."""
    threads = AbandonedThreads(limit=1)
    slots = Slots(2, threads)
    fn = Blocked()
    try:
        await abandon_one(threads, fn)
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                result: list[int] = []

                async def poller() -> None:
                    result.append(await slots.reserve(10, Health()))

                tg.start_soon(poller)
                await anyio.wait_all_tasks_blocked()
                slots.close()
        assert result == [0]
    finally:
        fn.release.set()


async def test_limit_zero_makes_each_abandoned_thread_keep_a_slot() -> None:
    """Limit 0: no pause, but an abandoned thread holds one slot until it returns."""
    threads, health = AbandonedThreads(limit=0), Health()
    slots = Slots(3, threads)
    fn = Blocked()
    try:
        await abandon_one(threads, fn)
        assert not threads.paused
        assert threads.pause_reason() is None
        assert threads.slots_taken == 1
        assert await slots.reserve(10, health) == 2
        slots.release(2)
        fn.release.set()
        await wait_for(lambda: threads.count == 0, timeout=DEADLINE, what="the thread returned")
        assert await slots.reserve(10, health) == 3
    finally:
        fn.release.set()


async def test_readiness_names_the_abandoned_threads_and_liveness_holds() -> None:
    """/readyz's reason while paused is the count and the limit; /healthz stays alive."""
    threads = AbandonedThreads(limit=1)
    health = Health(started=True, last_poll_ok=True, receive_paused=threads.pause_reason)
    health.turned()
    assert health.readiness() == (True, "polling")
    fn = Blocked()
    try:
        await abandon_one(threads, fn)
        assert health.readiness() == (False, "1 abandoned handler threads (limit 1): not receiving")
        assert health.liveness()[0] is True
    finally:
        fn.release.set()
    await wait_for(lambda: threads.count == 0, timeout=DEADLINE, what="the thread returned")
    assert health.readiness() == (True, "polling")


# -- a live worker --

TIMEOUT = 0.5
LIMIT = 2
#: How long a paused worker must leave a visible message alone. Nothing happens while it is paused, so
#: only a window can show it; 2 s is twice the tests' long-poll wait, while an unpaused worker takes a
#: message sent to its empty queue within one round trip of its outstanding long poll.
PAUSE_WINDOW = 2.0


@pytest.mark.localstack
async def test_worker_stops_receiving_at_the_limit_and_resumes_when_threads_return(
    sqs: Any, queues: QueueFactory
) -> None:
    """Two hung sync handlers (limit 2): gauge 2, /readyz 503, a third message waits; release: all done.

    The third message must not be received while paused: the receive metric is read over PAUSE_WINDOW
    (a bounded window, see there), after every receive sent before the pause has answered.
    """
    q = await queues()
    hung, third = [unique("hung-a"), unique("hung-b")], unique("third")
    gates = [th.gate(key) for key in hung]
    name = queue_name(q["url"])
    sink, metrics = Collecting(), Metrics()

    def gauge(metric: str) -> float | None:
        return metrics.registry.get_sample_value(metric, {"queue": name})

    def received() -> float:
        return gauge("worker_messages_received_total") or 0.0

    try:
        async with running_worker(
            q,
            sink=sink,
            metrics=metrics,
            handler="tests.timeout_handlers:gated",
            concurrency=4,
            timeout_seconds=TIMEOUT,
            max_abandoned_threads=LIMIT,
            max_attempts=3,
            immediate_retries=0,
            backoff_base_seconds=1,
            backoff_max_seconds=1,
        ) as worker:
            assert gauge("worker_abandoned_threads_limit") == LIMIT
            for key in hung:
                await send(sqs, q["url"], {"key": key, "hold": True})
            await wait_for(lambda: gauge("worker_abandoned_threads") == 2, timeout=15, what="2 abandoned")
            status, body = await http_get_async(worker.http_port, "/readyz")
            assert status == 503
            assert json.loads(body)["reason"] == "2 abandoned handler threads (limit 2): not receiving"
            assert (await http_get_async(worker.http_port, "/healthz"))[0] == 200
            # A receive sent before the pause could still bring the third message: wait until none is out.
            await wait_for(lambda: not worker.health.polls_due, timeout=10, what="no receive in flight")
            before = received()
            await send(sqs, q["url"], {"key": third})
            with pytest.raises(AssertionError, match="timed out"):
                await wait_for(
                    lambda: received() > before, timeout=PAUSE_WINDOW, interval=0.05, what="a receive"
                )
            assert received() == before, "the worker received while paused"
            assert th.events(third) == []

            for gate in gates:
                gate.set()
            await wait_for(lambda: gauge("worker_abandoned_threads") == 0, timeout=10, what="threads back")

            async def ready() -> bool:
                return (await http_get_async(worker.http_port, "/readyz"))[0] == 200

            await wait_for(ready, timeout=10, what="ready again")
            await wait_for(lambda: len(sink.outcomes) == 3, timeout=20, what="all three messages handled")
    finally:
        for gate in gates:
            gate.set()  # never leave a handler thread blocked past the test

    by_key = {str(o.message.json()["key"]): o for o in sink.outcomes}
    assert {key: o.condition for key, o in by_key.items()} == dict.fromkeys([*hung, third], Condition.SUCCESS)
    assert [by_key[key].attempts for key in hung] == [2, 2]  # timed out once, then ran again
    assert by_key[third].attempts == 1
    for key in hung:
        assert len(th.events(key, "after")) == 1  # each abandoned thread really ran to its end
    labels = {"queue": name, "handler": "tests.timeout_handlers:gated", "handler_version": "unknown"}
    assert metrics.registry.get_sample_value("worker_handler_timeouts_total", labels) == 2
