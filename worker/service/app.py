"""`worker run`: start-up checks, the top task group, signals and the shutdown order."""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from botocore.exceptions import ClientError

from worker.aws.client import CALL_ERRORS, Batcher, client_config, create_client, error_code, queue_depth
from worker.deadletter.record import DeadLetterWriter
from worker.engine.handler import load_handler
from worker.engine.outcome import NullSink, OutcomeSink
from worker.engine.processor import Processor
from worker.errors import ConfigError
from worker.service.http import HttpServer
from worker.service.permissions import log_missing_permissions
from worker.settings import Settings, env_name
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.app")


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What start-up learns about the source queue."""

    arn: str
    dlq_url: str
    redrive_max_receive_count: int | None


#: Start-up keeps trying an unreachable endpoint this long before giving up (a wrong queue fails at once).
STARTUP_RETRY_SECONDS = 60.0


async def _queue_attributes(client: Any, url: str, field: str) -> dict[str, str]:
    """GetQueueAttributes(All); a missing queue or denied access is a ConfigError naming ``field``."""
    delay = 0.5
    with anyio.move_on_after(STARTUP_RETRY_SECONDS):
        while True:
            try:
                response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
                return dict(response["Attributes"])
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
                code = error_code(exc)
                if status < 500 and "Throttl" not in code:  # wrong queue or access: say so now
                    raise ConfigError(f"{env_name(field)}: cannot read the queue ({code})") from None
                log.warning(
                    "SQS error at start-up; retrying",
                    extra={"event": "startup_unreachable", "error": error_code(exc)},
                )
            except CALL_ERRORS as exc:
                log.warning(
                    "SQS unreachable at start-up; retrying",
                    extra={"event": "startup_unreachable", "error": error_code(exc)},
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise ConfigError(f"{env_name(field)}: SQS endpoint unreachable for {STARTUP_RETRY_SECONDS:.0f}s")


async def inspect_queue(client: Any, settings: Settings) -> QueueInfo:
    """Read the source queue's ARN and RedrivePolicy; resolve the DLQ; warn about a weak safety net."""
    attrs = await _queue_attributes(client, settings.queue_url, "queue_url")
    policy = json.loads(attrs.get("RedrivePolicy") or "null")
    max_receive = int(policy["maxReceiveCount"]) if isinstance(policy, dict) else None
    dlq_url = settings.dlq_url
    if dlq_url is None and isinstance(policy, dict):
        target = str(policy["deadLetterTargetArn"])
        _, _, _, _, account, name = target.split(":", 5)
        response = await client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        dlq_url = str(response["QueueUrl"])
        log.info(
            "using the RedrivePolicy's dead-letter queue", extra={"event": "dlq_from_redrive", "dlq": name}
        )
    if dlq_url is None:
        raise ConfigError(
            f"{env_name('dlq_url')} is not set and the queue has no RedrivePolicy: "
            "failed messages would have nowhere to go"
        )
    if max_receive is None:
        log.warning(
            "source queue has no RedrivePolicy: nothing catches messages if the worker dies mid-failure",
            extra={"event": "no_redrive_policy"},
        )
    elif max_receive <= settings.max_attempts:
        log.warning(
            f"RedrivePolicy maxReceiveCount ({max_receive}) is not above {env_name('max_attempts')} "
            f"({settings.max_attempts}): the broker may dead-letter messages before the worker does",
            extra={"event": "redrive_policy_too_low"},
        )
    try:
        await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    except CALL_ERRORS as exc:
        raise ConfigError(
            f"{env_name('dlq_url')}: cannot read the dead-letter queue ({error_code(exc)})"
        ) from None
    return QueueInfo(arn=str(attrs["QueueArn"]), dlq_url=dlq_url, redrive_max_receive_count=max_receive)


async def watch_queue_depth(client: Any, urls: dict[str, str], metrics: Metrics, interval: float) -> None:
    """Publish worker_queue_messages for the source and the DLQ from periodic GetQueueAttributes."""
    while True:
        for queue, url in urls.items():
            try:
                counts = await queue_depth(client, url)
            except CALL_ERRORS:
                metrics.sqs_errors.labels("GetQueueAttributes").inc()
                continue
            for state, count in counts.items():
                metrics.queue_messages.labels(queue, state).set(float(count))
        await anyio.sleep(interval)


def queue_name(url: str) -> str:
    """The queue name: the last path segment of its URL (the metrics' ``queue`` label)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


async def run_worker(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    sink: OutcomeSink | None = None,
    handle_signals: bool = True,
    task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``worker run`` until stopped by a signal (or ``Worker.stop()``)."""
    metrics = metrics or Metrics()
    health = Health(stale_after=max(120.0, 4.0 * (settings.wait_time_seconds + 30)))
    handler = load_handler(settings.handler, thread_limiter=anyio.CapacityLimiter(settings.concurrency))
    pool = settings.pollers + min(settings.concurrency, 100) + 10
    config = client_config(read_timeout=settings.wait_time_seconds + 15, pool=pool)
    async with create_client("sqs", config) as client:
        info = await inspect_queue(client, settings)
        health.poll_succeeded()  # SQS just answered: ready without waiting for the first long poll to return
        from worker.destinations.delivery import build_sink

        async with anyio.create_task_group() as services:
            services.start_soon(log_missing_permissions, settings, info.arn, info.dlq_url)
            if sink is None:
                sink = await services.start(build_sink, settings, metrics)
            worker = Worker(settings, client, metrics, health, info, handler_path=handler.path)
            http_port = await services.start(
                HttpServer(settings.http_host, settings.http_port, metrics, health).serve
            )
            worker.http_port = http_port
            services.start_soon(
                watch_queue_depth,
                client,
                {queue_name(settings.queue_url): settings.queue_url, queue_name(info.dlq_url): info.dlq_url},
                metrics,
                settings.queue_metrics_interval_seconds,
            )
            if handle_signals:
                services.start_soon(worker.signals)
            await worker.consume(handler, sink or NullSink(), task_status)
            services.cancel_scope.cancel()


class Worker:
    """The running worker: ``stop()`` drains, a second ``stop()`` forces."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        metrics: Metrics,
        health: Health,
        info: QueueInfo,
        handler_path: str,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.health = health
        self.info = info
        self.handler_path = handler_path
        self.http_port = 0
        self.stopping = anyio.Event()
        self.forced = anyio.Event()

    def stop(self) -> None:
        """First call: drain. Second call: force (cancel handlers, give their messages back)."""
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    async def signals(self) -> None:
        """SIGTERM/SIGINT: first drains, second forces."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                log.info("signal received", extra={"event": "signal", "signal": signal.Signals(signum).name})
                self.stop()

    async def consume(self, handler: Any, sink: OutcomeSink, task_status: TaskStatus[Worker]) -> None:
        """Batchers outlive the consumer; the consumer outlives nothing it started."""
        from worker.engine.consumer import Consumer

        queue = queue_name(self.settings.queue_url)
        deleter = Batcher(self.client, "DeleteMessageBatch", self.settings.queue_url, self.metrics)
        visibility = Batcher(
            self.client, "ChangeMessageVisibilityBatch", self.settings.queue_url, self.metrics
        )
        dead_letters = DeadLetterWriter(
            self.client,
            self.info.dlq_url,
            source_queue_arn=self.info.arn,
            handler=self.handler_path,
            handler_version=self.settings.handler_version,
            metrics=self.metrics,
        )
        processor = Processor(
            settings=self.settings,
            handler=handler,
            metrics=self.metrics,
            deleter=deleter,
            visibility=visibility,
            dead_letters=dead_letters,
            sink=sink,
        )
        consumer = Consumer(
            settings=self.settings,
            client=self.client,
            processor=processor,
            metrics=self.metrics,
            health=self.health,
        )
        async with anyio.create_task_group() as batchers:
            await batchers.start(deleter.run)
            await batchers.start(visibility.run)
            async with anyio.create_task_group() as work:
                work.start_soon(self._shutdown_watch, consumer, work.cancel_scope)
                self.health.started = True
                log.info(
                    "worker started",
                    extra={"event": "started", "queue": queue, "concurrency": self.settings.concurrency},
                )
                task_status.started(self)
                await consumer.run()
                work.cancel_scope.cancel()  # consumer done: stop the watcher
            deleter.close()
            visibility.close()
        log.info("worker stopped", extra={"event": "stopped", "queue": queue})

    async def _shutdown_watch(self, consumer: Any, work_scope: anyio.CancelScope) -> None:
        await self.stopping.wait()
        self.health.draining = True
        log.info("draining", extra={"event": "draining", "in_flight": consumer.slots.used})
        consumer.stop()
        with anyio.move_on_after(self.settings.shutdown_timeout_seconds):
            await self.forced.wait()
            log.warning("second signal: forcing exit", extra={"event": "forced"})
        # Either the budget ran out or a second signal came: cancel what is still running.
        log.warning("shutdown deadline: cancelling in-flight handlers", extra={"event": "drain_deadline"})
        work_scope.cancel()
