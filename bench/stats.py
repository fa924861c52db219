"""Medians and their bootstrap 95 % intervals, for the bench's repeated figures (pure Python, seeded)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

#: Resamples of one bootstrap interval.
RESAMPLES = 2_000
#: The seed of every interval: the same figures always give the same interval.
SEED = 15
CONFIDENCE = 0.95


def median(values: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count); an empty list is an error."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of an ascending list, interpolated linearly between the two nearest ranks."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction)


def bootstrap_ci(
    values: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the median of ``values``: the medians of ``resamples`` samples
    drawn with replacement, cut at (1 - confidence) / 2 on each side. None for fewer than two values (one
    repetition says nothing about the spread)."""
    if len(values) < 2:
        return None
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return quantile(medians, tail), quantile(medians, 1 - tail)


def summary(values: Sequence[float], digits: int = 3) -> tuple[float, list[float] | None]:
    """(median, [low, high] of its 95 % interval or None), both rounded to ``digits`` decimals."""
    interval = bootstrap_ci(values)
    return (
        round(median(values), digits),
        None if interval is None else [round(interval[0], digits), round(interval[1], digits)],
    )
