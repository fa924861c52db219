"""Handlers used by the tests: scripted by the message body, journaled to a file when asked."""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import anyio
from pydantic import BaseModel

from worker import Message, PermanentError, RetryLater

#: CALLS and LOG grow by one entry per invocation (~150 B): a long run (the soak) turns them off with
#: TEST_RECORD_CALLS=0, or they would be the leak it measures. ``fail_times`` needs them.
RECORDING = os.environ.get("TEST_RECORD_CALLS", "1") != "0"
#: Invocations per body key, in this process.
CALLS: collections.Counter[str] = collections.Counter()
#: (key, receive_count, monotonic time) of every invocation, in this process.
LOG: list[tuple[str, int, float]] = []


def _journal(event: str, key: str) -> None:
    path = os.environ.get("TEST_JOURNAL")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{event} {key}\n")


async def scripted(message: Message) -> Any:
    """Does what the body says: ok, fail, fail_until, fail_times, permanent, retry_later, sleep."""
    doc = message.json()
    key = str(doc.get("key", message.id))
    if RECORDING:
        CALLS[key] += 1
        LOG.append((key, message.receive_count, time.monotonic()))
    _journal("start", key)
    do = doc.get("do", "ok")
    if doc.get("sleep"):
        await anyio.sleep(float(doc["sleep"]))
    if do == "fail":
        raise RuntimeError(f"scripted failure of {key}")
    if do == "fail_until" and message.receive_count < int(doc["n"]):
        raise RuntimeError("not yet")
    if do == "fail_times" and CALLS[key] <= int(doc["n"]):
        raise RuntimeError("transient")
    if do == "permanent":
        raise PermanentError("unknown sku")
    if do == "retry_later":
        raise RetryLater(delay=float(doc["delay"]))
    _journal("done", key)
    return {"ok": True, "key": key}


def blocking(message: Message) -> Any:
    """A plain def handler (runs in a worker thread)."""
    doc = message.json()
    time.sleep(float(doc.get("sleep", 0)))
    _journal("done", str(doc.get("key", message.id)))
    return {"thread": True}


class Order(BaseModel):
    """A payload model for schema validation."""

    sku: str
    quantity: int


async def typed(order: Order) -> Any:
    """A handler that declares a payload model."""
    return {"sku": order.sku, "quantity": order.quantity}


async def echo(message: Message) -> Any:
    """Decodes the payload as JSON (bad JSON dead-letters) and succeeds."""
    return {"type": type(message.json()).__name__}
