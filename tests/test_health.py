"""Metrics and the HTTP probes of a running worker, including an outage and a drain."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from tests.faultproxy import FaultProxy
from tests.helpers import Collecting, WorkerProcess, http_get, http_get_async, running_worker, send, wait_for
from worker.telemetry.metrics import Metrics

pytestmark = pytest.mark.localstack


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_move_as_documented(sqs: Any, queues: QueueFactory) -> None:
    """After one success, one retried-then-dead-lettered message, the documented series have moved."""
    q = await queues()
    sink = Collecting()
    metrics = Metrics()
    queue = q["url"].rsplit("/", 1)[-1]
    async with running_worker(q, sink=sink, metrics=metrics, max_attempts=2, immediate_retries=1) as worker:
        await send(sqs, q["url"], {"key": unique("ok")})
        await send(sqs, q["url"], {"key": unique("bad"), "do": "fail"})
        await wait_for(lambda: len(sink.outcomes) == 2, what="two outcomes")

        async def depth_sampled() -> bool:
            text = (await http_get_async(worker.http_port, "/metrics"))[1]
            return sample(text, "worker_queue_messages", queue=queue, state="visible") is not None

        await wait_for(depth_sampled, what="queue depth sampled")
        status, text = await http_get_async(worker.http_port, "/metrics")
        assert status == 200
    handler = {"queue": queue, "handler": "tests.handlers:scripted", "handler_version": "unknown"}
    assert sample(text, "worker_messages_received_total", queue=queue) == 2
    assert sample(text, "worker_messages_processed_total", outcome="succeeded", **handler) == 1
    assert sample(text, "worker_messages_processed_total", outcome="retried", **handler) == 1
    assert sample(text, "worker_messages_processed_total", outcome="dead_lettered", **handler) == 1
    assert sample(text, "worker_retries_total", queue=queue, kind="immediate") == 1
    assert sample(text, "worker_handler_duration_seconds_count", **handler) == 3
    assert sample(text, "worker_concurrency_limit", queue=queue) == 50
    assert sample(text, "worker_messages_in_flight", queue=queue) == 0
    assert sample(text, "worker_message_age_seconds_count", queue=queue) == 2
    assert (sample(text, "worker_last_poll_success_timestamp_seconds", queue=queue) or 0) > 1.7e9
    assert sample(text, "worker_build_info") == 1
    assert "message_id" not in text


async def test_probes_through_an_outage_and_a_drain(
    queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    """Blackholed SQS: /readyz fails, /healthz holds; SQS back: ready; SIGTERM: draining, then exit 0."""
    q = await queues()
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint}
    worker = WorkerProcess(
        env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"], shutdown_timeout_seconds=5
    )
    worker.start()
    try:
        await worker.wait_ready()
        status, body = http_get(worker.port, "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        fault_proxy.faults.blackhole = True
        fault_proxy.reset_all()
        await wait_for(lambda: http_get(worker.port, "/readyz")[0] == 503, timeout=30, what="not ready")
        status, body = http_get(worker.port, "/readyz")
        assert "SQS" in json.loads(body)["reason"]
        assert http_get(worker.port, "/healthz")[0] == 200
        fault_proxy.faults.blackhole = False
        fault_proxy.reset_all()
        await wait_for(lambda: http_get(worker.port, "/readyz")[0] == 200, timeout=60, what="ready again")
        worker.signal(signal.SIGTERM)
        await wait_for(
            lambda: (
                json.loads(http_get(worker.port, "/readyz")[1] or "{}").get("reason") == "draining"
                or worker.proc.poll() is not None
            ),
            what="draining or exited",
        )
        assert await worker.wait(timeout=20) == 0
        assert any(e.get("event") == "draining" for e in worker.events())
    finally:
        worker.kill()
