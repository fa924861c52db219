"""On-success and on-failure destinations (placeholder: replaced by the destinations work)."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from .hooks import NullSink, OutcomeSink
from .metrics import Metrics
from .settings import Settings


async def build_sink(
    settings: Settings, metrics: Metrics, *, task_status: TaskStatus[OutcomeSink] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Start delivering outcomes to the configured destinations; report the sink."""
    task_status.started(NullSink())
    await anyio.sleep_forever()
