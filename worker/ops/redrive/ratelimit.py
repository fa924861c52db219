"""A token bucket (pure): how long to wait before taking ``n`` tokens at ``rate`` tokens per second.

The caller owns the clock: ``reserve`` takes the current time and answers a delay, so the arithmetic is
unit-tested without sleeping. Reservations may go into debt (taking more than the bucket holds makes the
*next* callers wait), which keeps the long-run rate exact even when batches are larger than the burst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; starts full."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate!r}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"burst must be at least 1, got {self.burst!r}")
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens at ``now``; the seconds to wait before using them (0 when available)."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of tokens")
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self, n: float, now: float) -> None:
        """Give back ``n`` tokens that were reserved but not used (never above ``burst``)."""
        if n <= 0:
            return
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + n)


def default_burst(rate: float, batch: int = 10) -> float:
    """A burst of one batch at most, and about one second of tokens at low rates (at least 1)."""
    return float(max(1, min(batch, math.floor(rate))))
