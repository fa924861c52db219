"""The measurement: throwaway queues, preloading (in each consumer's own message format), a consumer's drain
sampled every 50 ms from its launch (rate from process start and at steady state, CPU, RSS), and the handler
start latency at a low steady rate."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from bench.common import ROOT, log
from bench.consumers import ConsumerProcess, Launch, peer_encoder, spec, start
from bench.process import cores_busy, cpu_seconds, machine_busy_seconds, peak_rss_bytes

#: Body size of the preloaded messages, as the issue asks.
BODY_BYTES = 200
SAMPLE_INTERVAL = 0.05


@dataclass(frozen=True)
class Sample:
    """One look at a drain: when, messages left, and CPU seconds so far (consumer, emulator, machine)."""

    at: float
    remaining: int
    cpu: float
    emulator_cpu: float | None
    machine_cpu: float | None


def _counts(metrics: dict[str, float], report: dict[str, Any]) -> dict[str, int]:
    """What the consumer says it received (and, for the worker, ran to success)."""
    if metrics:
        return {
            "received": int(
                sum(v for k, v in metrics.items() if k.startswith("worker_messages_received_total"))
            ),
            "succeeded": int(
                sum(
                    v
                    for k, v in metrics.items()
                    if k.startswith("worker_messages_processed_total") and 'outcome="succeeded"' in k
                )
            ),
        }
    if report:
        return {"received": int(report.get("deleted", report.get("handled", 0)))}
    return {}


@dataclass
class Queue:
    """A throwaway queue and its DLQ."""

    url: str
    dlq_url: str


@dataclass
class Bench:
    """Everything a run shares: options, the emulator's environment, a client, the results."""

    args: argparse.Namespace
    aws_env: dict[str, str]
    workdir: Path
    client: Any
    node: str | None
    emulator_pid: int | None = None
    counter: int = 0
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:6]}")

    # -- queues --

    async def make_queue(self, label: str) -> Queue:
        """A queue with a RedrivePolicy to its own DLQ (the worker requires a DLQ)."""
        self.counter += 1
        base = f"{self.prefix}-{self.counter}-{label}"
        dlq = (await self.client.create_queue(QueueName=f"{base}-dlq"))["QueueUrl"]
        arn = (await self.client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 10})
        url = (
            await self.client.create_queue(
                QueueName=base, Attributes={"VisibilityTimeout": "60", "RedrivePolicy": policy}
            )
        )["QueueUrl"]
        return Queue(url, dlq)

    async def delete_queue(self, queue: Queue) -> None:
        """Best effort."""
        for url in (queue.url, queue.dlq_url):
            with contextlib.suppress(Exception):
                await self.client.delete_queue(QueueUrl=url)

    async def depth(self, url: str) -> int:
        """Visible + in flight + delayed."""
        from worker.aws.queues import queue_depth

        return sum((await queue_depth(self.client, url)).values())

    async def bodies(self, name: str, payloads: list[str], queue: Queue) -> list[str]:
        """The SQS bodies consumer ``name`` reads for these payloads: the payloads themselves, or a Python
        peer's own encoding of them (its ``bodies`` mode, in the peers' virtualenv)."""
        module = peer_encoder(name)
        if module is None:
            return payloads
        done = await anyio.run_process(
            [str(self.args.peers_python), "-m", module, "bodies"],
            input="".join(json.dumps(p) + "\n" for p in payloads).encode(),
            cwd=ROOT,
            env={**self.spawn_env(), "BENCH_QUEUE_URL": queue.url},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{module} bodies failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
        out = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
        if len(out) != len(payloads):
            raise RuntimeError(f"{module} bodies: {len(out)} bodies for {len(payloads)} payloads")
        return out

    async def send_bodies(self, url: str, bodies: list[str]) -> None:
        """Send these bodies in one SendMessageBatch call per 10, one after another."""
        for i in range(0, len(bodies), 10):
            entries = [{"Id": str(k), "MessageBody": b} for k, b in enumerate(bodies[i : i + 10])]
            response = await self.client.send_message_batch(QueueUrl=url, Entries=entries)
            if response.get("Failed"):
                raise RuntimeError(f"SendMessageBatch failed: {response['Failed'][:1]}")

    async def preload(self, url: str, count: int, senders: int = 8, bodies: list[str] | None = None) -> float:
        """Send ``count`` messages (200-byte JSON, or ``bodies``) with SendMessageBatch from several senders;
        msg/s."""
        started = time.perf_counter()
        batches = [range(i, min(i + 10, count)) for i in range(0, count, 10)]
        position = 0

        async def sender() -> None:
            nonlocal position
            while position < len(batches):
                batch = batches[position]
                position += 1
                entries = [
                    {"Id": str(k), "MessageBody": bodies[i] if bodies is not None else body(i)}
                    for k, i in enumerate(batch)
                ]
                response = await self.client.send_message_batch(QueueUrl=url, Entries=entries)
                if response.get("Failed"):
                    raise RuntimeError(f"preload: SendMessageBatch failed: {response['Failed'][:1]}")

        async with anyio.create_task_group() as tg:
            for _ in range(senders):
                tg.start_soon(sender)
        return count / (time.perf_counter() - started)

    # -- consumers --

    def spawn_env(self) -> dict[str, str]:
        """The environment of every consumer: this one without AWS_/WORKER_/BENCH_/PYTHON* variables, plus the
        sealed AWS environment of the emulator."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "WORKER_", "BENCH_", "PYTHON"))
        }
        env.update(self.aws_env)
        return env

    def spawn(
        self,
        name: str,
        queue: Queue,
        handler: str,
        *,
        concurrency: int | None = None,
        io_concurrency: int | None = None,
        extra: dict[str, str],
    ) -> ConsumerProcess:
        """Start consumer ``name`` on ``queue`` with ``handler``; the BENCH_* settings every consumer shares.
        ``extra`` may override AWS_ENDPOINT_URL (the counting proxy); the queue URLs follow it."""
        env = self.spawn_env()
        url, dlq_url = queue.url, queue.dlq_url
        if "AWS_ENDPOINT_URL" in extra:
            url = _rehost(url, extra["AWS_ENDPOINT_URL"])
            dlq_url = _rehost(dlq_url, extra["AWS_ENDPOINT_URL"])
        env.update(
            BENCH_QUEUE_URL=url,
            BENCH_WAIT_SECONDS=str(self.args.wait),
            BENCH_VISIBILITY_SECONDS="60",
            BENCH_HANDLER=handler,
            **extra,
        )
        launch = Launch(
            queue_url=url,
            dlq_url=dlq_url,
            handler=handler,
            pollers=self.args.pollers,
            wait=self.args.wait,
            concurrency=concurrency,
            worker_command=self.args.worker_command,
            candidate_src=self.args.candidate_src,
            node=self.node,
            io_concurrency=io_concurrency,
            peers_python=Path(self.args.peers_python),
        )
        stem = f"{self.counter:03d}-{name}-{handler}"
        return start(name, launch, env, self.workdir / f"{stem}.out", self.workdir / f"{stem}.err")

    def profile(self, consumer: ConsumerProcess, handler: str) -> subprocess.Popen[bytes] | None:
        """With ``--profile DIR``: py-spy samples a Python consumer (non-blocking) into DIR/*.txt."""
        if not self.args.profile or not spec(consumer.name).python:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        py_spy_args = [py_spy, "record", "--rate", "250", "--nonblocking", "--format", "raw"]
        target = Path(self.args.profile) / f"{self.counter:03d}-{consumer.name}-{handler}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [*py_spy_args, "--pid", str(consumer.pid), "--output", str(target)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def others_cpu(self) -> tuple[float | None, float | None]:
        """CPU seconds so far of the emulator (when this run started it) and of the whole machine."""
        emulator_cpu = None
        if self.emulator_pid is not None:
            with contextlib.suppress(OSError):
                emulator_cpu = cpu_seconds(self.emulator_pid)
        return emulator_cpu, machine_busy_seconds()

    # -- measurements --

    async def drain(
        self, name: str, handler: str, count: int, from_start_count: int | None = None
    ) -> dict[str, Any]:
        """Preload ``count`` messages, launch consumer ``name`` and let it drain them: the rate from process
        start (over the first ``from_start_count`` messages, default all: the same reference for every
        consumer however many it drains) and at steady state, CPU and RSS of its process tree."""
        queue = await self.make_queue(f"{name}-{handler}")
        try:
            bodies = await self.bodies(name, [body(i) for i in range(count)], queue)
            preload_rate = await self.preload(queue.url, count, bodies=bodies)
            io = handler == "sleep50"
            launched = time.perf_counter()
            consumer = self.spawn(
                name,
                queue,
                handler,
                concurrency=None if io else self.args.concurrency,
                io_concurrency=self.args.io_concurrency if io else None,
                extra={},
            )
            profiler = None
            try:
                profiler = self.profile(consumer, handler)
                baseline, first, last, samples = await self._watch(consumer, queue.url, count)
                peak = peak_rss_bytes(consumer.pid, consumer.peak_rss_sampled)
                metrics = consumer.metrics()
            finally:
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    await anyio.to_thread.run_sync(profiler.wait)
                await consumer.stop()
        finally:
            await self.delete_queue(queue)
        seconds = last.at - first.at
        if seconds <= 0:
            raise RuntimeError(f"{name} drained {count} messages before the first sample: raise --messages")
        steady = steady_rate(samples, count)
        reference = min(from_start_count or count, count)
        reached = last.at if reference == count else crossing(samples, count, reference)
        if reached is None:  # drained between two samples: the empty queue bounds it
            reached = last.at
        result: dict[str, Any] = {
            "consumer": name,
            "config": consumer.config,
            "handler": handler,
            "messages": count,
            "measured_messages": first.remaining,
            "seconds": round(seconds, 3),
            "msgs_per_s": round(first.remaining / seconds, 1),
            # The first ``reference`` messages over the time from the consumer's launch until they were
            # consumed (start-up included): every consumer of a handler has the same reference.
            "from_start_msgs_per_s": round(reference / (reached - launched), 1),
            "from_start_reference_messages": reference,
            # Between 10 % and 90 % of the messages consumed: no start-up, no ramp, no tail.
            "steady_msgs_per_s": round(steady, 1) if steady is not None else None,
            "launch_to_consuming_s": round(first.at - launched, 3),
            # CPU over every message the consumer took after the baseline: a clock tick is 10 ms, so the
            # rate window alone (the tail of a fast drain) can be shorter than one tick.
            "cpu_s_per_1k": round((last.cpu - baseline.cpu) / baseline.remaining * 1000, 4),
            # The same from the launch: start-up (imports, clients, forks) included.
            "cpu_s_per_1k_from_start": round(last.cpu / count * 1000, 4),
            "peak_rss_mb": round(peak / 2**20, 1),
            "preload_msgs_per_s": round(preload_rate),
            # Cores busy meanwhile: the emulator process, and the whole machine (every process).
            "emulator_cores": cores_busy(first.emulator_cpu, last.emulator_cpu, seconds),
            "machine_cores_busy": cores_busy(first.machine_cpu, last.machine_cpu, seconds),
            **_counts(metrics, consumer.final_line()),
        }
        log(
            f"{name:>18} {handler:<8} {result['from_start_msgs_per_s']:>7.0f} msg/s from start, "
            f"{result['steady_msgs_per_s'] or 0:>7.0f} steady  {result['cpu_s_per_1k']:.3f} CPU s/1k  "
            f"{result['peak_rss_mb']:.0f} MB"
        )
        return result

    async def _watch(
        self, consumer: ConsumerProcess, url: str, count: int
    ) -> tuple[Sample, Sample, Sample, list[Sample]]:
        """Sample from the launch until the queue is empty: (baseline, first, last, every sample).

        ``first`` is the first sample showing consumption and ``last`` the empty queue: the rate window.
        When the whole queue drains between two samples (a fast consumer on a slow-answering emulator),
        ``first`` is the last sample that still showed it untouched, so the interval is never empty.
        ``baseline`` is that last untouched sample when there was one (else ``first``): CPU is counted from
        it, over every message.
        """
        first: Sample | None = None
        untouched: Sample | None = None
        samples: list[Sample] = []
        deadline = time.monotonic() + self.args.drain_timeout
        while True:
            remaining = await self.depth(url)
            now = time.perf_counter()
            cpu = consumer.sample()
            samples.append(Sample(now, remaining, cpu, None, None))
            if first is None and remaining >= count:
                untouched = Sample(now, remaining, cpu, *self.others_cpu())
            if (first is None and remaining < count) or remaining == 0:
                sample = Sample(now, remaining, cpu, *self.others_cpu())
                if first is None and remaining == 0 and untouched is not None:
                    first = untouched
                first = first or sample
                if remaining == 0:
                    return untouched or first, first, sample, samples
            if not consumer.alive():
                raise consumer.failure("exited while draining")
            if time.monotonic() > deadline:
                raise consumer.failure(f"{remaining} messages left after {self.args.drain_timeout} s")
            await anyio.sleep(SAMPLE_INTERVAL)

    async def latency(self, name: str) -> dict[str, Any]:
        """Handler start latency at a low steady rate of single SendMessage calls."""
        queue = await self.make_queue(f"{name}-latency")
        path = self.workdir / f"latency-{self.counter}-{name}.txt"
        path.write_text("")
        count, rate = self.args.latency_messages, self.args.latency_rate
        try:
            consumer = self.spawn(name, queue, "latency", extra={"BENCH_LATENCY_FILE": str(path)})
            try:
                await consumer.wait_ready()
                await anyio.sleep(1.0)  # every poller is in its long poll
                period = 1.0 / rate
                due = time.perf_counter()
                for i in range(count):
                    text = json.dumps({"t": time.time(), "i": i})
                    await self.client.send_message(QueueUrl=queue.url, MessageBody=text)
                    due += period
                    await anyio.sleep(max(0.0, due - time.perf_counter()))
                with anyio.move_on_after(30):
                    while len(path.read_text().splitlines()) < count:
                        if not consumer.alive():
                            raise consumer.failure("exited during the latency run")
                        await anyio.sleep(0.1)
            finally:
                await consumer.stop()
        finally:
            await self.delete_queue(queue)
        values = sorted(float(line.split()[0]) for line in path.read_text().splitlines() if line.strip())
        if len(values) < count:
            raise RuntimeError(f"{name}: {len(values)} of {count} latency samples")
        result = {
            "consumer": name,
            "messages": count,
            "rate_per_s": rate,
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2),
        }
        log(f"{name:>12} latency  p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms")
        return result


def crossing(samples: list[Sample], count: int, done: float) -> float | None:
    """The moment ``done`` of the ``count`` preloaded messages had been consumed, by linear interpolation
    between the two samples around it (None when no two samples bracket it)."""
    for before, after in pairwise(samples):
        a, b = count - before.remaining, count - after.remaining
        if a < done <= b:
            return before.at + (after.at - before.at) * (done - a) / (b - a)
    return None


def steady_rate(samples: list[Sample], count: int, low: float = 0.1, high: float = 0.9) -> float | None:
    """Messages/s between the moments ``low`` and ``high`` of the ``count`` messages were consumed, each found
    by linear interpolation between the two samples around it (None when the drain had too few samples)."""
    start, end = crossing(samples, count, low * count), crossing(samples, count, high * count)
    if start is None or end is None or end <= start:
        return None
    return (high - low) * count / (end - start)


def _rehost(url: str, endpoint: str) -> str:
    """``url`` with the scheme, host and port of ``endpoint`` (a queue URL pointed at the counting proxy)."""
    parts, target = urlsplit(url), urlsplit(endpoint)
    return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, parts.fragment))


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def body(i: int) -> str:
    """A JSON body of exactly BODY_BYTES bytes."""
    head = json.dumps({"i": i, "pad": ""})
    return json.dumps({"i": i, "pad": "x" * (BODY_BYTES - len(head))})
