"""The soak: a long steady flow through the worker with its RSS sampled every second, then many
concurrent slow handlers; run by ``python -m bench --soak``."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import anyio

from bench.common import log
from bench.measure import Bench
from bench.process import peak_rss_bytes, rss_bytes

#: The producer keeps the queue between these marks so the flow is steady and never runs dry.
HIGH_MARK = 8000
CHUNK = 2000


async def soak(bench: Bench) -> dict[str, Any]:
    """100,000 messages through the worker with RSS each second; then 1,000 concurrent 1 s handlers."""
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
    return {"flow": flow, "concurrent": concurrent}


async def steady_flow(bench: Bench, total: int) -> dict[str, Any]:
    """``total`` no-op messages, fed while the worker drains them; RSS sampled every second."""
    queue = await bench.make_queue("soak")
    sent = min(total, CHUNK * 2)
    samples: list[tuple[float, int, int]] = []  # (seconds, rss, messages still to process)
    try:
        await bench.preload(queue.url, sent)
        consumer = bench.spawn(bench.args.soak_worker, queue, "noop", extra={})
        try:
            await consumer.wait_ready()
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
