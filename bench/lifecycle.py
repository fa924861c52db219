"""The figures around the drains: launch -> first message handled, SIGTERM -> exit when idle and when busy
(and what the consumer leaves in flight), and SQS requests per 1,000 messages and per idle hour through the
counting proxy. Each takes a fresh queue and a fresh consumer process."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import anyio

from bench.common import log
from bench.consumers import ConsumerProcess
from bench.countproxy import CountingProxy
from bench.measure import SAMPLE_INTERVAL, Bench, Queue, body

#: Messages waiting when the consumer starts (one full receive).
FIRST_MESSAGES = 10
#: Messages sent right after the SIGTERM, into the long polls still open while the consumer leaves.
SHUTDOWN_SENDS = 10
#: A consumer still running this long after SIGTERM is killed and its stop reported as this limit.
STOP_LIMIT = 60.0
#: The busy stop: the share of the 50 ms drain's messages consumed before the SIGTERM.
BUSY_AFTER = 0.25


async def _until(condition: Any, limit: float, what: str, consumer: ConsumerProcess) -> None:
    """Poll the async ``condition`` every sample interval until true; an error past ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await condition():
        if not consumer.alive():
            raise consumer.failure(f"exited before {what}")
        if time.monotonic() > deadline:
            raise consumer.failure(f"no {what} within {limit:g} s")
        await anyio.sleep(SAMPLE_INTERVAL)


#: A queue that reads empty is read again this much later before it counts as drained. LocalStack takes a
#: receive's messages off the visible queue one at a time and counts them in flight only once it has them all,
#: so a GetQueueAttributes in between reads 0 while the last messages are being received, not yet deleted.
EMPTY_CONFIRM_SECONDS = 0.25


async def queue_drained(bench: Bench, url: str) -> bool:
    """Whether the queue is empty: it reads 0 (visible, in flight and delayed), and 0 again
    ``EMPTY_CONFIRM_SECONDS`` later."""
    if await bench.depth(url) != 0:
        return False
    await anyio.sleep(EMPTY_CONFIRM_SECONDS)
    return await bench.depth(url) == 0


async def _terminate(consumer: ConsumerProcess) -> float:
    """SIGTERM, and the seconds until the process exited (STOP_LIMIT, then SIGKILL, if it did not)."""
    started = time.perf_counter()
    consumer.proc.send_signal(signal.SIGTERM)
    return await _wait_exit(consumer, started)


async def _wait_exit(consumer: ConsumerProcess, started: float) -> float:
    try:
        await anyio.to_thread.run_sync(consumer.proc.wait, STOP_LIMIT)
    except subprocess.TimeoutExpired:
        consumer.proc.kill()
        await anyio.to_thread.run_sync(consumer.proc.wait)
        return STOP_LIMIT
    return time.perf_counter() - started


async def _stranded(bench: Bench, queue: Queue) -> dict[str, Any]:
    """Messages in flight right after the exit (received, neither deleted nor handed back), and the seconds
    until none is (None: still some after ``--stranded-seconds``, e.g. held until a 60 s visibility timeout
    ends)."""
    from worker.aws.queues import queue_depth

    started = time.perf_counter()
    in_flight = (await queue_depth(bench.client, queue.url))["in_flight"]
    left = in_flight
    while left and time.perf_counter() - started < bench.args.stranded_seconds:
        await anyio.sleep(0.1)
        left = (await queue_depth(bench.client, queue.url))["in_flight"]
    return {
        "in_flight_at_exit": in_flight,
        "visible_again_s": round(time.perf_counter() - started, 2) if not left else None,
    }


async def start_and_idle_stop(bench: Bench, name: str) -> dict[str, Any]:
    """Launch -> first message handled (10 messages waiting), then SIGTERM after ``--idle-before-stop``
    seconds on the empty queue (every poller in a long poll by then), with SHUTDOWN_SENDS messages sent just
    after it: seconds to exit, and what it left in flight."""
    queue = await bench.make_queue(f"{name}-life")
    path = bench.workdir / f"life-{bench.counter}-{name}.txt"
    path.write_text("")
    try:
        # "t": 0 makes the latency handler write the absolute time the handler started.
        payloads = [json.dumps({"t": 0, "i": i}) for i in range(FIRST_MESSAGES + SHUTDOWN_SENDS)]
        bodies = await bench.bodies(name, payloads, queue)
        await bench.send_bodies(queue.url, bodies[:FIRST_MESSAGES])
        launched = time.time()
        consumer = bench.spawn(name, queue, "latency", extra={"BENCH_LATENCY_FILE": str(path)})
        try:

            async def all_handled() -> bool:
                return len(path.read_text().splitlines()) >= FIRST_MESSAGES

            await _until(all_handled, 120, f"{FIRST_MESSAGES} messages handled", consumer)

            await _until(lambda: queue_drained(bench, queue.url), 60, "empty queue", consumer)
            await anyio.sleep(bench.args.idle_before_stop)
            started = time.perf_counter()
            consumer.proc.send_signal(signal.SIGTERM)
            await bench.send_bodies(queue.url, bodies[FIRST_MESSAGES:])
            stop = await _wait_exit(consumer, started)
        finally:
            if consumer.alive():
                consumer.proc.kill()
                consumer.proc.wait()
        stranded = await _stranded(bench, queue)
    finally:
        await bench.delete_queue(queue)
    first = min(float(line.split()[0]) for line in path.read_text().splitlines() if line.strip())
    result = {
        "consumer": name,
        "config": consumer.config,
        "launch_to_first_handled_s": round(first - launched, 3),
        "idle_stop_s": round(stop, 3),
        **{f"idle_{k}": v for k, v in stranded.items()},
    }
    log(
        f"{name:>18} start    first handled {result['launch_to_first_handled_s']:.2f} s after launch; "
        f"idle SIGTERM -> exit {stop:.2f} s, {stranded['in_flight_at_exit']} left in flight"
    )
    return result


async def busy_stop(bench: Bench, name: str) -> dict[str, Any]:
    """SIGTERM while the 50 ms handler runs at the shared total concurrency (after BUSY_AFTER of the 50 ms
    drain's ``--io-messages`` were consumed): seconds to exit, and what it left in flight."""
    count = bench.args.io_messages
    queue = await bench.make_queue(f"{name}-busy")
    try:
        bodies = await bench.bodies(name, [body(i) for i in range(count)], queue)
        await bench.preload(queue.url, count, bodies=bodies)
        consumer = bench.spawn(name, queue, "sleep50", io_concurrency=bench.args.io_concurrency, extra={})
        try:
            mark = count * (1 - BUSY_AFTER)

            async def busy() -> bool:
                from worker.aws.queues import queue_depth

                depth = await queue_depth(bench.client, queue.url)
                return bool(depth["visible"] + depth["in_flight"] <= mark)

            await _until(busy, 120, f"{BUSY_AFTER:.0%} consumed", consumer)
            stop = await _terminate(consumer)
        finally:
            if consumer.alive():
                consumer.proc.kill()
                consumer.proc.wait()
        stranded = await _stranded(bench, queue)
    finally:
        await bench.delete_queue(queue)
    result = {
        "consumer": name,
        "config": consumer.config,
        "busy_stop_s": round(stop, 3),
        **{f"busy_{k}": v for k, v in stranded.items()},
    }
    log(
        f"{name:>18} busy     SIGTERM -> exit {stop:.2f} s, {stranded['in_flight_at_exit']} left in flight, "
        f"visible again after {stranded['visible_again_s']} s"
    )
    return result


#: After the drain, the idle window starts this much later: one-off requests (a start-up check run once the
#: queue is quiet, the pollers shrinking) are not extrapolated to an hour.
IDLE_SETTLE_SECONDS = 10.0


async def requests(bench: Bench, name: str, endpoint: str, count: int, idle_seconds: float) -> dict[str, Any]:
    """SQS requests by action while consumer ``name`` drains ``count`` no-op messages through the counting
    proxy, then, ``IDLE_SETTLE_SECONDS`` later, while it sits idle for ``idle_seconds`` (per 1,000 messages
    and per idle hour)."""
    proxy = CountingProxy(endpoint)
    queue = await bench.make_queue(f"{name}-req")
    try:
        bodies = await bench.bodies(name, [body(i) for i in range(count)], queue)
        await bench.preload(queue.url, count, bodies=bodies)
        async with anyio.create_task_group() as tg:
            port = await tg.start(proxy.serve)
            consumer = bench.spawn(
                name, queue, "noop", extra={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
            )
            try:
                await _until(
                    lambda: queue_drained(bench, queue.url), bench.args.drain_timeout, "empty queue", consumer
                )
                drained = proxy.snapshot()
                await anyio.sleep(min(IDLE_SETTLE_SECONDS, idle_seconds))
                settled = proxy.snapshot()
                await anyio.sleep(idle_seconds)
                idle = proxy.snapshot() - settled
            finally:
                await consumer.stop()
                tg.cancel_scope.cancel()
    finally:
        await bench.delete_queue(queue)
    per_1k = {k: round(v / count * 1000, 1) for k, v in sorted(drained.items())}
    result = {
        "consumer": name,
        "config": consumer.config,
        "messages": count,
        "requests_per_1k": round(sum(drained.values()) / count * 1000, 1),
        "by_action_per_1k": per_1k,
        "idle_seconds": idle_seconds,
        "idle_settle_seconds": min(IDLE_SETTLE_SECONDS, idle_seconds),
        "idle_requests_per_hour": round(sum(idle.values()) / idle_seconds * 3600),
        "idle_by_action": dict(sorted(Counter(idle).items())),
    }
    log(
        f"{name:>18} requests {result['requests_per_1k']:.0f} per 1k messages "
        f"({', '.join(f'{k} {v:g}' for k, v in per_1k.items())}); "
        f"idle {result['idle_requests_per_hour']:,} per hour"
    )
    return result
