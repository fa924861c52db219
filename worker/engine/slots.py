"""Concurrency slots: how many messages this worker holds, and the pollers' wait for a free one."""

from __future__ import annotations

import anyio

from worker.engine.threads import AbandonedThreads
from worker.telemetry.health import Health


class Slots:
    """Counts in-flight messages against the concurrency limit; pollers reserve before receiving.

    With ``threads``, abandoned handler threads past their limit hold slots too, and nothing is reserved
    while the limit of abandoned threads is reached (``threads.paused``) until ``close()``.
    """

    def __init__(self, limit: int, threads: AbandonedThreads | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.threads = threads
        self.closed = False
        #: Set by release() while a poller waits for capacity (None: nobody waits, nothing to wake).
        self._freed: anyio.Event | None = None
        if threads is not None:
            threads.on_change(self.wake)

    def _free(self) -> int:
        if self.threads is None:
            return self.limit - self.used
        if self.threads.paused:
            return 0
        return self.limit - self.used - self.threads.slots_taken

    async def reserve(self, most: int, health: Health) -> int:
        """Wait for at least one free slot, then take up to ``most`` (0 once closed)."""
        while self._free() <= 0:
            if self.closed:
                return 0
            health.turned()  # waiting for capacity is a healthy loop
            if self._freed is None:
                self._freed = anyio.Event()
            with anyio.move_on_after(1.0):
                await self._freed.wait()
        taken = min(most, self._free())
        self.used += taken
        return taken

    @property
    def free(self) -> int:
        """Slots a poller could take now."""
        return max(0, self._free())

    def release(self, count: int) -> None:
        """Give back ``count`` slots and wake waiting pollers."""
        if count <= 0:
            return
        self.used -= count
        self.wake()

    def wake(self) -> None:
        """Make waiting pollers look again (slots freed, an abandoned thread returned, closing)."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def close(self) -> None:
        """Pollers waiting for capacity return with nothing: the worker stops."""
        self.closed = True
        self.wake()
