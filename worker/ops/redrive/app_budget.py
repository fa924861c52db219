"""How much an app-mode pass may receive next: ``--max`` reservations and the ``--rate`` token bucket.

Receivers ``claim`` a batch size before each receive; batch handling reserves each message it moves (or
lists, on a dry run), and ``settle`` wakes receivers waiting for ``--max`` room once moves end.
"""

from __future__ import annotations

import anyio

from worker.limits import SQS_BATCH_MAX
from worker.ops.redrive.ratelimit import TokenBucket, default_burst


class Budget:
    """``--max`` and ``--rate`` accounting shared by the receivers and the batches of one pass."""

    def __init__(self, max_messages: int | None, rate: float | None) -> None:
        self._limit = max_messages
        self._bucket = TokenBucket(rate, default_burst(rate)) if rate else None
        self._batch_size = int(min(SQS_BATCH_MAX, default_burst(rate))) if rate else SQS_BATCH_MAX
        #: Messages counted against ``--max``: moved, being moved, or listed by a dry run.
        self.reserved = 0
        #: Messages being moved: reserved, not yet deleted from the DLQ (or given up on).
        self.outstanding = 0
        self._settled = anyio.Event()

    async def claim(self, stop: anyio.Event) -> int:
        """How many to receive next: 0 when ``--max`` is reached and nothing is outstanding."""
        size = self._batch_size
        limit = self._limit
        if limit is not None:
            while limit - self.reserved <= 0:
                if self.outstanding == 0 or stop.is_set():
                    return 0
                await self._settled.wait()
            size = min(size, limit - self.reserved)
        if self._bucket is not None:
            delay = self._bucket.reserve(size, anyio.current_time())
            if delay > 0:
                with anyio.move_on_after(delay):
                    await stop.wait()
                if stop.is_set():
                    self._bucket.refund(size, anyio.current_time())
                    return 0
        return size

    def refund(self, n: int) -> None:
        """Give back rate tokens claimed for messages not received."""
        if self._bucket is not None and n > 0:
            self._bucket.refund(n, anyio.current_time())

    def unreserve(self) -> None:
        """A reserved move that will not happen."""
        self.reserved -= 1
        self.outstanding -= 1
        self.settle()

    def settle(self) -> None:
        """Wake receivers waiting for ``--max`` room."""
        self._settled.set()
        self._settled = anyio.Event()
