"""Handlers of the rollout tests: a baseline, candidates (sound or half failing), a colour-journaled one."""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

import anyio

from worker import Message


@dataclass(frozen=True)
class Call:
    """One handler call in this process: which version ran which key, whether it failed, and when it ended."""

    version: str
    key: str
    ok: bool
    at: float


#: Every call of the handlers below in this process, in the order they ended.
CALLS: list[Call] = []


def key_of(message: Message) -> str:
    """The test's key of a message: its body's ``key``, else its id."""
    return str(message.json().get("key", message.id))


def fails_on_v2(key: str) -> bool:
    """Whether ``v2_half`` fails ``key``: half of the keys, chosen by a hash (the same on every call)."""
    return zlib.crc32(key.encode()) % 2 == 0


def _journal(line: str) -> None:
    path = os.environ.get("TEST_JOURNAL")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _called(version: str, key: str, ok: bool) -> None:
    CALLS.append(Call(version, key, ok, time.time()))
    _journal(f"{version} {key} {'ok' if ok else 'fail'}")


async def v1(message: Message) -> Any:
    """The baseline: succeeds."""
    key = key_of(message)
    _called("v1", key, True)
    return {"version": "v1", "key": key}


async def v2(message: Message) -> Any:
    """A sound candidate: succeeds."""
    key = key_of(message)
    _called("v2", key, True)
    return {"version": "v2", "key": key}


async def v2_half(message: Message) -> Any:
    """A bad candidate: fails (a transient error) every call for half of the keys (``fails_on_v2``)."""
    key = key_of(message)
    if fails_on_v2(key):
        _called("v2", key, False)
        raise ConnectionError(f"v2 cannot handle {key}")
    _called("v2", key, True)
    return {"version": "v2", "key": key}


async def colored(message: Message) -> Any:
    """Journals ``start <colour> <key>`` and ``done <colour> <key>`` (colour: WORKER_COLOR) around 50 ms."""
    key, color = key_of(message), os.environ.get("WORKER_COLOR", "none")
    _journal(f"start {color} {key}")
    await anyio.sleep(0.05)
    _journal(f"done {color} {key}")
    return {"color": color, "key": key}
