"""The canary loop of ``worker run``: read the fleet's state, publish this replica's counts, judge, act.

Every ``WORKER_CANARY__EVALUATION_INTERVAL_SECONDS`` each replica reads the rollout's event log and every
replica's counts from the store, publishes its own, folds the log into the rollout and asks the gates; a
decision (widen, promote, roll back) is appended as an event, which every replica folds the same way at its
next read. The weight it finds is set on the router; a store that cannot be read leaves the last known weight
in place (logged once per outage). The replica that appends a rollback delivers the rollback record to the
``WORKER_CANARY__ON_ROLLBACK`` destinations (default: the on-failure ones).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import TaskStatus

from worker.destinations.sink import DestinationSink
from worker.destinations.targets import open_destinations
from worker.engine.canary import CanaryRouter
from worker.engine.rollout_gates import Gates, Rollback, event_for, judge
from worker.engine.rollout_log import Event, Rollout, RolloutState, fold, start_event
from worker.engine.rollout_plan import Step
from worker.engine.rollout_stats import NO_STATS
from worker.engine.rollout_store import RolloutStore, StoreError
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger("worker.canary")


@dataclass(frozen=True, slots=True)
class _Worker:
    """The ``worker`` part destinations read from a record: no FIFO group, no trace (not a message's)."""

    group_id: str | None = None
    trace: None = None


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    """What the rollback destinations receive (JSON); shaped so every destination type can send it."""

    rollout: str
    gate: str
    observed: float
    threshold: float
    candidate_version: str
    baseline_version: str
    numbers: Mapping[str, Any]
    reason: str
    at: float
    queue: str
    condition: str = "CanaryRolledBack"
    succeeded: bool = False
    worker: _Worker = field(default_factory=_Worker)

    @property
    def message_id(self) -> str:
        """The record's id where a destination needs one (S3 key, FIFO deduplication)."""
        return f"rollback-{self.rollout}"

    @property
    def timestamp(self) -> str:
        """ISO 8601 UTC time of the rollback."""
        return datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def size(self) -> int:
        """Bytes of the JSON (destinations check it against their limit)."""
        return len(self.to_json().encode())

    def to_json(self) -> str:
        """The record as destinations send it."""
        return json.dumps(
            {
                "version": "1.0",
                "type": "CanaryRolledBack",
                "timestamp": self.timestamp,
                "rollout": self.rollout,
                "queue": self.queue,
                "gate": self.gate,
                "observed": self.observed,
                "threshold": self.threshold,
                "versions": {"candidate": self.candidate_version, "baseline": self.baseline_version},
                "numbers": dict(self.numbers),
                "reason": self.reason,
            },
            sort_keys=True,
        )


Deliver = Callable[[RollbackRecord], Awaitable[None]]


class CanaryController:
    """Keeps ``router`` on the fleet's rollout; one per ``worker run`` with a canary configured."""

    def __init__(
        self,
        *,
        router: CanaryRouter,
        store: RolloutStore,
        rollout: str,
        steps: tuple[Step, ...],
        gates: Gates,
        interval: float,
        replica: str,
        queue: str,
        metrics: Metrics,
        deliver: Deliver,
    ) -> None:
        self.router = router
        self.store = store
        self.rollout = rollout
        self.steps = steps
        self.gates = gates
        self.interval = interval
        self.replica = replica
        self.queue = queue
        self.deliver = deliver
        self._weight = metrics.canary_weight.labels(queue)
        self._state = {state: metrics.canary_state.labels(queue, state.value) for state in RolloutState}
        self._transitions = {
            state: metrics.canary_transitions.labels(queue, state.value) for state in RolloutState
        }
        self._known: Rollout | None = None
        self._unreachable = False
        #: A rollback this replica wrote, its record not yet sent (sent after the weight went to 0).
        self._undelivered: tuple[Rollback, Event] | None = None
        self._show(router.weight, router.state)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Evaluate once (the first weight is known before messages flow), then every interval.

        Rounds start at a fixed rate (a round's own S3 calls do not push the next one back), so a breach is
        judged by a round that starts within one interval of it.
        """
        await self.evaluate()
        task_status.started()
        due = anyio.current_time()
        while True:
            due = max(due + self.interval, anyio.current_time())
            await anyio.sleep_until(due)
            await self.evaluate()

    async def evaluate(self) -> Rollout | None:
        """One round: read, publish, judge, append what was decided, apply the weight."""
        try:
            rollout = await self._round()
        except StoreError as exc:
            if not self._unreachable:
                self._unreachable = True
                self.router.in_sync = False
                log.warning(
                    "canary state store unreachable: keeping the last known weight",
                    extra={
                        "event": "canary_store_unreachable",
                        "weight": self.router.weight,
                        "error": str(exc),
                    },
                )
            return None
        if self._unreachable:
            log.info("canary state store reachable again", extra={"event": "canary_store_recovered"})
        self._unreachable = False
        self.router.in_sync = True
        self._apply(rollout)
        if self._undelivered is not None:
            decision, event = self._undelivered
            self._undelivered = None
            await self._deliver_rollback(decision, event)
        return rollout

    async def _round(self) -> Rollout:
        now = time.time()
        events = list(await self.store.read_events())
        rollout = fold(events, self.rollout, self.steps)
        if not rollout.started:
            events.append(await self._append(start_event(self.rollout, self.replica, now)))
            rollout = fold(events, self.rollout, self.steps)
        await self.store.publish(self.replica, self.router.stats(), now=now)
        counts = await self.store.read_counts()
        candidate = counts.get(self.router.candidate.version, NO_STATS)
        baseline = counts.get(self.router.baseline.version, NO_STATS)
        decision = judge(rollout, self.steps, candidate, baseline, self.gates, now)
        event = event_for(decision, self.rollout, self.steps, self.replica, now)
        if event is not None:
            events.append(await self._append(event))
            rollout = fold(events, self.rollout, self.steps)
            if isinstance(decision, Rollback) and rollout.rollback == event:
                self._undelivered = (decision, event)  # sent once the weight is 0 (evaluate)
        return rollout

    async def _append(self, event: Event) -> Event:
        await self.store.append(event)
        return event

    async def _deliver_rollback(self, decision: Rollback, event: Event) -> None:
        record = _record(
            self.rollout,
            decision,
            event,
            self.router.candidate.version,
            self.router.baseline.version,
            self.queue,
        )
        with anyio.CancelScope(shield=True):
            await self.deliver(record)

    def _apply(self, rollout: Rollout) -> None:
        before = self._known
        self._known = rollout
        self.router.weight = rollout.weight
        self.router.state = rollout.state
        self._show(rollout.weight, rollout.state)
        if before is None or (before.state, before.step, before.weight) != (
            rollout.state,
            rollout.step,
            rollout.weight,
        ):
            if before is not None and before.state is not rollout.state:
                self._transitions[rollout.state].inc()
            fields: dict[str, object] = {
                "event": "canary_state",
                "rollout": rollout.id,
                "state": rollout.state.value,
                "step": rollout.step,
                "weight": rollout.weight,
            }
            if rollout.rollback is not None:
                fields.update(
                    {f"rollback_{k}": v for k, v in rollout.rollback.detail.items() if k != "detail"}
                )
            level = logging.WARNING if rollout.state is RolloutState.ROLLED_BACK else logging.INFO
            log.log(level, f"canary {rollout.state.value} at {rollout.weight}%", extra=fields)

    def _show(self, weight: int, state: RolloutState) -> None:
        self._weight.set(weight)
        for each, gauge in self._state.items():
            gauge.set(1 if each is state else 0)


async def deliver_rollback(settings: Settings, metrics: Metrics, record: RollbackRecord) -> None:
    """Send ``record`` to WORKER_CANARY__ON_ROLLBACK (default: the on-failure destinations), with retries."""
    uris = list(settings.canary.on_rollback) or list(settings.on_failure)
    if not uris:
        log.warning(
            "canary rolled back; no rollback destination configured",
            extra={"event": "canary_rollback_undelivered", "rollout": record.rollout},
        )
        return
    scoped = settings.model_copy(update={"on_success": [], "on_failure": uris})
    async with AsyncExitStack() as stack:
        _, targets = await open_destinations(scoped, stack)
        sink = DestinationSink(
            [],
            targets,
            metrics,
            attempts=settings.destination_attempts,
            timeout=settings.destination_timeout_seconds,
        )
        async with anyio.create_task_group() as tg:  # run (and so close) the sink around the one delivery
            await tg.start(sink.run)
            await sink.deliver_now(cast(Any, record))
            tg.cancel_scope.cancel()


def _record(
    rollout: str, decision: Rollback, event: Event, candidate: str, baseline: str, queue: str
) -> RollbackRecord:
    return RollbackRecord(
        rollout=rollout,
        gate=decision.gate,
        observed=decision.observed,
        threshold=decision.threshold,
        candidate_version=candidate,
        baseline_version=baseline,
        numbers=dict(decision.detail),
        reason=str(decision.detail.get("reason", "")),
        at=event.at,
        queue=queue,
    )


def rollback_record(settings: Settings, rollout: str, decision: Rollback, event: Event) -> RollbackRecord:
    """The record of a rollback decided outside a replica (``worker canary rollback``)."""
    queue = settings.queue_url.rstrip("/").rsplit("/", 1)[-1]
    return _record(rollout, decision, event, settings.canary.version or "", settings.handler_version, queue)
