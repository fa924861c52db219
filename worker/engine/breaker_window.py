"""A circuit breaker's sliding failure window (pure): settled calls of the last ``window_seconds``, bounded.

Entries go into ``WINDOW_BUCKETS`` buckets of ``window_seconds / WINDOW_BUCKETS`` seconds each; the window is
the last ``WINDOW_BUCKETS`` buckets, the current one included, so its memory is bounded whatever the rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

#: Buckets of a breaker's sliding window: its memory is bounded by this, whatever the message rate.
WINDOW_BUCKETS = 60


@dataclass(slots=True)
class _Bucket:
    index: int
    calls: int = 0
    failures: int = 0


class Window:
    """Settled calls of the last ``window_seconds``, in at most ``WINDOW_BUCKETS`` buckets."""

    __slots__ = ("_buckets", "_width", "calls", "failures")

    def __init__(self, window_seconds: float) -> None:
        self._width = window_seconds / WINDOW_BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self.calls = 0
        self.failures = 0

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def prune(self, now: float) -> None:
        """Drop the buckets that have left the window at ``now``."""
        oldest = self._index(now) - WINDOW_BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0].index < oldest:
            gone = buckets.popleft()
            self.calls -= gone.calls
            self.failures -= gone.failures

    def add(self, now: float, *, failed: bool) -> None:
        """One settled call at ``now`` (pruned first, when it opens a bucket)."""
        index = self._index(now)
        buckets = self._buckets
        if not buckets or buckets[-1].index != index:
            # Pruning at the newest bucket's index was done when that bucket was made: only a new one prunes.
            self.prune(now)
            if not buckets or buckets[-1].index < index:
                buckets.append(_Bucket(index))
        # A ``now`` older than the newest bucket (clocks passed in out of order) joins the newest bucket.
        bucket = buckets[-1]
        bucket.calls += 1
        self.calls += 1
        if failed:
            bucket.failures += 1
            self.failures += 1

    def clear(self) -> None:
        """Forget every entry."""
        self._buckets.clear()
        self.calls = self.failures = 0

    def __len__(self) -> int:
        return len(self._buckets)
