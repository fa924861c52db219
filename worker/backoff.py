"""Exponential backoff with full jitter (pure): the one formula behind every retry loop of the worker."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry ``n`` (1-based) waits a uniform draw below ``min(cap, base * 2^(n-1))`` (AWS's "full jitter")."""

    base: float
    cap: float

    def ceiling(self, retry: int) -> float:
        """The upper bound of retry ``retry``'s delay, overflow-safe for any retry number."""
        exponent = max(0, retry - 1)
        if exponent > 1000:
            return self.cap
        try:
            raw = self.base * math.pow(2.0, exponent)
        except OverflowError:
            return self.cap
        return min(self.cap, raw)

    def delay(self, retry: int, draw: float | None = None) -> float:
        """The delay before retry ``retry``: ``draw`` (in [0, 1), random when None) times the ceiling."""
        return (random.random() if draw is None else draw) * self.ceiling(retry)
