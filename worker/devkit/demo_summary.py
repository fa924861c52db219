"""`worker demo`'s summary: what the demo did, checked against what the stack holds, and where to look."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from worker.devkit.demo_topology import Topology


@dataclass
class Summary:
    """What the demo did and what the stack holds afterwards."""

    published: int
    seconds: float
    outcomes: dict[str, int]
    retries_immediate: int
    retries_delayed: int
    dlq_messages: int
    s3_records: int
    sns_alerts: int
    confirmations: int
    scenarios: dict[str, int] = field(default_factory=dict)
    #: ``--canary``: what the canary of the bad version did (``CanaryResult.problems`` joins the check).
    canary_problems: list[str] = field(default_factory=list)
    #: ``--shadow``: what did not go as designed on the shadow subscription (``ShadowResult.problems``).
    shadow_problems: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        """Messages that ended in success."""
        return self.outcomes.get("Success", 0)

    @property
    def dead_lettered(self) -> int:
        """Messages that ended in the DLQ."""
        return sum(n for condition, n in self.outcomes.items() if condition != "Success")

    def consistent(self) -> list[str]:
        """Mismatches between what the worker reported and what the stack holds (empty when all agree)."""
        problems = []
        if self.succeeded + self.dead_lettered != self.published:
            problems.append(f"{self.succeeded + self.dead_lettered} outcomes for {self.published} messages")
        for name, held in (("DLQ messages", self.dlq_messages), ("S3 records", self.s3_records)):
            if held != self.dead_lettered:
                problems.append(f"{name}: {held}, dead-lettered: {self.dead_lettered}")
        if self.sns_alerts != self.dead_lettered:
            problems.append(f"SNS alerts: {self.sns_alerts}, dead-lettered: {self.dead_lettered}")
        if self.confirmations != self.succeeded:
            problems.append(f"confirmations: {self.confirmations}, succeeded: {self.succeeded}")
        return problems + self.shadow_problems + self.canary_problems


def print_summary(summary: Summary, topo: Topology, http_port: int, out: Any) -> None:
    """The summary table and where to look next."""
    w = out.write
    w("\nSummary\n")
    w(f"  published                 {summary.published:>6}   in {summary.seconds:.1f} s\n")
    w(f"  succeeded                 {summary.succeeded:>6}\n")
    w(f"  retried immediately       {summary.retries_immediate:>6}\n")
    w(f"  retried after a delay     {summary.retries_delayed:>6}\n")
    w(f"  dead-lettered             {summary.dead_lettered:>6}\n")
    for condition, n in sorted(summary.outcomes.items()):
        if condition != "Success":
            w(f"    {condition:<23} {n:>6}\n")
    w("  destination records\n")
    w(f"    SQS confirmations       {summary.confirmations:>6}   {topo.confirmations_url}\n")
    w(f"    S3 failure records      {summary.s3_records:>6}   s3://{topo.bucket}/{topo.prefix}/\n")
    w(f"    SNS failure alerts      {summary.sns_alerts:>6}   {topo.alerts_arn}\n")
    w(f"  DLQ holds                 {summary.dlq_messages:>6}   {topo.dlq_url}\n")
    problems = summary.consistent()
    w(
        "  check: "
        + ("every count matches the queues and the bucket\n" if not problems else "; ".join(problems) + "\n")
    )
    w("\nWhere to look next\n")
    w(f"  metrics         http://127.0.0.1:{http_port}/metrics   (while the demo runs; use --keep)\n")
    w(f"  the DLQ         {topo.dlq_url}   (each message carries a 'worker.failure' attribute)\n")
    if topo.subscription_dlq_url:
        w(f"  subscription DLQ {topo.subscription_dlq_url}   (what SNS could not deliver to the queue)\n")
    w(f"  failure records s3://{topo.bucket}/{topo.prefix}/<yyyy>/<mm>/<dd>/<condition>/<message id>.json\n")
    w(
        f"  run it yourself AWS_ENDPOINT_URL={os.environ.get('AWS_ENDPOINT_URL', '')} "
        f"WORKER_QUEUE_URL={topo.queue_url} WORKER_HANDLER=worker.examples.orders:handle worker run\n"
    )
    out.flush()
