"""What the peer consumers share (standard library only): the bench's handlers on a message's payload, the
settings the bench passes in ``BENCH_*`` variables, and the ``bodies`` mode that encodes payloads in a peer's
own wire format (so the bench preloads what the peer's producer would have sent)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

Handler = Callable[[str], None]


def setting(name: str, default: str | None = None) -> str:
    """A ``BENCH_*`` variable; a missing one without a default is an error naming it."""
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"{name} is not set")
    return value


def number(name: str, default: int) -> int:
    """An integer ``BENCH_*`` variable."""
    return int(setting(name, str(default)))


def queue_url() -> str:
    """The queue to consume."""
    return setting("BENCH_QUEUE_URL")


def queue_name() -> str:
    """The queue's name: the last segment of its URL."""
    return queue_url().rstrip("/").rsplit("/", 1)[-1]


def _noop(payload: str) -> None:
    """Nothing: the consumer's own cost per message is what is measured."""


def _sleep50(payload: str) -> None:
    """50 ms of waiting, as a blocking call does in a synchronous peer (the GIL is released meanwhile)."""
    time.sleep(0.05)


def _latency(path: str) -> Handler:
    """Appends ``<handler start - "t" of the payload> -`` per message, one write per line (processes and
    threads append to the same file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def latency(payload: str) -> None:
        started = time.time()
        sent = float(json.loads(payload)["t"])
        os.write(fd, f"{started - sent:.6f} -\n".encode())

    return latency


def handler() -> Handler:
    """The handler ``BENCH_HANDLER`` names: ``noop``, ``sleep50`` or ``latency``."""
    name = setting("BENCH_HANDLER", "noop")
    if name == "noop":
        return _noop
    if name == "sleep50":
        return _sleep50
    if name == "latency":
        return _latency(setting("BENCH_LATENCY_FILE"))
    raise SystemExit(f"unknown handler {name!r}")


def encode_stdin(encode: Callable[[list[str]], list[str]]) -> None:
    """The ``bodies`` mode: payloads in, one JSON string a line on stdin; SQS bodies out, the same way."""
    payloads = [json.loads(line) for line in sys.stdin if line.strip()]
    out = sys.stdout
    for body in encode(payloads):
        out.write(json.dumps(body) + "\n")
    out.flush()


def announce_ready() -> None:
    """The word the bench's ready check looks for on stdout."""
    print("ready", flush=True)
