"""Helpers shared by the LocalStack tests: run a worker in-process, wait on conditions, read queues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from worker.app import Worker, run_worker
from worker.hooks import Outcome
from worker.metrics import Metrics
from worker.settings import Settings


class Collecting:
    """An outcome sink that keeps what it is given."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def submit(self, outcome: Outcome) -> None:
        """Keep it."""
        self.outcomes.append(outcome)


@asynccontextmanager
async def running_worker(
    queue: dict[str, str], *, sink: Any = None, metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    """A worker on ``queue`` inside this test's task group; drained and stopped on exit."""
    values: dict[str, Any] = {
        "queue_url": queue["url"],
        "dlq_url": queue["dlq_url"],
        "handler": "tests.handlers:scripted",
        "http_port": 0,
        "http_host": "127.0.0.1",
        "wait_time_seconds": 1,
        "backoff_base_seconds": 1,
        "backoff_max_seconds": 2,
        "shutdown_timeout_seconds": 10,
        "queue_metrics_interval_seconds": 1,
    }
    values.update(overrides)
    settings = Settings(**values)
    async with anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            lambda task_status: run_worker(
                settings,
                metrics=metrics,
                sink=sink if sink is not None else Collecting(),
                handle_signals=False,
                task_status=task_status,
            )
        )
        try:
            yield worker
        finally:
            worker.stop()


async def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def send(sqs: Any, url: str, body: Any, **kwargs: Any) -> str:
    """Send one message (dicts are JSON-encoded); returns its id."""
    text = body if isinstance(body, str) else json.dumps(body)
    return str((await sqs.send_message(QueueUrl=url, MessageBody=text, **kwargs))["MessageId"])


async def drain(sqs: Any, url: str, *, expect: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Receive (and delete) until ``expect`` messages arrived or the deadline passes."""
    got: list[dict[str, Any]] = []
    with anyio.move_on_after(timeout):
        while len(got) < expect:
            response = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            for entry in response.get("Messages", []):
                got.append(entry)
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=entry["ReceiptHandle"])
    return got


async def depth(sqs: Any, url: str) -> int:
    """Visible + in-flight + delayed messages of a queue."""
    attrs = (
        await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
    )["Attributes"]
    return sum(int(v) for v in attrs.values())
