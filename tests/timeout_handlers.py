"""Handlers of the timeout, backoff and prefetch tests: they record what ran, when, and what never ran.

Everything is recorded per body ``key`` in module-level lists of this process (in-process workers only).
Times are ``time.monotonic()``, the clock the tests read too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio

from worker import Message


@dataclass(frozen=True)
class Event:
    """One thing a handler did: ``what`` happened to ``key`` on its ``receive_count``-th receive at ``at``."""

    what: str
    key: str
    receive_count: int
    at: float
    message_id: str = ""


#: Every event of every handler below, in the order they happened.
EVENTS: list[Event] = []
_lock = threading.Lock()  # the sync handler appends from worker threads


@dataclass
class Running:
    """Handler runs in progress (``now``) and the most seen at once (``most``)."""

    now: int = 0
    most: int = 0


#: The runs of ``paced``.
PACED = Running()


def record(what: str, message: Message) -> None:
    """Append one event for ``message`` (thread-safe)."""
    key = str(message.json().get("key", message.id))
    with _lock:
        EVENTS.append(Event(what, key, message.receive_count, time.monotonic(), message.id))


def events(key: str, what: str | None = None) -> list[Event]:
    """The events of ``key`` (only those named ``what`` when given), in order."""
    with _lock:
        return [e for e in EVENTS if e.key == key and (what is None or e.what == what)]


async def cancellable(message: Message) -> Any:
    """Sleeps ``sleep`` s; records "start", then "after" if the sleep ends, "cancelled" if it is cancelled."""
    record("start", message)
    try:
        await anyio.sleep(float(message.json()["sleep"]))
    except anyio.get_cancelled_exc_class():
        record("cancelled", message)
        raise
    record("after", message)
    return {"slept": True}


def blocking(message: Message) -> Any:
    """A plain def: on receives up to ``block_until``, blocks its thread ``sleep`` s, then records "after".

    Later receives return at once ("done"), so a message whose blocked thread was abandoned can succeed.
    """
    doc = message.json()
    record("start", message)
    if message.receive_count <= int(doc.get("block_until", 0)):
        time.sleep(float(doc["sleep"]))
        record("after", message)
        return {"blocked": True}
    record("done", message)
    return {"blocked": False}


#: Gates of ``gated``, by body ``key``: its first run blocks its thread until the test sets the gate.
GATES: dict[str, threading.Event] = {}
#: The longest a gated thread waits for its gate, so a failed test cannot leave it blocked for good.
GATE_TIMEOUT = 60.0


def gate(key: str) -> threading.Event:
    """The gate of ``key``'s first run (created on first use); set it to let that thread return."""
    with _lock:
        return GATES.setdefault(key, threading.Event())


def gated(message: Message) -> Any:
    """A plain def: with ``hold`` in its body, its first receive blocks on ``gate(key)``, records "after".

    Other messages and later receives return at once ("done"), so a message whose blocked thread was
    abandoned can succeed.
    """
    record("start", message)
    doc = message.json()
    if doc.get("hold") and message.receive_count == 1:
        gate(str(doc["key"])).wait(GATE_TIMEOUT)
        record("after", message)
        return {"blocked": True}
    record("done", message)
    return {"blocked": False}


async def always_fails(message: Message) -> Any:
    """Records "start" and raises: every invocation is a transient failure."""
    record("start", message)
    raise RuntimeError("always fails")


async def paced(message: Message) -> Any:
    """Counts itself in PACED while it sleeps ``sleep`` s, then records "done"."""
    record("start", message)
    PACED.now += 1
    PACED.most = max(PACED.most, PACED.now)
    try:
        await anyio.sleep(float(message.json()["sleep"]))
    finally:
        PACED.now -= 1
    record("done", message)
    return {"ok": True}
