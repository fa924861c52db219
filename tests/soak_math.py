"""The soak's arithmetic: a least-squares line through RSS samples, the smallest leak it can see, a verdict.

Pure functions (no I/O), unit-tested in tests/test_soak_math.py; tests/test_soak.py applies them.

A leak of ``L`` bytes per message at ``R`` messages per second makes RSS grow by ``L * R`` bytes per second.
The fit's slope has a standard error ``s = sigma / sqrt(sum((t - mean t)^2))``, ``sigma`` the residuals'
standard deviation (the RSS noise: allocator arenas, GC timing). A slope below ``SIGMAS * s`` cannot be told
from noise, so the smallest per-message leak the run can see is ``SIGMAS * s / R``: a run is conclusive when
that is at most the budget, and it fails when the measured slope per message exceeds the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Bytes per message the soak tolerates. One message id kept forever in a dict (a 36-character str, ~85 B,
#: plus its slot) costs 150-250 B: a budget of 100 B/message catches the smallest leak of a whole object per
#: message, and stays far above what a 30 min run can resolve (a few B/message, see the module docstring).
LEAK_BUDGET_BYTES_PER_MESSAGE = 100.0
#: Standard errors a slope must exceed to count as seen (one-sided, about 0.1 % false alarms for noise).
SIGMAS = 3.0


@dataclass(frozen=True)
class LineFit:
    """An ordinary least-squares line ``y = intercept + slope * x`` and its uncertainty."""

    slope: float
    intercept: float
    residual_std: float  # sqrt(SSR / (n - 2))
    slope_stderr: float  # residual_std / sqrt(sum((x - mean x)^2))
    points: int


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    """The least-squares line through (xs, ys); at least 3 points and 2 distinct xs."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} xs but {len(ys)} ys")
    n = len(xs)
    if n < 3:
        raise ValueError(f"a line with an uncertainty needs at least 3 points, not {n}")
    mean_x, mean_y = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("every x is the same: no slope")
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ssr = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    residual_std = math.sqrt(ssr / (n - 2))
    return LineFit(slope, intercept, residual_std, residual_std / math.sqrt(sxx), n)


def second_half(times: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The samples taken in the second half of the span of ``times`` (warm-up growth left out)."""
    if not times:
        return [], []
    middle = (times[0] + times[-1]) / 2
    kept = [(t, v) for t, v in zip(times, values, strict=True) if t >= middle]
    return [t for t, _ in kept], [v for _, v in kept]


@dataclass(frozen=True)
class LeakVerdict:
    """What the RSS samples of the second half say about a per-message leak."""

    fit: LineFit
    messages_per_second: float
    bytes_per_message: float  # the measured slope, per message
    detectable_bytes_per_message: float  # SIGMAS standard errors of the slope, per message
    budget_bytes_per_message: float

    @property
    def conclusive(self) -> bool:
        """The run could have seen a leak of the budget's size."""
        return self.detectable_bytes_per_message <= self.budget_bytes_per_message

    @property
    def leaking(self) -> bool:
        """RSS grew faster than the budget allows."""
        return self.bytes_per_message > self.budget_bytes_per_message


def leak_verdict(
    times: Sequence[float],
    rss: Sequence[float],
    messages_per_second: float,
    *,
    budget: float = LEAK_BUDGET_BYTES_PER_MESSAGE,
    sigmas: float = SIGMAS,
) -> LeakVerdict:
    """Fit RSS (bytes) over the second half of ``times`` (seconds) and judge it per message."""
    if messages_per_second <= 0:
        raise ValueError(f"messages per second must be positive, not {messages_per_second}")
    fit = fit_line(*second_half(times, rss))
    return LeakVerdict(
        fit=fit,
        messages_per_second=messages_per_second,
        bytes_per_message=fit.slope / messages_per_second,
        detectable_bytes_per_message=sigmas * fit.slope_stderr / messages_per_second,
        budget_bytes_per_message=budget,
    )


def growth(times: Sequence[float], values: Sequence[float]) -> float:
    """How far the second half's peak is above the first half's (0 or less: no growth).

    For counts that move with the load (open fds, threads, tasks): a leak keeps raising the peak, a pool that
    fills up reaches its peak early and stays there.
    """
    if len(times) < 2:
        raise ValueError("growth needs samples in both halves")
    middle = (times[0] + times[-1]) / 2
    first = [v for t, v in zip(times, values, strict=True) if t < middle]
    second = [v for t, v in zip(times, values, strict=True) if t >= middle]
    if not first or not second:
        raise ValueError("growth needs samples in both halves")
    return max(second) - max(first)
