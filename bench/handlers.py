"""Handlers the benchmark runs in `worker run` (``WORKER_HANDLER=bench.handlers:<name>``).

The raw loop (``bench/raw_consumer.py``) and the Node consumer (``bench/sqs_consumer.mjs``) do exactly the
same work per message with the handlers they share (``noop``, ``sleep50``, ``latency``), so every figure
compares the consumers and not their handlers. ``sleep5`` and ``sleep500`` are the scaling curve's
(``bench/scaling.py``), ``sleep1`` and ``http`` the soak's (``bench/soak.py``): the worker's alone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import anyio

from worker import Message

if TYPE_CHECKING:
    import aiohttp

#: Where ``latency`` appends one line per message: ``<handler start - sent> <message id>`` in seconds.
LATENCY_FILE_ENV = "BENCH_LATENCY_FILE"
#: Where ``sleep1`` and ``http`` write ``{"peak_concurrent": n, "calls": n}`` when the process exits.
STATS_FILE_ENV = "BENCH_STATS_FILE"
#: The URL ``http`` GETs (the bench's own slow server on loopback).
HTTP_URL_ENV = "BENCH_HTTP_URL"


async def noop(message: Message) -> None:
    """Does nothing: the consumer's own cost per message is all that is measured."""


async def sleep5(message: Message) -> None:
    """An I/O-bound handler: 5 ms of waiting (a fast dependency: a cache, a database on the same network)."""
    await anyio.sleep(0.005)


async def sleep50(message: Message) -> None:
    """An I/O-bound handler: 50 ms of waiting (a call to a slow dependency)."""
    await anyio.sleep(0.05)


async def sleep500(message: Message) -> None:
    """An I/O-bound handler: 500 ms of waiting (a slow third-party API)."""
    await anyio.sleep(0.5)


_latency_file: TextIO | None = None


def _latency_out() -> TextIO:
    global _latency_file  # noqa: PLW0603 - one file per process, opened on first use
    if _latency_file is None:
        _latency_file = open(os.environ[LATENCY_FILE_ENV], "a", encoding="utf-8")  # noqa: SIM115
    return _latency_file


async def latency(message: Message) -> None:
    """Records handler start minus the send time the producer wrote into the body (``"t"``, unix s)."""
    started = time.time()
    sent = float(json.loads(message.body)["t"])
    out = _latency_out()
    out.write(f"{started - sent:.6f} {message.id}\n")
    out.flush()


_running = 0
_stats = {"peak_concurrent": 0, "calls": 0}


def _write_stats() -> None:
    path = os.environ.get(STATS_FILE_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(_stats, fh)


atexit.register(_write_stats)


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    """Counts the calls and how many run at once (written to BENCH_STATS_FILE at exit)."""
    global _running  # noqa: PLW0603 - one counter per process is the point
    _running += 1
    _stats["calls"] += 1
    _stats["peak_concurrent"] = max(_stats["peak_concurrent"], _running)
    try:
        yield
    finally:
        _running -= 1


async def sleep1(message: Message) -> None:
    """One second of waiting; counts how many run at once (the soak's 1,000-concurrent check)."""
    with _counted():
        await anyio.sleep(1.0)


_session: aiohttp.ClientSession | None = None


def _http_session() -> aiohttp.ClientSession:
    """One client session (one pool of kept-alive connections) shared by the calls in flight, as a real
    handler keeps it; made on first use, inside the loop.

    No cap on its connections (aiohttp's default is 100), so every handler holds its own request: the soak
    wants 1,000 calls in flight at once, not 100 and a queue of waiters."""
    global _session  # noqa: PLW0603 - one session per process, opened on first use
    if _session is None:
        import aiohttp

        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return _session


async def http(message: Message) -> None:
    """A GET to BENCH_HTTP_URL, the whole response read (a call to a slow HTTP dependency); counts how many
    run at once, like ``sleep1``. A status other than 200 fails the message.

    The last call in flight closes the session (the next call opens another): the handler API has no
    shutdown hook, and a session still open at exit makes aiohttp log every pooled connection."""
    global _session  # noqa: PLW0603 - see _http_session
    with _counted():
        session = _http_session()
        try:
            async with session.get(os.environ[HTTP_URL_ENV]) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the bench's HTTP server answered {response.status}")
        finally:
            if _running == 1 and _session is session:
                _session = None
                with anyio.CancelScope(shield=True):
                    await session.close()
