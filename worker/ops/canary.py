"""``worker canary status|promote|rollback``: a canary rollout's state and counts, and the operator's say.

It reads the ``WORKER_*`` settings of ``worker run`` (so it finds the same rollout: the id covers the
candidate, both versions, the steps and the queue) and the rollout's store (``WORKER_CANARY__STATE``).
``promote`` and ``rollback`` append an event to the rollout's log, as a replica would; every replica folds it
at its next evaluation. A rollback is final: once one is in the log, the rollout stays rolled back.

Module-level imports are the standard library and pure modules only: ``worker config`` builds the parser
that holds this sub-command and must not load the AWS libraries.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker.engine.rollout_gates import (
    HOLD_BAKING,
    Advance,
    Decision,
    Promote,
    Rollback,
    judge,
    manual_rollback,
)
from worker.engine.rollout_log import Event, Rollout, RolloutState
from worker.engine.rollout_plan import Step
from worker.engine.rollout_stats import NO_STATS, VersionStats
from worker.errors import ConfigError
from worker.timestamps import iso_utc

if TYPE_CHECKING:
    from worker.engine.rollout_store import ReplicaCounts, RolloutStore
    from worker.settings import Settings

Say = Callable[[str], None]


def add_canary_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker canary`` sub-command and its three actions."""
    canary = sub.add_parser(
        "canary",
        help="a canary rollout (WORKER_CANARY__*): its state and fleet counts, promote, roll back",
        description="Reads the WORKER_* settings of `worker run` and the rollout's log in "
        "WORKER_CANARY__STATE. Exit 0 on success, 1 when the store cannot be reached or the action is "
        "refused, 2 on bad settings or usage. See docs/rollouts-operations.md.",
    )
    actions = canary.add_subparsers(dest="canary_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="state, weight, step, versions and fleet-wide counts")
    status.add_argument("--json", action="store_true", help="one JSON object, for tooling")
    actions.add_parser("promote", help="send every message to the candidate now (state promoted, weight 100)")
    rollback = actions.add_parser(
        "rollback", help="send every message back to the baseline (state rolled_back, weight 0; final)"
    )
    rollback.add_argument("--reason", default="manual rollback", metavar="TEXT", help="kept in the log")


def operator_name() -> str:
    """Who runs the command, as an event's replica field: ``cli.user@host``."""
    from worker.engine.rollout_store import safe_name

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        user = "unknown"
    return safe_name(f"cli.{user}@{socket.gethostname()}")


def main(args: argparse.Namespace) -> int:
    """``worker canary``: 0 on success, 1 when the store fails or the action is refused (ConfigError: 2)."""
    import anyio

    from worker.engine.rollout_store import RolloutLocation, StoreError, open_rollout_store
    from worker.settings import load_settings

    settings = load_settings()
    if not settings.canary.enabled:
        raise ConfigError(
            "no canary rollout configured: set WORKER_CANARY__HANDLER, __VERSION, __STATE and __CONFIG or "
            "__STEPS as for `worker run`"
        )
    location = RolloutLocation.for_settings(settings)

    async def command() -> int:
        async with open_rollout_store(location) as store:
            if args.canary_action == "status":
                return await status(store, settings, as_json=args.json)
            if args.canary_action == "promote":
                return await promote(store, settings)
            return await rollback(store, settings, reason=args.reason)

    try:
        return anyio.run(command)
    except StoreError as exc:
        print(f"worker: canary: the rollout store cannot be reached: {exc}", file=sys.stderr)
        return 1


async def status(
    store: RolloutStore, settings: Settings, *, as_json: bool, now: float | None = None, say: Say = print
) -> int:
    """Print the rollout's state and the fleet-wide counts."""
    steps = settings.canary.plan()
    rollout = await store.rollout(steps)
    from worker.engine.rollout_store import merge_counts

    replicas = await store.read_replica_counts()
    when = time.time() if now is None else now
    view = status_view(settings, store.location.uri, rollout, merge_counts(replicas), replicas, when)
    say(json.dumps(view, indent=2) if as_json else render_text(view))
    return 0


async def promote(store: RolloutStore, settings: Settings, *, say: Say = print) -> int:
    """Append a promote event (refused once rolled back: a rollback is final)."""
    steps = settings.canary.plan()
    rollout = await store.rollout(steps)
    if rollout.state is RolloutState.ROLLED_BACK:
        say(f"refused: rollout {rollout.id} was rolled back ({_rollback_line(rollout)}); a rollback is final")
        return 1
    if rollout.state is RolloutState.PROMOTED:
        say(f"rollout {rollout.id} is already promoted (weight 100)")
        return 0
    event = Event(rollout.id, "promote", time.time(), operator_name(), len(steps), {"by": operator_name()})
    await store.append(event)
    after = await store.rollout(steps)
    say(f"rollout {after.id}: {after.state}, weight {after.weight}")
    return 0 if after.state is RolloutState.PROMOTED else 1


async def rollback(store: RolloutStore, settings: Settings, *, reason: str, say: Say = print) -> int:
    """Append a rollback event (gate ``manual``) with the fleet's counts at the time."""
    steps = settings.canary.plan()
    rollout = await store.rollout(steps)
    if rollout.state is RolloutState.ROLLED_BACK:
        say(f"rollout {rollout.id} is already rolled back ({_rollback_line(rollout)})")
        return 0
    counts = await store.read_counts()
    candidate, baseline = _pair(counts, settings)
    decision = manual_rollback(reason)
    detail = {
        **decision.event_detail(),
        "candidate": candidate.summary(),
        "baseline": baseline.summary(),
        "by": operator_name(),
    }
    event = Event(rollout.id, "rollback", time.time(), operator_name(), 0, detail)
    await store.append(event)
    after = await store.rollout(steps)
    say(f"rollout {after.id}: {after.state}, weight {after.weight}")
    if after.rollback == event:  # this command rolled it back: it sends the rollback record
        from worker.service.canary_controller import deliver_rollback, rollback_record
        from worker.telemetry.metrics import Metrics

        await deliver_rollback(settings, Metrics(), rollback_record(settings, after.id, decision, event))
    return 0 if after.state is RolloutState.ROLLED_BACK else 1


def _pair(counts: Mapping[str, VersionStats], settings: Settings) -> tuple[VersionStats, VersionStats]:
    """(candidate, baseline) counts."""
    candidate = counts.get(settings.canary.version or "", NO_STATS)
    return candidate, counts.get(settings.handler_version, NO_STATS)


def _steps_view(steps: tuple[Step, ...]) -> list[dict[str, object]]:
    return [{"percent": step.percent, "bake_seconds": step.bake_seconds} for step in steps]


def _decision_view(
    decision: Decision, rollout: Rollout, steps: tuple[Step, ...], now: float
) -> dict[str, object]:
    if isinstance(decision, Advance):
        return {"kind": "advance", "step": decision.step}
    if isinstance(decision, Promote):
        return {"kind": "promote"}
    if isinstance(decision, Rollback):
        return {"kind": "rollback", "gate": decision.gate, "observed": decision.observed}
    view: dict[str, object] = {"kind": "hold", "reason": decision.reason}
    since = rollout.step_started_at
    if decision.reason == HOLD_BAKING and since is not None and rollout.step < len(steps):
        view["seconds_left"] = round(max(0.0, steps[rollout.step].bake_seconds - (now - since)), 1)
    return view


def _time(value: float | None) -> str | None:
    return None if value is None else iso_utc(datetime.fromtimestamp(value, UTC), "milliseconds")


def status_view(
    settings: Settings,
    uri: str,
    rollout: Rollout,
    counts: Mapping[str, VersionStats],
    replicas: Mapping[str, ReplicaCounts],
    now: float,
) -> dict[str, object]:
    """The JSON of ``worker canary status --json`` (pure): ``counts`` are the fleet's, merged."""
    canary = settings.canary
    steps = canary.plan()
    candidate, baseline = _pair(counts, settings)
    decision = judge(rollout, steps, candidate, baseline, canary.gates(), now)
    versions = {"baseline": settings.handler_version, "candidate": canary.version}
    shown = {
        version: counts.get(version, NO_STATS) for version in (settings.handler_version, canary.version or "")
    }
    shown.update(counts)
    back = rollout.rollback
    return {
        "rollout": rollout.id,
        "store": uri,
        "state": str(rollout.state),
        "weight": rollout.weight,
        "step": rollout.step,
        "steps": _steps_view(steps),
        "started_at": _time(rollout.started_at),
        "step_started_at": _time(rollout.step_started_at),
        "versions": versions,
        "handlers": {"baseline": settings.handler, "candidate": canary.handler},
        "counts": {version: stats.summary() for version, stats in shown.items()},
        "replicas": {
            name: {
                "at": _time(entry.at),
                "age_seconds": round(max(0.0, now - entry.at), 1),
                "versions": {version: stats.summary() for version, stats in entry.versions.items()},
            }
            for name, entry in sorted(replicas.items())
        },
        "decision": _decision_view(decision, rollout, steps, now),
        "rollback": None
        if back is None
        else {"at": _time(back.at), "replica": back.replica, **dict(back.detail)},
    }


def _percent(ratio: object) -> str:
    return f"{ratio * 100:.2f} %" if isinstance(ratio, float | int) else "-"


def _count_line(version: str, role: str, summary: Mapping[str, object]) -> str:
    p99 = summary.get("p99_seconds")
    latency = f", p99 {p99:.3f} s" if isinstance(p99, float | int) else ""
    label = f"{version} ({role})" if role else version
    return (
        f"{label}: {summary.get('calls', 0)} calls, {summary.get('failures', 0)} failed "
        f"({_percent(summary.get('error_ratio'))}){latency}"
    )


def _rollback_line(rollout: Rollout) -> str:
    back = rollout.rollback
    if back is None:
        return "no rollback"
    detail = back.detail
    when = _time(back.at)
    return (
        f"gate {detail.get('gate')}: observed {detail.get('observed')}, threshold {detail.get('threshold')}; "
        f"{detail.get('reason', '')} (at {when} by {back.replica})"
    )


def render_text(view: Mapping[str, Any]) -> str:
    """``worker canary status`` for people (from ``status_view``'s JSON)."""
    steps: list[dict[str, Any]] = view["steps"]
    baseline, candidate = view["versions"]["baseline"], view["versions"]["candidate"]
    weight: int = view["weight"]
    step: int = view["step"]
    plan = ", ".join(f"{entry['percent']} % for {entry['bake_seconds']:g} s" for entry in steps)
    started = "" if view["started_at"] else " (not started: no replica has written a start yet)"
    lines = [
        f"rollout   {view['rollout']} at {view['store']}",
        f"state     {view['state']}{started}",
        f"weight    {weight} % to {candidate} (candidate), {100 - weight} % to {baseline} (baseline)",
    ]
    if step < len(steps):
        lines.append(f"step      {step + 1} of {len(steps)}, entered {view['step_started_at'] or '-'}")
    else:
        lines.append(f"step      all {len(steps)} done, promoted at {view['step_started_at'] or '-'}")
    lines.append(f"plan      {plan}, then 100 %")
    decision: dict[str, Any] = view["decision"]
    if decision["kind"] == "hold":
        left = f", {decision['seconds_left']:g} s left" if "seconds_left" in decision else ""
        lines.append(f"next      hold ({decision['reason']}{left})")
    else:
        lines.append(f"next      {decision['kind']} at the next evaluation")
    roles = {baseline: "baseline", candidate: "candidate"}
    for number, (version, summary) in enumerate(view["counts"].items()):
        lead = "counts    " if number == 0 else "          "
        lines.append(lead + _count_line(version, roles.get(version, ""), summary))
    replicas: dict[str, dict[str, Any]] = view["replicas"]
    ages = [entry["age_seconds"] for entry in replicas.values()]
    newest = f" (newest {min(ages):g} s ago)" if ages else ""
    lines.append(f"replicas  {len(replicas)} published counts{newest}")
    back = view["rollback"]
    if back is not None:
        lines.append(
            f"rollback  gate {back.get('gate')}: observed {back.get('observed')}, threshold "
            f"{back.get('threshold')}; {back.get('reason', '')}"
            f" (at {back.get('at')} by {back.get('replica')})"
        )
    return "\n".join(lines)
