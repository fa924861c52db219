"""SIGTERM and SIGINT for long-running commands: the first asks for a graceful stop, later ones force it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("worker.signals")


async def stop_on_signals(
    graceful: Callable[[], None],
    forced: Callable[[], None],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``graceful()`` on the first SIGTERM/SIGINT and ``forced()`` on each later one, until cancelled."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        task_status.started()
        count = 0
        async for signum in received:
            count += 1
            log.info(
                "signal received: " + ("stopping gracefully" if count == 1 else "forcing the stop"),
                extra={"event": "signal", "signal": signal.Signals(signum).name, "count": count},
            )
            (graceful if count == 1 else forced)()
