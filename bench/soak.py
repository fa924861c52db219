"""The soak: a long steady flow through the worker with its RSS sampled every second, then many
concurrent slow handlers, then as many concurrent HTTP-calling handlers on the largest bodies SQS takes (the
memory run); run by ``python -m bench --soak``."""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from bench.common import log
from bench.consumers import ConsumerProcess
from bench.measure import Bench
from bench.process import peak_rss_bytes, rss_bytes

#: The producer keeps the queue between these marks so the flow is steady and never runs dry.
HIGH_MARK = 8000
CHUNK = 2000

#: What the worker logs once its start-up's last step, the IAM permission check, is done (JSON logs:
#: ``permission_check_passed``, ``permission_check_skipped`` or ``permission_missing``).
START_UP_EVENT = '"event": "permission_'
#: How long the soak waits for it: the check waits for a first empty receive (the bench's 5 s long poll).
START_UP_LIMIT_SECONDS = 30.0

#: Body of the memory run: SQS takes at most 262,144 bytes of body and message attributes together; the
#: bench sends no attributes, so this is just under the limit.
LARGE_BODY_BYTES = 262_000
#: How long the bench's HTTP server takes to answer each call of the ``http`` handler: long enough for the
#: worker to receive a whole wave of large messages (100 receives of 2.6 MB) while the first are still
#: waiting, so every handler slot is taken at once.
HTTP_DELAY_SECONDS = 3.0
#: Messages of the memory run per handler slot: two waves.
LARGE_WAVES = 2
#: Concurrent SendMessage calls of its preload (a SendMessageBatch may not exceed 256 KiB in all).
LARGE_SENDERS = 16


async def soak(bench: Bench) -> dict[str, Any]:
    """100,000 messages through the worker with RSS each second; then 1,000 concurrent 1 s handlers; then
    1,000 concurrent HTTP calls on bodies of 256 KiB."""
    flow = await steady_flow(bench, bench.args.soak_messages)
    log(
        f"soak flow: {flow['messages']} messages in {flow['seconds']:.0f} s, RSS "
        f"{flow['rss_after_warmup_mb']} -> {flow['rss_end_mb']} MB ({flow['growth_pct']:+.1f} %), "
        f"slope {flow['slope_mb_per_min']:+.2f} MB/min"
    )
    concurrent = await concurrent_handlers(bench, bench.args.soak_concurrent)
    log(
        f"soak concurrent: peak {concurrent['peak_concurrent_handlers']} handlers at once, "
        f"peak RSS {concurrent['peak_rss_mb']} MB"
    )
    memory = await large_bodies(bench, bench.args.soak_concurrent)
    log(
        f"soak memory: {memory['peak_concurrent_handlers']} HTTP calls at once on "
        f"{memory['body_bytes']}-byte bodies, peak RSS {memory['peak_rss_mb']} MB "
        f"({memory['rss_at_ready_mb']} MB at ready, "
        f"{memory['in_flight_bodies_mb']} MB of bodies in flight)"
    )
    return {"flow": flow, "concurrent": concurrent, "memory": memory}


async def start_up_done(consumer: ConsumerProcess, limit: float = START_UP_LIMIT_SECONDS) -> bool:
    """Whether the worker logged its permission check's outcome within ``limit`` seconds."""
    with anyio.move_on_after(limit):
        while START_UP_EVENT not in consumer.stderr_path.read_text(errors="replace"):
            if not consumer.alive():
                raise consumer.failure("exited before its permission check")
            await anyio.sleep(0.1)
        return True
    log(f"{consumer.name} logged no permission check within {limit:g} s: the flow starts anyway")
    return False


async def steady_flow(bench: Bench, total: int) -> dict[str, Any]:
    """``total`` no-op messages, fed while the worker drains them; RSS sampled every second.

    The worker starts on the empty queue and the flow once its permission check has run: that check waits
    for a first empty receive (or a minute of backlog) and then loads the STS and IAM models, about 20 MB
    once; started on a backlog, the worker takes that step a minute into the flow, where the RSS trend
    would read it as a slope."""
    queue = await bench.make_queue("soak")
    sent = min(total, CHUNK * 2)
    samples: list[tuple[float, int, int]] = []  # (seconds, rss, messages still to process)
    try:
        consumer = bench.spawn(bench.args.soak_worker, queue, "noop", extra={})
        try:
            await consumer.wait_ready()
            settled = await start_up_done(consumer)
            await bench.preload(queue.url, sent)
            started = time.perf_counter()

            async def produce() -> None:
                nonlocal sent
                while sent < total:
                    if await bench.depth(queue.url) > HIGH_MARK:
                        await anyio.sleep(0.2)
                        continue
                    chunk = min(CHUNK, total - sent)
                    await bench.preload(queue.url, chunk, senders=4)
                    sent += chunk

            async def sample() -> None:
                while True:
                    remaining = total - sent + await bench.depth(queue.url)
                    samples.append((time.perf_counter() - started, rss_bytes(consumer.pid), remaining))
                    if remaining == 0:
                        return
                    if not consumer.alive():
                        raise consumer.failure("exited during the soak")
                    await anyio.sleep(1.0)

            with anyio.fail_after(bench.args.drain_timeout * 10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(produce)
                    tg.start_soon(sample)
            peak = peak_rss_bytes(consumer.pid, max(s[1] for s in samples))
            metrics = consumer.metrics()
        finally:
            await consumer.stop()
    finally:
        await bench.delete_queue(queue)
    trend = rss_trend(samples, total, peak)
    trend["start_up_done_before_flow"] = settled
    trend["received"] = int(
        sum(v for k, v in metrics.items() if k.startswith("worker_messages_received_total"))
    )
    return trend


async def concurrent_handlers(bench: Bench, concurrency: int) -> dict[str, Any]:
    """Worker concurrency ``concurrency`` on 1-second handlers: how many ran at once, and the peak RSS."""
    queue = await bench.make_queue("soak-concurrent")
    stats = bench.workdir / "soak-concurrent-stats.json"
    count = concurrency * 5
    try:
        await bench.preload(queue.url, count)
        consumer = bench.spawn(
            bench.args.soak_worker,
            queue,
            "sleep1",
            concurrency=concurrency,
            extra={"BENCH_STATS_FILE": str(stats)},
        )
        try:
            await consumer.wait_ready()
            started = time.perf_counter()
            with anyio.fail_after(bench.args.drain_timeout * 2):
                while await bench.depth(queue.url) > 0:
                    consumer.sample()
                    await anyio.sleep(0.5)
            seconds = time.perf_counter() - started
            peak = peak_rss_bytes(consumer.pid, consumer.peak_rss_sampled)
        finally:
            await consumer.stop()  # the handler module writes its counts at exit
    finally:
        await bench.delete_queue(queue)
    handler_stats = json.loads(stats.read_text()) if stats.exists() else {}
    reached = int(handler_stats.get("peak_concurrent", 0))
    return {
        "concurrency": concurrency,
        "messages": count,
        "seconds": round(seconds, 1),
        "peak_concurrent_handlers": reached,
        "peak_rss_mb": round(peak / 2**20, 1),
        "target_rss_mb": 300,
        "met": bool(peak < 300 * 2**20 and reached >= concurrency),
    }


def large_body(i: int, size: int = LARGE_BODY_BYTES) -> str:
    """A JSON body of exactly ``size`` bytes."""
    head = json.dumps({"i": i, "pad": ""})
    return json.dumps({"i": i, "pad": "x" * (size - len(head))})


@dataclass
class SlowServer:
    """The bench's HTTP dependency: its URL once started, and what it saw."""

    delay: float
    url: str = ""
    running: int = 0
    peak_concurrent: int = 0
    requests: int = 0


@contextlib.asynccontextmanager
async def slow_server(delay: float) -> AsyncIterator[SlowServer]:
    """An aiohttp server in this process, on an ephemeral loopback port, answering every GET after ``delay``
    seconds and counting how many calls it holds at once."""
    from aiohttp import web

    server = SlowServer(delay)

    async def answer(request: web.Request) -> web.Response:
        server.requests += 1
        server.running += 1
        server.peak_concurrent = max(server.peak_concurrent, server.running)
        try:
            await anyio.sleep(delay)
        finally:
            server.running -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # A backlog for 1,000 connections opened at once (the kernel caps it at net.core.somaxconn).
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}/"
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def raise_open_files(needed: int) -> None:
    """Lift this process's soft limit of open files towards ``needed`` (the hard limit caps it): the worker
    it spawns inherits it, and both ends of 1,000 connections need a descriptor each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def send_large(bench: Bench, url: str, count: int, size: int = LARGE_BODY_BYTES) -> float:
    """``count`` messages of ``size`` bytes, one SendMessage each from several senders (a batch of ten would
    exceed the 256 KiB a SendMessageBatch may carry in all); msg/s."""
    started = time.perf_counter()
    position = 0

    async def sender() -> None:
        nonlocal position
        while position < count:
            i = position
            position += 1
            await bench.client.send_message(QueueUrl=url, MessageBody=large_body(i, size))

    async with anyio.create_task_group() as tg:
        for _ in range(LARGE_SENDERS):
            tg.start_soon(sender)
    return count / (time.perf_counter() - started)


async def large_bodies(bench: Bench, concurrency: int, delay: float = HTTP_DELAY_SECONDS) -> dict[str, Any]:
    """Worker concurrency ``concurrency`` on the ``http`` handler, every message a body of 256 KiB and every
    call answered after ``delay`` s by the bench's own server: how many ran at once, and the peak RSS."""
    queue = await bench.make_queue("soak-memory")
    stats = bench.workdir / "soak-memory-stats.json"
    count = concurrency * LARGE_WAVES
    raise_open_files(4 * concurrency + 1024)
    try:
        async with slow_server(delay) as server:
            preload_rate = await send_large(bench, queue.url, count)
            consumer = bench.spawn(
                bench.args.soak_worker,
                queue,
                "http",
                concurrency=concurrency,
                extra={"BENCH_STATS_FILE": str(stats), "BENCH_HTTP_URL": server.url},
            )
            try:
                await consumer.wait_ready()
                at_ready = rss_bytes(consumer.pid)
                started = time.perf_counter()
                with anyio.fail_after(bench.args.drain_timeout * 2):
                    while await bench.depth(queue.url) > 0:
                        consumer.sample()
                        if not consumer.alive():
                            raise consumer.failure("exited during the memory run")
                        await anyio.sleep(0.2)
                seconds = time.perf_counter() - started
                peak = peak_rss_bytes(consumer.pid, consumer.peak_rss_sampled)
                metrics = consumer.metrics()
            finally:
                await consumer.stop()  # the handler module writes its counts at exit
    finally:
        await bench.delete_queue(queue)
    handler_stats = json.loads(stats.read_text()) if stats.exists() else {}
    return large_bodies_summary(
        concurrency=concurrency,
        count=count,
        seconds=seconds,
        peak=peak,
        at_ready=at_ready,
        handler_stats=handler_stats,
        server=server,
        succeeded=int(
            sum(
                v
                for k, v in metrics.items()
                if k.startswith("worker_messages_processed_total") and 'outcome="succeeded"' in k
            )
        ),
        preload_rate=preload_rate,
    )


def large_bodies_summary(
    *,
    concurrency: int,
    count: int,
    seconds: float,
    peak: int,
    at_ready: int,
    handler_stats: dict[str, Any],
    server: SlowServer,
    succeeded: int,
    preload_rate: float,
) -> dict[str, Any]:
    """The memory run's figures: the peak RSS against what the bodies in flight take by themselves."""
    reached = int(handler_stats.get("peak_concurrent", 0))
    bodies = reached * LARGE_BODY_BYTES
    return {
        "concurrency": concurrency,
        "messages": count,
        "body_bytes": LARGE_BODY_BYTES,
        "http_delay_s": server.delay,
        "seconds": round(seconds, 1),
        "peak_concurrent_handlers": reached,
        "peak_concurrent_http_calls": server.peak_concurrent,
        "http_calls": server.requests,
        "handler_calls": int(handler_stats.get("calls", 0)),
        "succeeded": succeeded,
        "rss_at_ready_mb": round(at_ready / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        # The bodies of the handlers running at the peak, as bytes: the least any consumer needs for them.
        "in_flight_bodies_mb": round(bodies / 2**20, 1),
        # RSS above the ready worker per handler at the peak (the body, its parsed response, the call).
        "rss_per_in_flight_kib": round((peak - at_ready) / reached / 1024, 1) if reached else None,
        "preload_msgs_per_s": round(preload_rate, 1),
        "met": bool(reached >= concurrency and succeeded >= count),
    }


def rss_trend(samples: list[tuple[float, int, int]], total: int, peak: int) -> dict[str, Any]:
    """Growth after warm-up (the first 20 % of the messages) and the least-squares slope after it."""
    warm = [s for s in samples if s[2] <= total * 0.8] or samples
    t0 = warm[0][0]
    xs = [s[0] - t0 for s in warm]
    ys = [s[1] / 2**20 for s in warm]
    tenth = max(3, len(ys) // 10)
    base = statistics.median(ys[:tenth])
    end = statistics.median(ys[-tenth:])
    slope = 0.0  # MB per second
    if len(xs) > 2 and max(xs) > 0:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    span = xs[-1] - xs[0] if len(xs) > 1 else 0.0
    growth = (end - base) / base * 100
    return {
        "messages": total,
        "seconds": round(samples[-1][0], 1),
        "samples": len(samples),
        "rss_after_warmup_mb": round(base, 1),
        "rss_end_mb": round(end, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "growth_pct": round(growth, 2),
        "slope_mb_per_min": round(slope * 60, 3),
        "slope_growth_pct_over_run": round(slope * span / base * 100, 2),
        # "no slope": the fitted line does not rise by 10 % over the run either.
        "met": bool(growth < 10 and slope * span < 0.1 * base),
        "rss_series_mb": [round(s[1] / 2**20, 1) for s in samples],
    }
