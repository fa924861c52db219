"""`worker demo`: the whole product in one command, on an embedded LocalStack.

SNS topic -> SQS queue (RedrivePolicy) -> worker -> DLQ, with failure records archived in S3, failure
alerts on an SNS topic and success confirmations on an SQS queue; a few hundred orders mixing
successes, transient failures, timeouts and poison messages; live progress; a summary checked
against what the queues and the bucket actually hold.

This module runs the worker and reports progress; the stack is created by ``demo_topology``, the
orders come from ``demo_traffic`` and the summary from ``demo_summary``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from worker.destinations.record import DestinationRecord
from worker.devkit.demo_canary import CanaryResult, run_canary
from worker.devkit.demo_shadow import ShadowResult, create_shadow, finish_shadow, print_shadow, start_shadow
from worker.devkit.demo_summary import Summary, print_summary
from worker.devkit.demo_topology import Topology, count_messages, count_s3, create_topology
from worker.devkit.demo_traffic import build_orders, publish
from worker.service.app import run_worker
from worker.settings import Settings
from worker.telemetry.liveline import LiveLine
from worker.telemetry.logs import configure_logging
from worker.telemetry.metrics import Metrics

# Importable from here as before the split.

#: Records seen by the demo's in-process hook (`python:worker.devkit.demo:record_hook`), by condition.
_RECORDS: collections.Counter[str] = collections.Counter()


def record_hook(record: DestinationRecord) -> None:
    """A Python destination hook: counts the records it receives (the demo's progress source)."""
    _RECORDS[record.condition] += 1


#: The demo's in-process destination hook (it counts the records: the progress and the summary's source).
HOOK = "python:worker.devkit.demo:record_hook"


@contextmanager
def demo_environment(endpoint: str) -> Iterator[None]:
    """Point botocore at the local endpoint with dummy credentials; never at a real account."""
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"worker demo: refusing a non-loopback endpoint {endpoint!r}")
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106 - LocalStack's dummy credentials
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def demo_settings(topo: Topology, *, quick: bool, http_port: int) -> Settings:
    """The worker's settings for the demo (what a user would set as WORKER_* variables)."""
    hook = HOOK
    return Settings(
        queue_url=topo.queue_url,
        dlq_url=topo.dlq_url,
        handler="worker.examples.orders:handle",
        handler_version="demo-1",
        concurrency=50,
        timeout_seconds=0.5 if quick else 1.0,
        max_attempts=3,
        immediate_retries=1,
        backoff_base_seconds=1,
        backoff_max_seconds=2 if quick else 4,
        wait_time_seconds=1,
        shutdown_timeout_seconds=10,
        http_host="127.0.0.1",
        http_port=http_port,
        on_success=[topo.confirmations_url, hook],
        on_failure=[f"s3://{topo.bucket}/{topo.prefix}", f"sns:{topo.alerts_arn}", hook],
        queue_metrics_interval_seconds=2,
        log_level="ERROR",
    )


def _counter(metrics: Metrics, name: str, **labels: str) -> int:
    total = 0.0
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return int(total)


class DemoProgress:
    """The demo's counts on one live line (a plain line every 3 s when not on a terminal)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._line = LiveLine(self.stream, tty=tty, interval=3.0)

    def show(self, metrics: Metrics, elapsed: float, *, final: bool = False) -> None:
        """Print the current counts."""
        done = sum(_RECORDS.values())
        ok = _RECORDS.get("Success", 0)
        line = (
            f"[{elapsed:5.1f}s] {done}/{self.total} done: {ok} succeeded, {done - ok} dead-lettered; "
            f"retries {_counter(metrics, 'worker_retries_total', kind='immediate')} immediate, "
            f"{_counter(metrics, 'worker_retries_total', kind='delayed')} delayed"
        )
        if not self._line.due(force=final):
            return
        if self._line.tty:
            self._line.draw(line)
            if final:
                self._line.finish()
        else:
            print(line, file=self.stream, flush=True)


async def run_demo(
    *,
    messages: int,
    quick: bool,
    keep: bool,
    http_port: int = 9102,
    prefix: str = "demo",
    stream: Any = None,
    canary: bool = False,
    shadow: bool = False,
) -> tuple[Summary, CanaryResult | None, ShadowResult | None]:
    """Create the topology, run the worker, publish traffic, wait for every outcome, check the stack.

    ``shadow``: a green candidate consumes a shadow subscription of the same topic meanwhile (demo_shadow).
    """
    out = stream or sys.stdout
    _RECORDS.clear()
    configure_logging("ERROR", "text")  # the progress line and the summary tell the story
    settings_probe = 3 + 2  # max_attempts + 2: the broker's redrive only catches a worker that died
    topo = await create_topology(prefix, settings_probe)
    shadow_queue = await create_shadow(prefix, settings_probe) if shadow else None
    shadow_result = None
    port = http_port if http_port and _port_free(http_port) else 0
    settings = demo_settings(topo, quick=quick, http_port=port)
    orders = build_orders(messages)
    metrics = Metrics()
    progress = DemoProgress(messages, out)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: run_worker(
                settings, metrics=metrics, sink=None, handle_signals=False, task_status=task_status
            )
        )
        print(f"worker running: metrics at http://127.0.0.1:{worker.http_port}/metrics", file=out)
        green = None if shadow_queue is None else await start_shadow(tg, settings, shadow_queue, out)
        print(f"publishing {messages} orders to SNS topic {topo.topic_arn.rsplit(':', 1)[-1]} ...", file=out)
        await publish(topo.topic_arn, orders)
        deadline = 60 + messages * 0.2
        with anyio.move_on_after(deadline):
            while sum(_RECORDS.values()) < messages:
                progress.show(metrics, time.monotonic() - started)
                await anyio.sleep(0.25)
        progress.show(metrics, time.monotonic() - started, final=True)
        seconds = time.monotonic() - started
        await _wait_destinations(topo, sum(n for c, n in _RECORDS.items() if c != "Success"))
        if green is not None:
            shadow_result = await finish_shadow(
                green, metrics, published=messages, within=30 + messages * 0.1
            )
        summary = Summary(
            published=messages,
            seconds=seconds,
            outcomes=dict(_RECORDS),
            retries_immediate=_counter(metrics, "worker_retries_total", kind="immediate"),
            retries_delayed=_counter(metrics, "worker_retries_total", kind="delayed"),
            dlq_messages=await count_messages(topo.dlq_url),
            s3_records=await count_s3(topo.bucket, topo.prefix),
            sns_alerts=await count_messages(topo.alerts_inbox_url),
            confirmations=await count_messages(topo.confirmations_url),
            scenarios=dict(collections.Counter(s for s, _ in orders)),
            shadow_problems=[] if shadow_result is None else shadow_result.problems(),
        )
        print_summary(summary, topo, worker.http_port, out)
        if shadow_result is not None:
            print_shadow(shadow_result, out)
        if keep and not canary:
            print("\n--keep: stack and worker left running; Ctrl-C to stop.", file=out)
            await anyio.sleep_forever()
        worker.stop()
    if not canary:
        return summary, None, shadow_result
    count = 60 if quick else 100
    result = await run_canary(settings, topo, _RECORDS, orders=count, hook=HOOK, out=out)
    summary.canary_problems = result.problems()
    if keep:
        print("\n--keep: stack left running; Ctrl-C to stop.", file=out)
        await anyio.sleep_forever()
    return summary, result, shadow_result


async def _wait_destinations(topo: Topology, dead_lettered: int) -> None:
    """Destinations are asynchronous: give the S3/SNS records a few seconds to land."""
    with anyio.move_on_after(15):
        # Polling another system's state: there is no event to wait on.
        while await count_s3(topo.bucket, topo.prefix) < dead_lettered:  # noqa: ASYNC110
            await anyio.sleep(0.2)
        while await count_messages(topo.alerts_inbox_url) < dead_lettered:  # noqa: ASYNC110
            await anyio.sleep(0.2)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main(
    *,
    messages: int,
    keep: bool,
    quick: bool,
    endpoint: str | None,
    summary_json: str | None = None,
    prefix: str | None = None,
    canary: bool = False,
    shadow: bool = False,
    http_port: int = 9102,
) -> int:
    """Entry point of `worker demo`; 0 when every count matches what the stack holds."""
    if messages < 1:
        print("worker demo: --messages must be at least 1", file=sys.stderr)
        return 2
    stack = None
    try:
        if endpoint is None:
            from worker.devkit.localstack import EmbeddedLocalStack

            print("starting the embedded LocalStack (host mode, no Docker) ...", flush=True)
            stack = EmbeddedLocalStack(port=4566 if _port_free(4566) else None)
            endpoint = stack.start().endpoint
            print(f"LocalStack ready at {endpoint}", flush=True)
        with demo_environment(endpoint):
            summary, canary_result, shadow_result = anyio.run(
                lambda: run_demo(
                    messages=messages,
                    quick=quick,
                    keep=keep,
                    prefix=prefix or "demo",
                    canary=canary,
                    shadow=shadow,
                    http_port=http_port,
                )
            )
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if stack is not None:
            stack.stop()
    if summary_json:
        data = asdict(summary) | {"succeeded": summary.succeeded, "dead_lettered": summary.dead_lettered}
        if canary_result is not None:
            data["canary"] = asdict(canary_result)
        if shadow_result is not None:
            ratios = {"green_ratio": shadow_result.green_ratio, "live_ratio": shadow_result.live_ratio}
            data["shadow"] = asdict(shadow_result) | ratios
        Path(summary_json).write_text(json.dumps(data, indent=2))
    return 0 if not summary.consistent() else 1
