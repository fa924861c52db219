"""A canary rollout's gates and what it should do next (``judge``): hold, advance, promote or roll back.

``judge`` decides from fleet-wide counts (``VersionStats``, every replica's published counts merged) that
cover the time since the rollout started, not one step: a breach of any gate rolls back at once, even
mid-bake; nothing is judged, and nothing widened, before the candidate has ``min_samples`` calls.
``event_for`` turns a decision into the event that records it.

Pure: ``now`` and the replica's name are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.engine.rollout_log import Event, Rollout, RolloutState
from worker.engine.rollout_plan import Step
from worker.engine.rollout_stats import VersionStats

#: ``Rollback.gate`` of a rollback an operator asked for (``worker canary rollback``).
MANUAL_GATE = "manual"


@dataclass(frozen=True, slots=True)
class Gates:
    """The rollback gates (``WORKER_CANARY__*``); a gate set to None is off.

    - ``max_error_ratio``: the candidate's failure ratio above it breaches.
    - ``max_error_ratio_vs_baseline``: the candidate's failure ratio above this multiple of the baseline's
      breaches; the baseline's ratio counts as at least ``1 / min_samples``, so a baseline without failures
      does not turn the candidate's first failure into a breach.
    - ``max_p99_ratio``: the candidate's p99 duration above this multiple of the baseline's breaches; judged
      only when both p99s exist, the baseline's is above 0 and the baseline has ``min_samples`` calls.
    - ``min_samples``: no gate is judged, and no step widened, before the candidate has this many calls.
    """

    max_error_ratio: float | None
    max_error_ratio_vs_baseline: float | None
    max_p99_ratio: float | None
    min_samples: int

    def __post_init__(self) -> None:
        if self.max_error_ratio is not None and not 0 <= self.max_error_ratio <= 1:
            raise ValueError(f"max_error_ratio must be in [0, 1], got {self.max_error_ratio}")
        for name in ("max_error_ratio_vs_baseline", "max_p99_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")


@dataclass(frozen=True, slots=True)
class Hold:
    """Nothing to write: ``reason`` is one of ``HOLD_REASONS``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Advance:
    """Enter ``step`` (write an advance event)."""

    step: int


@dataclass(frozen=True, slots=True)
class Promote:
    """The last step baked without a breach: write a promote event (weight 100)."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """A gate breached: write a rollback event. ``observed`` and ``threshold`` are in the gate's units.

    ``max_error_ratio``: the candidate's failure ratio and the limit; ``max_error_ratio_vs_baseline``: the
    candidate's ratio over the (floored) baseline's and the allowed multiple; ``max_p99_ratio``: the p99s'
    ratio and the allowed multiple; ``manual``: 0 and 0. ``detail`` holds ``candidate``, ``baseline`` (each
    ``VersionStats.summary``) and ``reason``.
    """

    gate: str
    observed: float
    threshold: float
    detail: Mapping[str, object] = field(default_factory=dict)

    def event_detail(self) -> dict[str, object]:
        """The rollback event's detail: gate, observed, threshold, then ``detail``'s entries."""
        return {"gate": self.gate, "observed": self.observed, "threshold": self.threshold, **self.detail}


HOLD_TERMINAL = "terminal"
HOLD_NOT_STARTED = "not started"
HOLD_MIN_SAMPLES = "min samples"
HOLD_BAKING = "baking"
HOLD_REASONS = (HOLD_TERMINAL, HOLD_NOT_STARTED, HOLD_MIN_SAMPLES, HOLD_BAKING)

Decision = Hold | Advance | Promote | Rollback


def manual_rollback(reason: str) -> Rollback:
    """The rollback an operator asks for (``worker canary rollback --reason TEXT``)."""
    return Rollback(MANUAL_GATE, 0.0, 0.0, {"reason": reason})


def breach(candidate: VersionStats, baseline: VersionStats, gates: Gates) -> Rollback | None:
    """The first gate the candidate's numbers breach, in the order of ``Gates``' fields, or None."""
    detail: dict[str, object] = {"candidate": candidate.summary(), "baseline": baseline.summary()}
    ratio = candidate.error_ratio
    if gates.max_error_ratio is not None and ratio > gates.max_error_ratio:
        reason = f"candidate error ratio {ratio:.4g} above {gates.max_error_ratio:g}"
        return Rollback("max_error_ratio", ratio, gates.max_error_ratio, {**detail, "reason": reason})
    if gates.max_error_ratio_vs_baseline is not None:
        floor = 1 / gates.min_samples
        reference = max(baseline.error_ratio, floor)
        relative = ratio / reference
        if relative > gates.max_error_ratio_vs_baseline:
            reason = (
                f"candidate error ratio {ratio:.4g} is {relative:.4g} x the baseline's "
                f"{baseline.error_ratio:.4g} (floored at {floor:.4g}), "
                f"above {gates.max_error_ratio_vs_baseline:g} x"
            )
            return Rollback(
                "max_error_ratio_vs_baseline",
                relative,
                gates.max_error_ratio_vs_baseline,
                {**detail, "reason": reason},
            )
    if gates.max_p99_ratio is not None:
        mine, theirs = candidate.p99(), baseline.p99()
        if mine is not None and theirs is not None and theirs > 0 and baseline.calls >= gates.min_samples:
            relative = mine / theirs
            if relative > gates.max_p99_ratio:
                reason = f"candidate p99 {mine:.4g} s is {relative:.4g} x the baseline's {theirs:.4g} s"
                reason += f", above {gates.max_p99_ratio:g} x"
                return Rollback("max_p99_ratio", relative, gates.max_p99_ratio, {**detail, "reason": reason})
    return None


def judge(
    rollout: Rollout,
    steps: tuple[Step, ...],
    candidate: VersionStats,
    baseline: VersionStats,
    gates: Gates,
    now: float,
) -> Decision:
    """What the rollout should do next, from the fleet-wide counts since it started.

    Promoted or rolled back: Hold. Not started: Hold. Fewer than ``min_samples`` candidate calls: Hold (no
    gate judged, no step widened). A breached gate: Rollback, at once, even mid-bake. The current step baked
    (``now - step_started_at >= bake_seconds``) without a breach: Advance to the next step, or Promote after
    the last. Else Hold while baking.
    """
    if rollout.state is not RolloutState.PROGRESSING:
        return Hold(HOLD_TERMINAL)
    if rollout.started_at is None:
        return Hold(HOLD_NOT_STARTED)
    if candidate.calls < gates.min_samples:
        return Hold(HOLD_MIN_SAMPLES)
    breached = breach(candidate, baseline, gates)
    if breached is not None:
        return breached
    since = rollout.started_at if rollout.step_started_at is None else rollout.step_started_at
    if now - since < steps[rollout.step].bake_seconds:
        return Hold(HOLD_BAKING)
    return Advance(rollout.step + 1) if rollout.step + 1 < len(steps) else Promote()


def event_for(
    decision: Decision, rollout: str, steps: tuple[Step, ...], replica: str, now: float
) -> Event | None:
    """The event that records ``decision`` (None for Hold)."""
    if isinstance(decision, Advance):
        return Event(rollout, "advance", now, replica, decision.step)
    if isinstance(decision, Promote):
        return Event(rollout, "promote", now, replica, len(steps))
    if isinstance(decision, Rollback):
        return Event(rollout, "rollback", now, replica, 0, decision.event_detail())
    return None
