"""Fleet-wide counts of one version of a canary rollout (``VersionStats``) and its histogram quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from worker.engine.rollout_json import number_or_none, whole_or_none

#: The quantile of the latency gate.
P99 = 0.99


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Fleet-wide counts of one version: calls, failures (any non-success outcome) and durations.

    ``buckets`` is a cumulative histogram of handler durations in seconds, ``(le, count)`` with ``le``
    strictly increasing (the last one ``inf``, as Prometheus' ``+Inf``) and counts not decreasing.
    """

    calls: int
    failures: int
    buckets: tuple[tuple[float, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.failures <= self.calls:
            raise ValueError(f"need 0 <= failures <= calls, got {self.failures} of {self.calls}")
        bounds = [le for le, _ in self.buckets]
        counts = [count for _, count in self.buckets]
        if any(math.isnan(le) for le in bounds) or bounds != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing numbers")
        if counts != sorted(counts) or any(count < 0 for count in counts):
            raise ValueError("bucket counts must be cumulative (non-negative, not decreasing)")

    @property
    def error_ratio(self) -> float:
        """failures / calls; 0.0 without calls."""
        return self.failures / self.calls if self.calls else 0.0

    def merged(self, other: VersionStats) -> VersionStats:
        """The sum of two replicas' counts.

        Histograms with the same bounds add bucket by bucket; at a bound only one of them has, the other
        contributes its count at its highest bound below (what it knows to be at or below it).
        """
        bounds = sorted({le for le, _ in self.buckets} | {le for le, _ in other.buckets})
        buckets = tuple((le, _count_at(self.buckets, le) + _count_at(other.buckets, le)) for le in bounds)
        return VersionStats(self.calls + other.calls, self.failures + other.failures, buckets)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the durations as Prometheus' ``histogram_quantile`` estimates it.

        Linear interpolation inside the bucket that holds the rank (the first bucket starts at 0); a rank in
        the ``+Inf`` bucket gives the highest finite bound. None without observations, with fewer than two
        buckets, or when the last bound is not ``inf`` (where Prometheus returns NaN).
        """
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile must be in [0, 1], got {q}")
        if len(self.buckets) < 2 or self.buckets[-1][0] != math.inf or self.buckets[-1][1] == 0:
            return None
        rank = q * self.buckets[-1][1]
        index = next(
            i for i, (_, count) in enumerate(self.buckets) if i == len(self.buckets) - 1 or count >= rank
        )
        if index == len(self.buckets) - 1:
            return self.buckets[-2][0]
        end, count = self.buckets[index]
        if index == 0:
            if end <= 0:
                return end
            start, below = 0.0, 0
        else:
            start, below = self.buckets[index - 1]
        if count == below:  # q = 0 and an empty first bucket: nothing to interpolate in
            return start
        return start + (end - start) * (rank - below) / (count - below)

    def p99(self) -> float | None:
        """The 99th percentile of the durations (``quantile(0.99)``), None without observations."""
        return self.quantile(P99)

    def summary(self) -> dict[str, object]:
        """The numbers a rollback record and ``worker canary status`` show."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "error_ratio": self.error_ratio,
            "p99_seconds": self.p99(),
        }

    def to_dict(self) -> dict[str, object]:
        """A JSON-safe form (a replica's published counts): ``+Inf`` as a string."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "buckets": [[_le_text(le), count] for le, count in self.buckets],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> VersionStats:
        """Parse ``to_dict``'s output; ValueError on anything else."""
        calls, failures, buckets = (
            whole_or_none(data.get("calls")),
            whole_or_none(data.get("failures")),
            data.get("buckets", []),
        )
        if calls is None or failures is None:
            raise ValueError("counts need whole numbers of calls and failures")
        pairs: list[tuple[float, int]] = []
        for pair in buckets if type(buckets) is list else [None]:
            le, count = pair if type(pair) is list and len(pair) == 2 else (None, None)
            bound, cumulative = (math.inf if le == "+Inf" else number_or_none(le)), whole_or_none(count)
            if bound is None or cumulative is None:
                raise ValueError(
                    f"buckets must be a list of [le, count] pairs (le a number or '+Inf'), got {pair!r}"
                )
            pairs.append((bound, cumulative))
        return cls(calls, failures, tuple(pairs))


#: No calls yet: the identity of ``VersionStats.merged``.
NO_STATS = VersionStats(0, 0, ())


def _count_at(buckets: tuple[tuple[float, int], ...], le: float) -> int:
    """A cumulative histogram's count at ``le``: its count at its highest bound <= ``le`` (0 below all)."""
    count = 0
    for bound, cumulative in buckets:
        if bound > le:
            break
        count = cumulative
    return count


def _le_text(le: float) -> float | str:
    return "+Inf" if le == math.inf else le
