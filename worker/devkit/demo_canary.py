"""`worker demo --canary`: a canary of a deliberately bad handler version, rolled back by its gate.

After the normal traffic the demo restarts the worker with ``worker.examples.orders:handle_v2`` (version
0.2.0, which fails a third of the orders with a transient error) as a canary at 50 %: the error-ratio gate
rolls it back within an evaluation interval, the rollback record goes to an SQS queue, and the orders that
failed on the candidate are retried on the baseline, none dead-lettered.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from worker.aws.client import client_config, create_client
from worker.devkit.demo_topology import Topology
from worker.devkit.demo_traffic import publish
from worker.engine.rollout_log import RolloutState
from worker.examples.orders import V2_VERSION
from worker.service.app import run_worker
from worker.settings import Settings
from worker.settings_groups import CanarySettings
from worker.telemetry.metrics import Metrics

#: The candidate of the demo's canary.
CANDIDATE = "worker.examples.orders:handle_v2"
#: The canary's plan: 50 % for a minute (it is rolled back long before).
STEPS = "50:60"


@dataclass
class CanaryResult:
    """What the canary phase did."""

    published: int
    outcomes: dict[str, int]
    state: str
    weight: int
    candidate_calls: int
    candidate_failures: int
    seconds_to_rollback: float | None
    rollbacks_queue: str
    record: dict[str, Any] | None = field(default=None)

    def problems(self) -> list[str]:
        """What did not go as designed (empty when the bad version was rolled back and nothing was lost)."""
        found = []
        if self.state != RolloutState.ROLLED_BACK:
            found.append(f"canary state {self.state}, expected rolled_back")
        if self.outcomes.get("Success", 0) != self.published:
            found.append(f"canary: {self.outcomes.get('Success', 0)} of {self.published} orders succeeded")
        if self.record is None:
            found.append("canary: no rollback record delivered")
        return found


def canary_orders(count: int) -> list[tuple[str, str]]:
    """``count`` plain orders (scenario ``ok``): only the candidate makes them fail."""
    return [
        ("ok", json.dumps({"order_id": f"c-{index:05d}", "sku": f"SKU-{index % 40 + 1}", "quantity": 1}))
        for index in range(count)
    ]


def canary_settings(base: Settings, topo: Topology, rollbacks_url: str, hook: str) -> Settings:
    """The demo's settings plus the canary (successes go to the hook only: the confirmations stay checked)."""
    canary = CanarySettings(
        handler=CANDIDATE,
        version=V2_VERSION,
        steps=STEPS,
        max_error_ratio=0.1,
        min_samples=10,
        evaluation_interval_seconds=1.0,
        state=f"s3://{topo.bucket}/rollouts",
        on_rollback=[rollbacks_url],
    )
    return base.model_copy(update={"canary": canary, "on_success": [hook]})


async def run_canary(
    base: Settings,
    topo: Topology,
    records: collections.Counter[str],
    *,
    orders: int,
    hook: str,
    out: Any,
) -> CanaryResult:
    """Run the worker with the bad candidate as a canary over ``orders`` orders; report the rollback."""
    async with create_client("sqs", client_config()) as sqs:
        rollbacks_url = (await sqs.create_queue(QueueName=f"{topo.bucket}-rollbacks"))["QueueUrl"]
        await sqs.purge_queue(QueueUrl=rollbacks_url)
    settings = canary_settings(base, topo, rollbacks_url, hook)
    before = collections.Counter(records)
    w = out.write
    w(f"\nCanary: {CANDIDATE} (version {V2_VERSION}) at 50 % next to {base.handler_version}\n")
    w("  gate: candidate error ratio above 10 % after 10 calls; evaluated every 1 s\n")
    started = time.monotonic()
    rolled_back_after: float | None = None
    async with anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: run_worker(
                settings, metrics=Metrics(), sink=None, handle_signals=False, task_status=task_status
            )
        )
        router = worker.rollouts.router
        await publish(topo.topic_arn, canary_orders(orders))
        with anyio.move_on_after(60 + orders * 0.2):
            while sum((records - before).values()) < orders or rolled_back_after is None:
                if rolled_back_after is None and router.state is RolloutState.ROLLED_BACK:
                    rolled_back_after = time.monotonic() - started
                await anyio.sleep(0.05)
        stats = router.stats().get(V2_VERSION)
        result = CanaryResult(
            published=orders,
            outcomes=dict(records - before),
            state=router.state.value,
            weight=router.weight,
            candidate_calls=0 if stats is None else stats.calls,
            candidate_failures=0 if stats is None else stats.failures,
            seconds_to_rollback=rolled_back_after,
            rollbacks_queue=rollbacks_url,
            record=await _rollback_record(rollbacks_url),
        )
        worker.stop()
    print_canary(result, out)
    return result


async def _rollback_record(url: str) -> dict[str, Any] | None:
    """The first rollback record in the queue (left there), or None after a few seconds."""
    async with create_client("sqs", client_config()) as sqs:
        with anyio.move_on_after(10):
            while True:
                got = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=0)
                for message in got.get("Messages", []):
                    data: dict[str, Any] = json.loads(message["Body"])
                    return data
    return None


def print_canary(result: CanaryResult, out: Any) -> None:
    """The canary's part of the summary."""
    w = out.write
    ok = result.outcomes.get("Success", 0)
    when = "-" if result.seconds_to_rollback is None else f"{result.seconds_to_rollback:.1f} s"
    w(f"  state                     {result.state:>11}   weight {result.weight} %, after {when}\n")
    w(f"  candidate calls           {result.candidate_calls:>6}   {result.candidate_failures} failed\n")
    retried = "the failed ones retried on the baseline"
    w(f"  orders                    {result.published:>6}   {ok} succeeded ({retried})\n")
    dead = sum(n for condition, n in result.outcomes.items() if condition != "Success")
    w(f"  dead-lettered             {dead:>6}\n")
    record = result.record
    if record is not None:
        w(
            f"  rollback record           gate {record.get('gate')}: observed {record.get('observed'):.3g} > "
            f"{record.get('threshold')}   ({result.rollbacks_queue})\n"
        )
        w("  " + json.dumps(record, sort_keys=True) + "\n")
    problems = result.problems()
    w(
        "  check: "
        + ("the bad version was rolled back, no order lost\n" if not problems else "; ".join(problems) + "\n")
    )
    out.flush()
