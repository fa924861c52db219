"""Handlers the benchmark runs in `worker run` (``WORKER_HANDLER=bench.handlers:<name>``).

The raw loop (``bench/raw_consumer.py``) and the Node consumer (``bench/sqs_consumer.mjs``) do exactly the
same work per message, so every figure compares the consumers and not their handlers.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import TextIO

import anyio

from worker import Message

#: Where ``latency`` appends one line per message: ``<handler start - sent> <message id>`` in seconds.
LATENCY_FILE_ENV = "BENCH_LATENCY_FILE"
#: Where ``sleep1`` writes ``{"peak_concurrent": n, "calls": n}`` when the process exits.
STATS_FILE_ENV = "BENCH_STATS_FILE"


async def noop(message: Message) -> None:
    """Does nothing: the consumer's own cost per message is all that is measured."""


async def sleep50(message: Message) -> None:
    """An I/O-bound handler: 50 ms of waiting (a call to a slow dependency)."""
    await anyio.sleep(0.05)


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


async def sleep1(message: Message) -> None:
    """One second of waiting; counts how many run at once (the soak's 1,000-concurrent check)."""
    global _running  # noqa: PLW0603 - one counter per process is the point
    _running += 1
    _stats["calls"] += 1
    _stats["peak_concurrent"] = max(_stats["peak_concurrent"], _running)
    try:
        await anyio.sleep(1.0)
    finally:
        _running -= 1
