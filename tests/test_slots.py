"""Prefetch never outruns capacity: ``Slots`` on its own, and every ReceiveMessage of a live worker.

The unit tests drive ``worker.engine.consumer.Slots`` directly. The LocalStack test records each
ReceiveMessage and DeleteMessageBatch a running worker makes through its real client, keeps its own
count of the messages the worker holds, and checks that no receive asked for more messages than the
slots left free by the held messages and the other receives in flight.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from tests import timeout_handlers as th
from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, running_worker, send_bodies, wait_for
from worker.engine.slots import Slots
from worker.limits import SQS_BATCH_MAX
from worker.telemetry.health import Health

# -- Slots, pure --


async def test_reserve_takes_at_most_the_free_slots() -> None:
    """reserve(most) takes min(most, free), release gives slots back, and release of nothing is a no-op."""
    slots, health = Slots(5), Health()
    assert await slots.reserve(3, health) == 3
    assert slots.used == 3
    assert await slots.reserve(SQS_BATCH_MAX, health) == 2  # only 2 left, not the 10 asked for
    assert slots.used == 5
    slots.release(2)
    assert slots.used == 3
    slots.release(0)
    slots.release(-4)
    assert slots.used == 3
    assert await slots.reserve(1, health) == 1
    assert slots.used == 4


async def test_reserve_waits_while_full_and_wakes_on_release() -> None:
    """A reserve on full slots waits (a healthy turn of the loop), and a release wakes it at once."""
    slots, health = Slots(2), Health()
    assert await slots.reserve(2, health) == 2
    taken: list[int] = []
    woken_at: list[float] = []

    async def poller() -> None:
        taken.append(await slots.reserve(SQS_BATCH_MAX, health))
        woken_at.append(time.monotonic())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller)
            await anyio.wait_all_tasks_blocked()
            assert taken == []  # blocked: nothing free
            assert slots.used == 2
            assert health.last_turn is not None  # waiting for capacity counts as the loop turning
            released = time.monotonic()
            slots.release(1)
    assert taken == [1]  # the one slot freed, though it asked for 10
    assert slots.used == 2
    # Woken by the release, not by its 1 s re-check.
    assert woken_at[0] - released < 0.5, woken_at[0] - released


async def test_one_release_wakes_every_waiting_poller() -> None:
    """Several pollers wait on full slots; releasing that many slots lets each of them take one, at once."""
    slots, health = Slots(3), Health()
    assert await slots.reserve(3, health) == 3
    taken: list[int] = []
    woken_at: list[float] = []

    async def poller() -> None:
        taken.append(await slots.reserve(1, health))
        woken_at.append(time.monotonic())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(poller)
            await anyio.wait_all_tasks_blocked()
            assert taken == []
            released = time.monotonic()
            slots.release(3)
    assert taken == [1, 1, 1]
    assert slots.used == 3
    # All woken by the one release, not by their 1 s re-checks.
    assert max(woken_at) - released < 0.5, [t - released for t in woken_at]


async def test_concurrent_pollers_never_exceed_the_limit() -> None:
    """Pollers reserving and releasing at random: used never exceeds the limit and equals what is held."""
    limit = 7
    slots, health = Slots(limit), Health()
    rng = random.Random(20240611)
    held = 0
    most = 0
    reserves = 0

    async def poller() -> None:
        nonlocal held, most, reserves
        for _ in range(60):
            taken = await slots.reserve(rng.randint(1, SQS_BATCH_MAX), health)
            assert 1 <= taken <= limit
            held += taken
            reserves += 1
            most = max(most, slots.used)
            assert slots.used == held <= limit
            while taken:
                for _ in range(rng.randint(0, 3)):
                    await anyio.lowlevel.checkpoint()
                part = rng.randint(1, taken)
                slots.release(part)
                held -= part
                taken -= part
                assert slots.used == held

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(poller)
    assert reserves == 360
    assert most == limit  # the pollers did fill every slot: the limit was exercised
    assert slots.used == held == 0


# -- every receive of a live worker --


class Recorder:
    """Records a real client's ReceiveMessage and DeleteMessageBatch calls and counts held messages.

    A message is held from the receive that returned it until the DeleteMessageBatch carrying it
    answered (the worker releases its slot then). ``calls`` has (MaxNumberOfMessages, free slots) of each
    receive, free meaning the limit less the held messages less what the receives in flight asked for.
    """

    def __init__(self, client: Any, limit: int) -> None:
        self.client = client
        self.limit = limit
        self.calls: list[tuple[int, int]] = []
        self.asked = 0  # MaxNumberOfMessages of the receives in flight
        self.held = 0
        self.most_held = 0
        self.received = 0
        self._receive = client.receive_message
        self._delete = client.delete_message_batch

    def __enter__(self) -> Recorder:
        self.client.receive_message = self.receive_message
        self.client.delete_message_batch = self.delete_message_batch
        return self

    def __exit__(self, *exc: object) -> None:
        del self.client.receive_message, self.client.delete_message_batch

    async def receive_message(self, **kwargs: Any) -> Any:
        wanted = int(kwargs["MaxNumberOfMessages"])
        self.calls.append((wanted, self.limit - self.held - self.asked))
        self.asked += wanted
        try:
            response = await self._receive(**kwargs)
        finally:
            self.asked -= wanted
        got = len(response.get("Messages", []))
        self.received += got
        self.held += got
        self.most_held = max(self.most_held, self.held)
        return response

    async def delete_message_batch(self, **kwargs: Any) -> Any:
        response = await self._delete(**kwargs)
        self.held -= len(kwargs["Entries"])
        return response


@pytest.mark.localstack
async def test_receives_never_ask_for_more_than_the_free_slots(sqs: Any, queues: QueueFactory) -> None:
    """Each ReceiveMessage asks for at most the free slots; held messages never exceed concurrency."""
    concurrency, pollers, count = 3, 2, 12
    q = await queues()
    run = unique("slots")
    keys = [f"{run}-{i}" for i in range(count)]
    th.PACED.now = th.PACED.most = 0
    sink = Collecting()
    async with running_worker(
        q, sink=sink, handler="tests.timeout_handlers:paced", concurrency=concurrency, pollers=pollers
    ) as worker:
        with Recorder(worker.client, concurrency) as recorder:
            # Receives that began before the recorder was in place are those with a poll due (a poller
            # marks its poll begun right before calling the client): wait until each has answered.
            unrecorded = dict(worker.health.polls_due)
            await wait_for(
                lambda: all(worker.health.polls_due.get(i) != due for i, due in unrecorded.items()),
                timeout=15,
                what="the receives begun before the recorder answered",
            )
            # Staggered durations: messages finish one by one, so receives also go out with slots taken.
            bodies = [{"key": key, "sleep": 0.3 * (1 + i % 4)} for i, key in enumerate(keys)]
            await send_bodies(sqs, q["url"], bodies)
            await wait_for(lambda: len(sink.outcomes) == count, timeout=60, what="every message done")
            await wait_for(lambda: recorder.held == 0, timeout=10, what="every delete answered")

    assert recorder.received == count  # every message came through a recorded receive, once
    assert all(e.receive_count == 1 for key in keys for e in th.events(key, "start"))
    over = [(wanted, free) for wanted, free in recorder.calls if wanted > free]
    assert not over, f"receives asked for more than the free slots (wanted, free): {over}"
    assert all(wanted >= 1 for wanted, _ in recorder.calls)
    assert recorder.most_held == concurrency  # the worker filled its slots: the limit was exercised
    assert th.PACED.most == concurrency
    # Some receives went out with part of the slots taken and asked for just the rest.
    assert any(0 < free < concurrency for _, free in recorder.calls), recorder.calls
