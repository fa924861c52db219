"""`worker demo --shadow`: a green candidate verified on a shadow subscription, before any switch.

A second queue, ``<prefix>-orders-shadow`` with its own DLQ, is subscribed to the orders topic by `worker
topology`'s code, and a second in-process worker, the "green" candidate (``handle_v2``, version 0.2.0, no
destinations, no circuit breaker), consumes it while the live "blue" worker consumes the real queue: both
see the same traffic.
The summary compares their error ratios (handler calls that failed, as `worker switch --bake` counts them)
and says whether green may take over. The traffic is the demo's nasty mix, which fails the live handler
too, so the gate is on green's excess over the live ratio, not on green's ratio alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from worker.devkit.demo_topology import Consumer, count_messages, ensure_consumer
from worker.examples.orders import V2_VERSION
from worker.ops.switch_plan import DEFAULT_MAX_ERROR_RATIO, Tally
from worker.service.app import Worker, run_worker
from worker.service.rollouts import processed_and_failed
from worker.settings import Settings
from worker.telemetry.metrics import Metrics

#: The green candidate: the deliberately bad version the canary demo rolls back.
CANDIDATE = "worker.examples.orders:handle_v2"
#: The gate: green's error ratio may exceed the live worker's by at most this much.
GATE = DEFAULT_MAX_ERROR_RATIO


def shadow_queue(prefix: str) -> str:
    """The shadow subscription's queue: ``<prefix>-orders-shadow``."""
    return f"{prefix}-orders-shadow"


def shadow_settings(base: Settings, shadow: Consumer) -> Settings:
    """The live worker's settings on the shadow queue, with the candidate and no destinations at all.

    Its circuit breaker is off: a bad candidate opens it (the demo's does, at 50 % failed calls) and the
    open breaker holds the shadow queue back for ``open_seconds``, while the verification wants every
    message judged.
    """
    return base.model_copy(
        update={
            "queue_url": shadow.queue_url,
            "dlq_url": shadow.dlq_url,
            "handler": CANDIDATE,
            "handler_version": V2_VERSION,
            "on_success": [],
            "on_failure": [],
            "http_port": 0,
            "breaker": base.breaker.model_copy(update={"enabled": False}),
        }
    )


def verdict(green: Tally, live: Tally, gate: float = GATE) -> tuple[bool, str]:
    """(healthy, verdict): green fails when its error ratio exceeds the live one by more than ``gate``."""
    if green.ratio - live.ratio > gate:
        return False, f"green would fail the {gate:g} error-ratio gate: do not switch"
    return True, "green looks healthy: worker switch --to green"


@dataclass
class ShadowResult:
    """What the green candidate did on the shadow subscription, next to the live worker."""

    published: int
    queue_url: str
    dlq_url: str
    handler: str
    version: str
    #: Messages the shadow worker finished (succeeded or dead-lettered in its own DLQ).
    seen: int
    succeeded: int
    dead_lettered: dict[str, int]
    dlq_messages: int
    green_calls: int
    green_failed: int
    live_calls: int
    live_failed: int
    gate: float
    healthy: bool
    verdict: str
    #: Destination deliveries the shadow worker attempted, any result (it has none configured: must stay 0).
    destination_records: int = 0

    @property
    def green_ratio(self) -> float:
        """Green's failed handler calls / calls."""
        return Tally(self.green_calls, self.green_failed).ratio

    @property
    def live_ratio(self) -> float:
        """The live worker's failed handler calls / calls."""
        return Tally(self.live_calls, self.live_failed).ratio

    def problems(self) -> list[str]:
        """What did not go as designed (empty when the shadow saw everything and delivered nothing)."""
        found = []
        if self.seen != self.published:
            found.append(f"shadow: {self.seen} of {self.published} messages finished")
        if self.dlq_messages != sum(self.dead_lettered.values()):
            found.append(
                f"shadow DLQ holds {self.dlq_messages}, dead-lettered: {sum(self.dead_lettered.values())}"
            )
        if self.destination_records:
            found.append(f"shadow: {self.destination_records} records reached a destination")
        return found


def _sum(metrics: Metrics, name: str, label: str) -> dict[str, int]:
    """``name``'s ``_total`` samples summed by ``label``."""
    found: dict[str, int] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.value:
                key = sample.labels.get(label, "")
                found[key] = found.get(key, 0) + int(sample.value)
    return found


def finished(metrics: Metrics) -> tuple[int, dict[str, int]]:
    """(messages that succeeded, dead-lettered ones by condition) of one worker."""
    succeeded = _sum(metrics, "worker_messages_processed_total", "outcome").get("succeeded", 0)
    return succeeded, _sum(metrics, "worker_dead_lettered_total", "condition")


@dataclass
class Shadow:
    """The running green worker on the shadow queue."""

    consumer: Consumer
    settings: Settings
    worker: Worker
    metrics: Metrics


async def create_shadow(prefix: str, max_receive_count: int) -> Consumer:
    """The shadow queue, its DLQ and its subscription to the orders topic (`worker topology`'s code)."""
    return await ensure_consumer(prefix, shadow_queue(prefix), max_receive_count)


async def start_shadow(tg: TaskGroup, base: Settings, consumer: Consumer, out: Any) -> Shadow:
    """Start the green worker on the shadow queue in ``tg`` (before the traffic is published)."""
    settings = shadow_settings(base, consumer)
    metrics = Metrics()
    worker = await tg.start(
        lambda task_status: run_worker(
            settings, metrics=metrics, sink=None, handle_signals=False, task_status=task_status
        )
    )
    out.write(
        f"green candidate {CANDIDATE} ({V2_VERSION}) shadowing on {consumer.queue_url.rsplit('/', 1)[-1]}, "
        "no destinations\n"
    )
    return Shadow(consumer, settings, worker, metrics)


async def finish_shadow(shadow: Shadow, live: Metrics, *, published: int, within: float) -> ShadowResult:
    """Wait (up to ``within`` seconds) until the shadow worker finished every message; stop it; measure."""
    deadline = time.monotonic() + within
    with anyio.move_on_after(within):
        while True:
            succeeded, dead = finished(shadow.metrics)
            if succeeded + sum(dead.values()) >= published:
                break
            await anyio.sleep(0.1)
    shadow.worker.stop()
    succeeded, dead = finished(shadow.metrics)
    dlq_messages = await _settled_depth(shadow.consumer.dlq_url, sum(dead.values()), deadline)
    green = Tally(*processed_and_failed(shadow.metrics))
    blue = Tally(*processed_and_failed(live))
    healthy, line = verdict(green, blue)
    return ShadowResult(
        published=published,
        queue_url=shadow.consumer.queue_url,
        dlq_url=shadow.consumer.dlq_url,
        handler=shadow.settings.handler,
        version=shadow.settings.handler_version,
        seen=succeeded + sum(dead.values()),
        succeeded=succeeded,
        dead_lettered=dead,
        dlq_messages=dlq_messages,
        green_calls=green.processed,
        green_failed=green.failed,
        live_calls=blue.processed,
        live_failed=blue.failed,
        gate=GATE,
        healthy=healthy,
        verdict=line,
        destination_records=sum(
            _sum(shadow.metrics, "worker_destination_deliveries_total", "result").values()
        ),
    )


async def _settled_depth(url: str, expected: int, deadline: float) -> int:
    """The DLQ's depth once it shows ``expected`` messages (SQS counts lag), or at the deadline."""
    held = await count_messages(url)
    # Polling another system's state: there is no event to wait on.
    while held != expected and time.monotonic() < deadline:
        await anyio.sleep(0.2)
        held = await count_messages(url)
    return held


def print_shadow(result: ShadowResult, out: Any) -> None:
    """The shadow verification's part of the summary."""
    w = out.write
    w(f"\nShadow verification: green {result.handler} ({result.version}) on {result.queue_url}\n")
    w(f"  messages seen             {result.seen:>6}   of {result.published} published\n")
    w(f"  succeeded                 {result.succeeded:>6}\n")
    dead = sum(result.dead_lettered.values())
    w(f"  dead-lettered             {dead:>6}   in its own DLQ ({result.dlq_messages} held)\n")
    w(f"  destination records       {result.destination_records:>6}   (destinations disabled)\n")
    w(
        f"  error ratio green         {result.green_ratio:>6.3f}   "
        f"{result.green_failed} of {result.green_calls} handler calls failed\n"
    )
    w(
        f"  error ratio live (blue)   {result.live_ratio:>6.3f}   "
        f"{result.live_failed} of {result.live_calls} handler calls failed\n"
    )
    excess = result.green_ratio - result.live_ratio
    w(f"  gate                      {excess:>+6.3f}   green minus live, at most +{result.gate:g}\n")
    w(f"  verdict: {result.verdict}\n")
    problems = result.problems()
    if problems:
        w("  check: " + "; ".join(problems) + "\n")
    out.flush()
