"""WORKER_MIDDLEWARE: user context managers around every handler call, in order, seeing each outcome."""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, drain, running_worker, send, wait_for
from worker import Message
from worker.deadletter.record import read_failure
from worker.engine.message import parse_sqs_attributes
from worker.engine.middleware import Invocation, load_middleware
from worker.engine.policy import Condition
from worker.errors import ConfigError, PermanentError

#: What the middleware saw, per body key: ("outer"|"inner", "enter"|outcome) in order.
SEEN: collections.defaultdict[str, list[tuple[str, str]]] = collections.defaultdict(list)
#: Handler runs per body key.
RUNS: collections.Counter[str] = collections.Counter()


def _key(invocation: Invocation) -> str:
    assert invocation.message is not None
    return str(invocation.message.json()["key"])


def outer() -> Any:
    """Factory: records entry and outcome; refuses messages asking to be denied (PermanentError)."""

    @asynccontextmanager
    async def middleware(invocation: Invocation) -> AsyncIterator[None]:
        key = _key(invocation)
        SEEN[key].append(("outer", "enter"))
        if invocation.messages[0].json().get("deny"):
            raise PermanentError("denied by policy")
        yield
        SEEN[key].append(("outer", str(invocation.outcome)))

    return middleware


def inner() -> Any:
    """Factory: records entry and outcome (with the result or error); fails on exit when asked."""

    @asynccontextmanager
    async def middleware(invocation: Invocation) -> AsyncIterator[None]:
        key = _key(invocation)
        SEEN[key].append(("inner", "enter"))
        yield
        detail = type(invocation.error).__name__ if invocation.error else repr(invocation.result)
        SEEN[key].append(("inner", f"{invocation.outcome}:{detail}"))
        if invocation.messages[0].json().get("fail_exit"):
            raise RuntimeError("exit failed")

    return middleware


async def handle(message: Message) -> object:
    """Succeeds, fails the first run when asked, or sleeps past the deadline when asked."""
    body = message.json()
    key = str(body["key"])
    RUNS[key] += 1
    if body.get("fail_once") and RUNS[key] == 1:
        raise ValueError("first run fails")
    if body.get("slow"):
        await anyio.sleep(30)
    return {"ok": key}


def not_a_factory_result() -> object:
    """Factory returning something that is not a middleware."""
    return 42


def broken_factory() -> object:
    """Factory that raises."""
    raise RuntimeError("no config\nsecond line")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("no_such_module_for_tests:f", "cannot import module 'no_such_module_for_tests'"),
        ("tests.test_middleware:missing", "has no attribute 'missing'"),
        ("tests.test_middleware:not_a_factory_result", "the factory returned int, not a callable"),
        ("tests.test_middleware:broken_factory", "calling the factory raised RuntimeError: no config"),
    ],
)
def test_a_bad_entry_stops_start_up_with_one_line_naming_it(entry: str, says: str) -> None:
    """Each bad entry is a ConfigError naming WORKER_MIDDLEWARE, the entry and what is wrong, on one line."""
    with pytest.raises(ConfigError) as caught:
        load_middleware(["tests.test_middleware:outer", entry])
    text = str(caught.value)
    assert text.startswith(f"WORKER_MIDDLEWARE entry {entry!r}: ")
    assert says in text
    assert "\n" not in text


def test_factories_are_called_once_in_order() -> None:
    """The chain keeps the configured order (outermost first) and holds what the factories returned."""
    chain = load_middleware(["tests.test_middleware:outer", "tests.test_middleware:inner"])
    assert [m.__qualname__ for m in chain] == ["outer.<locals>.middleware", "inner.<locals>.middleware"]


@pytest.mark.localstack
async def test_middleware_wraps_each_call_in_order_and_sees_every_outcome(
    sqs: Any, queues: QueueFactory
) -> None:
    """Outer enters first and leaves last; retries, timeouts, refusals and exit failures are each seen."""
    q = await queues()
    keys = {name: unique(name) for name in ("ok", "retry", "slow", "deny", "exit")}
    sink = Collecting()
    async with running_worker(
        q,
        sink=sink,
        handler="tests.test_middleware:handle",
        middleware=["tests.test_middleware:outer", "tests.test_middleware:inner"],
        immediate_retries=1,
        timeout_seconds=1,
        max_attempts=2,
    ):
        await send(sqs, q["url"], {"key": keys["ok"]})
        await send(sqs, q["url"], {"key": keys["retry"], "fail_once": True})
        await send(sqs, q["url"], {"key": keys["slow"], "slow": True})
        await send(sqs, q["url"], {"key": keys["deny"], "deny": True})
        await send(sqs, q["url"], {"key": keys["exit"], "fail_exit": True})
        await wait_for(lambda: len(sink.outcomes) >= 5, timeout=30, what="five final outcomes")
    ok = keys["ok"]
    assert SEEN[ok] == [
        ("outer", "enter"),
        ("inner", "enter"),
        ("inner", f"Success:{{'ok': '{ok}'}}"),
        ("outer", "Success"),
    ]
    assert SEEN[keys["retry"]] == [
        ("outer", "enter"),
        ("inner", "enter"),
        ("inner", "Error:ValueError"),
        ("outer", "Error"),
        ("outer", "enter"),
        ("inner", "enter"),
        ("inner", f"Success:{{'ok': '{keys['retry']}'}}"),
        ("outer", "Success"),
    ]
    # The deadline cut the handler; the middleware exits still ran and saw it (twice: immediate retry).
    assert SEEN[keys["slow"]].count(("outer", "Timeout")) == 2
    # Refused on entry: the inner middleware and the handler never ran; the refusal is the failure.
    assert SEEN[keys["deny"]] == [("outer", "enter")]
    assert RUNS[keys["deny"]] == 0
    # A failing exit is logged; the outcome stands (deleted, reported as a success).
    assert RUNS[keys["exit"]] == 1
    by_key = {json.loads(o.message.body)["key"]: o for o in sink.outcomes}
    assert by_key[keys["exit"]].condition is Condition.SUCCESS
    assert by_key[keys["ok"]].response == {"ok": ok}
    assert by_key[keys["slow"]].condition is Condition.TIMEOUT
    assert (by_key[keys["deny"]].condition, by_key[keys["deny"]].error_type) == (
        Condition.PERMANENT_ERROR,
        "PermanentError",
    )
    dead = await drain(sqs, q["dlq_url"], expect=2, timeout=10)
    records = {
        json.loads(entry["Body"])["key"]: read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
        for entry in dead
    }
    denied = records[keys["deny"]]
    assert denied is not None
    assert (denied.error_type, denied.error_message) == ("PermanentError", "denied by policy")
