"""The canary and blue/green loops of ``worker run``, started when their settings ask for them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from worker.errors import ConfigError
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from worker.engine.canary import CanaryRouter
    from worker.engine.handler import LoadedHandler
    from worker.service.color_controller import ColorController
    from worker.settings import Settings


@dataclass(slots=True)
class Rollouts:
    """What ``worker run`` hands the engine: the canary router and the colour hold, when configured."""

    router: CanaryRouter | None = None
    color: ColorController | None = None


def processed_and_failed(metrics: Metrics) -> tuple[int, int]:
    """Handler calls and failed ones since start (retried or dead-lettered), for the colour heartbeat."""
    calls = failed = 0.0
    for family in metrics.processed.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            calls += sample.value
            if sample.labels.get("outcome") != "succeeded":
                failed += sample.value
    return int(calls), int(failed)


async def start_rollouts(
    services: TaskGroup,
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    handler: LoadedHandler,
    load_candidate: Callable[[str], LoadedHandler],
    queue: str,
) -> Rollouts:
    """Start what WORKER_CANARY__* and WORKER_COLOR ask for; each reads the shared state once first.

    Their modules are imported here, and only when configured: a plain ``worker run`` starts without them.
    """
    rollouts = Rollouts()
    canary = settings.canary
    if canary.enabled and canary.handler is not None and canary.version is not None:
        from worker.engine.canary import CanaryRouter, Version
        from worker.engine.rollout_store import RolloutLocation, open_rollout_store, replica_name
        from worker.service.canary_controller import CanaryController, deliver_rollback

        candidate = load_candidate(canary.handler)
        if handler.batch or candidate.batch:
            raise ConfigError("WORKER_CANARY__HANDLER: canary rollouts of batch handlers are not supported")
        router = CanaryRouter(
            Version(handler, settings.handler_version, candidate=False),
            Version(candidate, canary.version, candidate=True),
        )
        location = RolloutLocation.for_settings(settings)
        store = await stack.enter_async_context(open_rollout_store(location))
        controller = CanaryController(
            router=router,
            store=store,
            rollout=location.rollout,
            steps=canary.plan(),
            gates=canary.gates(),
            interval=canary.evaluation_interval_seconds,
            replica=replica_name(),
            queue=queue,
            metrics=metrics,
            deliver=partial(deliver_rollback, settings, metrics),
        )
        await services.start(controller.run)
        rollouts.router = router
    if settings.color is not None and settings.color_state is not None:
        from worker.engine.color_store import open_color_store
        from worker.engine.rollout_store import replica_name
        from worker.service.color_controller import ColorController

        color_store = await stack.enter_async_context(open_color_store(settings.color_state))
        color = ColorController(
            store=color_store,
            color=settings.color,
            replica=replica_name(),
            metrics=metrics,
            in_flight=lambda: 0,  # attach() points these at the consumer once it exists
            counts=partial(processed_and_failed, metrics),
            on_standby=lambda: None,
        )
        await services.start(color.run)
        rollouts.color = color
    return rollouts
