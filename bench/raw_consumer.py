"""The baseline: the minimal aiobotocore loop a user would write by hand (run as a subprocess).

Each of P pollers: ReceiveMessage (10, the same attributes and visibility as the worker asks for) ->
the handler on every message at once -> DeleteMessageBatch -> again. No retries, no DLQ, no leases, no
metrics: the ceiling a consumer can reach. Configured by the environment (``BENCH_*``, ``AWS_*``); prints
``ready`` once its client is open and, on SIGTERM, one JSON line with the number of messages it deleted.

Two variants give the loop what the worker has, and more: ``BENCH_RAW_USER_AGENT_CACHE=1`` installs the
worker's cached User-Agent on the client (``worker.aws.useragent``, as ``worker.aws.client`` does), and
``BENCH_RAW_PIPELINED=1`` makes each poller receive its next batch while the previous batch's
DeleteMessageBatch is in flight (at most one delete in flight per poller).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

Handler = Callable[[dict[str, Any]], Awaitable[None]] | None


def _latency_handler(path: str) -> Handler:
    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    async def latency(entry: dict[str, Any]) -> None:
        started = time.time()
        sent = float(json.loads(entry["Body"])["t"])
        out.write(f"{started - sent:.6f} {entry['MessageId']}\n")
        out.flush()

    return latency


def _sleep(seconds: float) -> Handler:
    async def sleep(entry: dict[str, Any]) -> None:
        await asyncio.sleep(seconds)

    return sleep


#: The I/O handlers of bench/handlers.py, by name: the same waits.
SLEEPS = {"sleep5": _sleep(0.005), "sleep50": _sleep(0.05), "sleep500": _sleep(0.5)}


def handler_named(name: str) -> Handler:
    """``noop`` (nothing is called), ``sleep5``, ``sleep50``, ``sleep500`` or ``latency``."""
    if name == "noop":
        return None
    if name in SLEEPS:
        return SLEEPS[name]
    if name == "latency":
        return _latency_handler(os.environ["BENCH_LATENCY_FILE"])
    raise SystemExit(f"unknown handler {name!r}")


async def receive_handled(
    client: Any, url: str, wait: int, visibility: int, handler: Handler
) -> list[dict[str, Any]]:
    """One ReceiveMessage (10, every attribute) and the handler on every message it brought, at once."""
    response = await client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        VisibilityTimeout=visibility,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    entries: list[dict[str, Any]] = response.get("Messages", [])
    if entries and handler is not None:
        await asyncio.gather(*(handler(entry) for entry in entries))
    return entries


async def delete_batch(client: Any, url: str, entries: list[dict[str, Any]], done: list[int]) -> None:
    """One DeleteMessageBatch of ``entries``; counted in ``done`` once it answered."""
    await client.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(i), "ReceiptHandle": e["ReceiptHandle"]} for i, e in enumerate(entries)],
    )
    done[0] += len(entries)


async def poller(
    client: Any, url: str, wait: int, visibility: int, handler: Handler, done: list[int]
) -> None:
    """Receive, handle, delete, until cancelled."""
    while True:
        entries = await receive_handled(client, url, wait, visibility, handler)
        if entries:
            await delete_batch(client, url, entries, done)


async def pipelined_poller(
    client: Any, url: str, wait: int, visibility: int, handler: Handler, done: list[int]
) -> None:
    """Receive, handle, start the delete and receive again while it is in flight, until cancelled."""
    deleting: asyncio.Future[None] | None = None
    try:
        while True:
            entries = await receive_handled(client, url, wait, visibility, handler)
            if not entries:
                continue
            if deleting is not None:
                await deleting
            deleting = asyncio.ensure_future(delete_batch(client, url, entries, done))
    finally:
        if deleting is not None and not deleting.done():
            deleting.cancel()
            await asyncio.gather(deleting, return_exceptions=True)


async def main() -> None:
    """Run P pollers until SIGTERM."""
    url = os.environ["BENCH_QUEUE_URL"]
    pollers = int(os.environ.get("BENCH_POLLERS", "2"))
    wait = int(os.environ.get("BENCH_WAIT_SECONDS", "5"))
    visibility = int(os.environ.get("BENCH_VISIBILITY_SECONDS", "60"))
    handler = handler_named(os.environ.get("BENCH_HANDLER", "noop"))
    cache_user_agent = os.environ.get("BENCH_RAW_USER_AGENT_CACHE") == "1"
    loop = pipelined_poller if os.environ.get("BENCH_RAW_PIPELINED") == "1" else poller
    config = AioConfig(max_pool_connections=max(10, pollers * 2), read_timeout=wait + 15)
    done = [0]
    async with get_session().create_client("sqs", config=config) as client:
        if cache_user_agent:
            from worker.aws.useragent import cache_user_agent as install

            if not install(client):
                raise SystemExit("the worker's User-Agent cache does not fit this botocore")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [
            asyncio.ensure_future(loop(client, url, wait, visibility, handler, done)) for _ in range(pollers)
        ]
        print("ready", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"deleted": done[0]}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
