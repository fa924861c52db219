"""Canary routing in the running worker: which handler version a message runs on, and each version's counts.

The rollout's weight comes from the fleet's shared state (``worker.service.canary_controller`` reads it and
sets it here); each message is routed by a hash of its original id (stable across retries and redrives), so
a retried message stays on its version unless the weight changed. The counts kept here are what this replica
publishes for the fleet-wide gates: calls, failures and a duration histogram per version, since start.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from worker.deadletter.record import original_message_id
from worker.engine.handler import LoadedHandler
from worker.engine.message import Message
from worker.engine.policy import HandlerResult
from worker.engine.rollout_log import RolloutState
from worker.engine.rollout_plan import route
from worker.engine.rollout_stats import VersionStats
from worker.telemetry.metrics import DURATION_BUCKETS


@dataclass(frozen=True, slots=True)
class Version:
    """One handler version a message can run on."""

    handler: LoadedHandler
    version: str
    candidate: bool


class _Counts:
    """Cumulative calls, failures and duration histogram of one version (what the fleet's gates judge)."""

    __slots__ = ("buckets", "calls", "failures")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf

    def add(self, ok: bool, seconds: float) -> None:
        self.calls += 1
        self.failures += 0 if ok else 1
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1

    def stats(self) -> VersionStats:
        cumulative: list[tuple[float, int]] = []
        running = 0
        for le, count in zip((*DURATION_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            cumulative.append((le, running))
        return VersionStats(calls=self.calls, failures=self.failures, buckets=tuple(cumulative))


class CanaryRouter:
    """Routes messages between the baseline and the candidate by the rollout's current weight."""

    def __init__(self, baseline: Version, candidate: Version) -> None:
        self.baseline = baseline
        self.candidate = candidate
        #: Percent of messages for the candidate: 0 until the fleet's state has been read.
        self.weight = 0
        self.state = RolloutState.PROGRESSING
        #: False while the shared state cannot be read (the last known weight is kept).
        self.in_sync = False
        self._counts = {baseline.version: _Counts(), candidate.version: _Counts()}

    def pick(self, message: Message) -> Version:
        """The version ``message`` runs on now."""
        if self.weight <= 0:
            return self.baseline
        if self.weight >= 100:
            return self.candidate
        return self.candidate if route(original_message_id(message), self.weight) else self.baseline

    @property
    def rolling_out(self) -> bool:
        """True while the candidate is on trial: its failures are not held against messages."""
        return self.state is RolloutState.PROGRESSING

    def record(self, version: Version, outcome: HandlerResult, seconds: float) -> None:
        """Count one invocation of ``version`` (any outcome but success is a failure for the gates)."""
        self._counts[version.version].add(outcome is HandlerResult.SUCCESS, seconds)

    def stats(self) -> dict[str, VersionStats]:
        """This replica's counts per version, cumulative since start."""
        return {version: counts.stats() for version, counts in self._counts.items()}
