"""A bounded queue served by a pool of tasks until cancelled, then drained for a grace period.

The off-hot-path workers (destination deliveries, payload deletes) share this shape: submissions go into a
memory stream; a shielded pool of tasks takes from it; on cancellation no more is accepted, the pool gets
``grace`` seconds to finish what is queued, and whatever is left is handed to ``leftover`` one by one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")
S = TypeVar("S")


async def serve(
    send: MemoryObjectSendStream[T],
    receive: MemoryObjectReceiveStream[T],
    *,
    tasks: int,
    handle: Callable[[T], Awaitable[None]],
    grace: float,
    leftover: Callable[[list[T]], None],
    started: S,
    task_status: TaskStatus[S],
) -> None:
    """Serve ``receive`` with ``tasks`` tasks until cancelled; ``task_status.started(started)`` once up."""
    try:
        async with anyio.create_task_group() as tg:
            pool: anyio.CancelScope = await tg.start(_pool, receive, tasks, handle)
            task_status.started(started)
            try:
                await anyio.sleep_forever()
            finally:
                # No more submissions; the (shielded) pool drains the queue until the grace ends.
                send.close()
                pool.deadline = min(pool.deadline, anyio.current_time() + grace)
    finally:
        send.close()
        left: list[T] = []
        while True:
            try:
                left.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        receive.close()
        leftover(left)


async def _pool(
    receive: MemoryObjectReceiveStream[T],
    tasks: int,
    handle: Callable[[T], Awaitable[None]],
    *,
    task_status: TaskStatus[anyio.CancelScope],
) -> None:
    with anyio.CancelScope(shield=True) as scope:
        task_status.started(scope)
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(_take, receive.clone(), handle)


async def _take(receive: MemoryObjectReceiveStream[T], handle: Callable[[T], Awaitable[None]]) -> None:
    async with receive:
        async for item in receive:
            await handle(item)
