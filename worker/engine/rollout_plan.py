"""A canary rollout's plan: its steps, CodeDeploy's configurations, the rollout's id, and message routing.

- A plan is a tuple of ``Step`` (percent of the traffic on the candidate, then how long it bakes there);
  100 % is implied after the last step (``Promote``). ``CODEDEPLOY_CONFIGS`` holds CodeDeploy's predefined
  Lambda traffic-shifting configurations; ``AllAtOnce`` is one step at 100 % with no bake, so the gates
  still judge its first ``min_samples`` calls before it is promoted.
- ``route`` sends a message to the candidate when a hash of its original message id (stable across
  retries and redrives) falls in the first ``weight`` of 100 buckets: a message keeps its version while the
  weight does not change, and widening only moves messages from the baseline to the candidate.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

#: At most this many steps in WORKER_CANARY__STEPS (the implied 100 % not counted).
MAX_STEPS = 20
#: Buckets of the routing hash (one per percent of weight).
ROUTE_BUCKETS = 100
#: The prefix of CodeDeploy's names for its Lambda configurations; accepted in front of the short names.
CODEDEPLOY_PREFIX = "CodeDeployDefault.Lambda"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a plan: ``percent`` of the messages go to the candidate for ``bake_seconds`` at least."""

    percent: int
    bake_seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 100:
            raise ValueError(f"a step's percent must be 1..100, got {self.percent}")
        if not (0 <= self.bake_seconds < math.inf):
            raise ValueError(f"a step's bake must be finite and >= 0 seconds, got {self.bake_seconds}")


def _canary(percent: int, minutes: int) -> tuple[Step, ...]:
    return (Step(percent, minutes * 60.0),)


def _linear(percent: int, minutes: int) -> tuple[Step, ...]:
    return tuple(Step(share, minutes * 60.0) for share in range(percent, 100, percent))


#: CodeDeploy's predefined Lambda configurations (CodeDeployDefault.Lambda<name>), with its meaning:
#: ``Canary10Percent5Minutes`` shifts 10 % and the remaining 90 % five minutes later;
#: ``Linear10PercentEvery1Minute`` shifts 10 % more every minute (10, 20, ..., 90, each for 60 s, then 100 %);
#: ``AllAtOnce`` shifts everything at once (here: 100 % with no bake, promoted once the gates have judged
#: ``min_samples`` calls).
CODEDEPLOY_CONFIGS: dict[str, tuple[Step, ...]] = {
    "Canary10Percent5Minutes": _canary(10, 5),
    "Canary10Percent10Minutes": _canary(10, 10),
    "Canary10Percent15Minutes": _canary(10, 15),
    "Canary10Percent30Minutes": _canary(10, 30),
    "Linear10PercentEvery1Minute": _linear(10, 1),
    "Linear10PercentEvery2Minutes": _linear(10, 2),
    "Linear10PercentEvery3Minutes": _linear(10, 3),
    "Linear10PercentEvery10Minutes": _linear(10, 10),
    "AllAtOnce": (Step(100, 0.0),),
}


def codedeploy_steps(name: str) -> tuple[Step, ...]:
    """The steps of a CodeDeploy configuration (``Canary10Percent5Minutes`` or its full CodeDeploy name)."""
    steps = CODEDEPLOY_CONFIGS.get(name.removeprefix(CODEDEPLOY_PREFIX))
    if steps is None:
        raise ValueError(
            f"unknown deployment configuration {name!r}; expected one of {', '.join(CODEDEPLOY_CONFIGS)}"
        )
    return steps


def parse_steps(text: str) -> tuple[Step, ...]:
    """``"10:300,50:300"``: 10 % for 300 s, 50 % for 300 s, then 100 % (implied, never written).

    Each step is ``percent:bake-seconds``; percents are whole numbers 1..99, strictly increasing; bakes are
    finite and > 0; at most ``MAX_STEPS`` steps. Raise ValueError naming the step that is wrong.
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise ValueError("no steps; expected percent:bake-seconds pairs such as 10:300,50:300")
    if len(parts) > MAX_STEPS:
        raise ValueError(f"{len(parts)} steps; at most {MAX_STEPS}")
    steps: list[Step] = []
    for number, part in enumerate(parts, start=1):
        where = f"step {number} ({part!r})"
        percent_text, colon, bake_text = part.partition(":")
        if not colon:
            raise ValueError(f"{where} must be percent:bake-seconds, such as 10:300")
        percent_text, bake_text = percent_text.strip(), bake_text.strip()
        if not percent_text.isascii() or not percent_text.isdigit() or not 1 <= int(percent_text) <= 99:
            raise ValueError(
                f"{where}: the percent must be a whole number 1..99 (100 % is implied at the end)"
            )
        try:
            bake = float(bake_text)
        except ValueError:
            bake = math.nan
        if not 0 < bake < math.inf:
            raise ValueError(f"{where}: the bake must be a number of seconds > 0")
        percent = int(percent_text)
        if steps and percent <= steps[-1].percent:
            raise ValueError(f"{where}: percents must increase (the step before is {steps[-1].percent})")
        steps.append(Step(percent, bake))
    return tuple(steps)


def plan(config: str | None, steps: str | None) -> tuple[Step, ...]:
    """The steps of a rollout from exactly one of a CodeDeploy configuration name and a steps text."""
    if (config is None) == (steps is None):
        raise ValueError("set exactly one of a deployment configuration and custom steps")
    return codedeploy_steps(config) if config is not None else parse_steps(steps or "")


def rollout_id(
    candidate_handler: str,
    candidate_version: str,
    baseline_version: str,
    steps: tuple[Step, ...],
    *,
    scope: str = "",
) -> str:
    """A stable short id (16 hex digits): replicas started with the same settings join the same rollout.

    ``scope`` (say, the queue URL) keeps the rollouts of two queues apart when they share a state store.
    """
    identity = [
        scope,
        candidate_handler,
        candidate_version,
        baseline_version,
        [[step.percent, float(step.bake_seconds)] for step in steps],
    ]
    canonical = json.dumps(identity, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def route(original_message_id: str, weight: int) -> bool:
    """True when the message goes to the candidate: its id's bucket (sha256, of 100) is below ``weight``."""
    digest = hashlib.sha256(original_message_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % ROUTE_BUCKETS < weight
