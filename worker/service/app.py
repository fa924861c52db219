"""`worker run`: the top task group, the order things start and stop in, and the queue-depth metrics."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from worker.aws.batcher import BatchCall, Batcher
from worker.aws.client import CALL_ERRORS, client_config, create_client
from worker.aws.names import queue_name
from worker.aws.queues import queue_depth
from worker.deadletter.writer import DeadLetterWriter
from worker.destinations.sink import build_sink
from worker.engine.breaker_gate import BreakerGate
from worker.engine.consumer import Consumer
from worker.engine.handler import LoadedHandler, load_handler
from worker.engine.lease import Heartbeats
from worker.engine.middleware import Middleware, load_middleware
from worker.engine.outcome import OutcomeSink
from worker.engine.payloads import ExtendedPayloads, PayloadOffload
from worker.engine.pollers import pollers_bound
from worker.engine.processor import Processor
from worker.engine.threads import AbandonedThreads
from worker.service.http import HttpServer
from worker.service.rollouts import Rollouts, start_rollouts
from worker.service.signals import stop_on_signals
from worker.service.startup import QueueInfo, inspect_queue
from worker.settings import Settings
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient

    from worker.service.color_controller import ColorController


log = logging.getLogger("worker.app")


async def watch_queue_depth(
    client: SQSClient, urls: dict[str, str], metrics: Metrics, interval: float
) -> None:
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


#: The IAM permission check (advisory: it only logs) waits for a receive to come back empty, this long at
#: most: creating its STS and IAM clients costs about 0.2 s of event-loop time (botocore loads their
#: models), which would otherwise delay the first messages or slow down a backlog.
PERMISSION_CHECK_DEFER_SECONDS = 60.0


async def check_permissions_when_quiet(settings: Settings, info: QueueInfo, quiet: anyio.Event) -> None:
    """Log the missing IAM permissions once the queue was found empty (or after a minute of backlog)."""
    with anyio.move_on_after(PERMISSION_CHECK_DEFER_SECONDS):
        await quiet.wait()
    from worker.service.permissions import log_missing_permissions  # not needed before this point

    await log_missing_permissions(settings, info.arn, info.dlq_url)


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
    threads = AbandonedThreads(settings.abandoned_threads_limit)
    health.receive_paused = threads.pause_reason
    payloads = ExtendedPayloads(settings.extended_payloads, pool=min(settings.concurrency, 100))
    limiter = anyio.CapacityLimiter(settings.concurrency)

    def load(path: str, variable: str = "WORKER_HANDLER") -> LoadedHandler:
        # Extended-client pointers resolved for the handler only (the DLQ keeps them).
        return payloads.wrap(load_handler(path, thread_limiter=limiter, variable=variable, abandoned=threads))

    handler = load(settings.handler)
    middleware = load_middleware(settings.middleware)
    pool = pollers_bound(settings.concurrency, settings.pollers) + min(settings.concurrency, 100) + 10
    # Every request of this client is built here, and SQS validates them all: no client-side validation.
    config = client_config(read_timeout=settings.wait_time_seconds + 15, pool=pool, validate=False)
    async with AsyncExitStack() as stack, create_client("sqs", config) as client:
        info = await inspect_queue(client, settings)
        health.poll_succeeded()  # SQS just answered: ready without waiting for the first long poll to return
        async with anyio.create_task_group() as services:
            if sink is None:
                sink = await services.start(build_sink, settings, metrics)
            sink = await services.start(payloads.run, sink)  # deletes payloads after success, if configured
            worker = Worker(
                settings, client, metrics, health, info, handler_path=handler.path, threads=threads
            )
            worker.middleware = middleware
            worker.offload = payloads.offload  # dead letters with no room for their record go to S3
            worker.rollouts = await start_rollouts(  # canary routing, blue/green standby (when configured)
                services,
                stack,
                settings,
                metrics,
                handler,
                partial(load, variable="WORKER_CANARY__HANDLER"),
                queue_name(settings.queue_url),
            )
            services.start_soon(check_permissions_when_quiet, settings, info, worker.quiet)
            http_port = await services.start(
                HttpServer(settings.http_host, settings.http_port, metrics, health).serve
            )
            worker.http_port = http_port
            if settings.metrics_emf != "off":  # CloudWatch EMF lines, the last flush after the drain
                from worker.telemetry.emf_writer import EmfExporter

                await services.start(
                    EmfExporter.for_settings(settings, metrics, queue_name(settings.queue_url)).run
                )
            services.start_soon(
                watch_queue_depth,
                client,
                {queue_name(settings.queue_url): settings.queue_url, queue_name(info.dlq_url): info.dlq_url},
                metrics,
                settings.queue_metrics_interval_seconds,
            )
            if handle_signals:
                await services.start(stop_on_signals, worker.stop, worker.stop)
            await worker.consume(handler, sink, task_status)
            services.cancel_scope.cancel()


class Worker:
    """The running worker: ``stop()`` drains, a second ``stop()`` forces."""

    def __init__(
        self,
        settings: Settings,
        client: SQSClient,
        metrics: Metrics,
        health: Health,
        info: QueueInfo,
        handler_path: str,
        threads: AbandonedThreads,
    ) -> None:
        self.settings = settings
        #: Abandoned threads of timed-out sync handlers (counted by the handler, bounded by the consumer).
        self.threads = threads
        self.client = client
        self.metrics = metrics
        self.health = health
        self.info = info
        self.handler_path = handler_path
        self.http_port = 0
        #: WORKER_MIDDLEWARE, loaded, and the S3 offload of oversized dead letters (run_worker sets both).
        self.middleware: tuple[Middleware, ...] = ()
        self.offload: PayloadOffload | None = None
        #: The canary router and the blue/green hold (run_worker sets them when configured).
        self.rollouts = Rollouts()
        self.stopping = anyio.Event()
        self.forced = anyio.Event()
        #: Set once a receive came back empty (the consumer's ``quiet``): start-up chores may run then.
        self.quiet = anyio.Event()

    def stop(self) -> None:
        """First call: drain. Second call: force (cancel handlers, give their messages back)."""
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    async def consume(
        self, handler: LoadedHandler, sink: OutcomeSink | None, task_status: TaskStatus[Worker]
    ) -> None:
        """Batchers outlive the heartbeats, which outlive the consumer (leases extend while it drains)."""
        queue = queue_name(self.settings.queue_url)
        deleter = Batcher(self.client, BatchCall.DELETE, self.settings.queue_url, self.metrics)
        visibility = Batcher(self.client, BatchCall.CHANGE_VISIBILITY, self.settings.queue_url, self.metrics)
        heartbeats = Heartbeats(self.settings.visibility_timeout_seconds, visibility, self.metrics, queue)
        dead_letters = DeadLetterWriter(
            self.client,
            self.info.dlq_url,
            source_queue_arn=self.info.arn,
            handler=self.handler_path,
            handler_version=self.settings.handler_version,
            metrics=self.metrics,
            offload=self.offload,
        )
        gate = BreakerGate.for_settings(self.settings.breaker, queue, self.metrics)
        processor = Processor(
            settings=self.settings,
            handler=handler,
            metrics=self.metrics,
            deleter=deleter,
            visibility=visibility,
            heartbeats=heartbeats,
            dead_letters=dead_letters,
            sink=sink,
            middleware=self.middleware,
            gate=gate,
            canary=self.rollouts.router,
        )
        consumer = Consumer(
            settings=self.settings,
            client=self.client,
            processor=processor,
            metrics=self.metrics,
            health=self.health,
            threads=self.threads,
        )
        consumer.quiet = self.quiet
        color = self.rollouts.color
        if color is not None:  # standby: the pollers hold, parked receives are cancelled at the flip
            color.attach(lambda: consumer.in_flight, consumer.cancel_parked)
            consumer.holds.append(color)
        # /readyz stays 200 with a breaker open or on standby (the pod is fine) and says so in its body.
        self.health.details = partial(_ready_details, gate, color)
        async with anyio.create_task_group() as batchers:
            await batchers.start(deleter.run)
            await batchers.start(visibility.run)
            async with anyio.create_task_group() as leases:
                await leases.start(heartbeats.run)
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
                leases.cancel_scope.cancel()
            deleter.close()
            visibility.close()
        log.info("worker stopped", extra={"event": "stopped", "queue": queue})

    async def _shutdown_watch(self, consumer: Consumer, work_scope: anyio.CancelScope) -> None:
        await self.stopping.wait()
        self.health.draining = True
        log.info("draining", extra={"event": "draining", "in_flight": consumer.in_flight})
        consumer.stop()
        with anyio.move_on_after(self.settings.shutdown_timeout_seconds):
            await self.forced.wait()
            log.warning("second signal: forcing exit", extra={"event": "forced"})
        # Either the budget ran out or a second signal came: cancel what is still running.
        if not self.forced.is_set():
            log.warning("shutdown deadline: cancelling in-flight handlers", extra={"event": "drain_deadline"})
        work_scope.cancel()


def _ready_details(gate: BreakerGate | None, color: ColorController | None) -> dict[str, object]:
    """The extra fields of /readyz's body: open breakers, and blue/green standby."""
    details: dict[str, object] = {}
    if gate is not None:
        details["open_breakers"] = gate.open_details()
    if color is not None:
        details["color"] = color.color
        details["standby"] = not color.active
    return details
