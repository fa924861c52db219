"""The heartbeat scheduler: extensions at half-lease, none after untrack, lost and failed answers, bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest

from tests.helpers import wait_for
from worker.engine.lease import RECHECK_SECONDS, Heartbeats, Lease
from worker.telemetry.metrics import Metrics

#: A 3 s visibility: half of it is 2 s (the floor), so an extension falls due 1 s after the receive.
VISIBILITY = 3


class FakeBatcher:
    """Answers every ChangeMessageVisibility entry with ``answer`` and records when it was asked."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[float, dict[str, Any]]] = []

    async def submit(self, entry: dict[str, Any]) -> str | None:
        self.calls.append((anyio.current_time(), entry))
        return self.answer


def _sample(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "worker_visibility_extensions_total", {"queue": "q", "result": result}
    )
    return value or 0.0


async def _scheduler(batcher: FakeBatcher, metrics: Metrics) -> AsyncIterator[Heartbeats]:
    heartbeats = Heartbeats(VISIBILITY, batcher, metrics, "q")  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(heartbeats.run)
        yield heartbeats
        tg.cancel_scope.cancel()


def _idle_for(heartbeats: Heartbeats, seconds: float) -> bool:
    """Nothing tracked, and at least ``seconds`` into its wait for the next look (the idle recheck)."""
    return not heartbeats._heap and heartbeats._next_due - anyio.current_time() <= RECHECK_SECONDS - seconds


async def test_an_idle_scheduler_extends_a_new_lease_when_half_is_left_and_keeps_extending() -> None:
    """Tracked while idle: no wake-up, extended ~1 s after the receive, then again from each new deadline."""
    batcher, metrics = FakeBatcher(), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        # Idle and part-way through its recheck wait: the new lease falls due after that recheck.
        await wait_for(partial(_idle_for, heartbeats, 0.2), timeout=5, what="the scheduler idle")
        received = anyio.current_time()
        lease = Lease.start(received, VISIBILITY)
        beat = heartbeats.track(lease, "rh-1")
        assert not heartbeats._wake.is_set(), "tracking woke the idle scheduler"
        await wait_for(lambda: len(batcher.calls) >= 2, timeout=5, what="two extensions")
        heartbeats.untrack(beat)
    (first, entry), (second, _) = batcher.calls[:2]
    assert entry == {"ReceiptHandle": "rh-1", "VisibilityTimeout": VISIBILITY}
    assert received + 0.9 <= first <= received + 1.6
    assert first + 0.9 <= second <= first + 1.6
    assert lease.deadline >= second + VISIBILITY - 0.01
    assert _sample(metrics, "ok") >= 2


async def test_an_untracked_message_is_never_extended() -> None:
    """Finished before half of its lease: no ChangeMessageVisibility at all."""
    batcher, metrics = FakeBatcher(), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        beats = [heartbeats.track(Lease.start(anyio.current_time(), VISIBILITY), f"rh-{i}") for i in range(5)]
        for beat in beats:
            heartbeats.untrack(beat)
        await anyio.sleep(1.8)  # past the moment they would have been due
    assert batcher.calls == []


async def test_a_lost_receipt_handle_stops_the_heartbeat_and_marks_the_lease_lost() -> None:
    """MessageNotInflight: the lease is lost, counted, and no further extension is asked."""
    batcher, metrics = FakeBatcher("MessageNotInflight"), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        lease = Lease.start(anyio.current_time(), VISIBILITY)
        heartbeats.track(lease, "rh-lost")
        await wait_for(lambda lease=lease: lease.lost, timeout=5, what="lease marked lost")
        await anyio.sleep(1.2)
    assert len(batcher.calls) == 1
    assert _sample(metrics, "lease_lost") == 1


async def test_a_failed_extension_is_retried_within_a_second() -> None:
    """A throttled extension is asked again while the lease is still held (here: 0.5 s later, not 1 s)."""
    batcher, metrics = FakeBatcher("ThrottlingException"), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        lease = Lease.start(anyio.current_time(), VISIBILITY)
        beat = heartbeats.track(lease, "rh-throttled")
        await wait_for(lambda: len(batcher.calls) >= 2, timeout=5, what="a retried extension")
        heartbeats.untrack(beat)
    assert 0.3 <= batcher.calls[1][0] - batcher.calls[0][0] <= 0.9


async def test_extensions_that_keep_failing_give_the_lease_up_after_a_few_tries() -> None:
    """Every extension throttled: a handful of tries, then the lease counts as lost (no busy retry loop)."""
    batcher, metrics = FakeBatcher("ThrottlingException"), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        lease = Lease.start(anyio.current_time(), VISIBILITY)
        heartbeats.track(lease, "rh-doomed")
        await wait_for(lambda lease=lease: not lease.held(), timeout=5, what="lease given up")
        await anyio.sleep(0.5)
    assert 2 <= len(batcher.calls) <= 6
    assert _sample(metrics, "lease_lost") == 1
    assert _sample(metrics, "failed") >= 2


async def test_tracking_without_a_running_scheduler_is_refused() -> None:
    """A lease nobody would extend is an error at once, not a silent expiry later."""
    heartbeats = Heartbeats(VISIBILITY, FakeBatcher(), Metrics(), "q")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not running"):
        heartbeats.track(Lease.start(anyio.current_time(), VISIBILITY), "rh")


async def test_finished_messages_do_not_pile_up_in_the_schedule() -> None:
    """100,000 short messages leave the schedule no larger than twice the live ones plus a constant."""
    batcher, metrics = FakeBatcher(), Metrics()
    async for heartbeats in _scheduler(batcher, metrics):
        live = [heartbeats.track(Lease.start(anyio.current_time(), 60), f"live-{i}") for i in range(10)]
        for i in range(100_000):
            heartbeats.untrack(heartbeats.track(Lease.start(anyio.current_time(), 60), f"rh-{i}"))
        assert len(heartbeats._heap) <= 2 * len(live) + 65
        for beat in live:
            heartbeats.untrack(beat)
