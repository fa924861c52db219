"""WORKER_PERMANENT_ERRORS: exception types dead-lettered at once, import-checked at start-up."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import Collecting, drain, running_worker, send, wait_for
from worker import Message
from worker.deadletter.record import read_failure
from worker.engine.failure import classify, load_permanent_errors
from worker.engine.message import parse_sqs_attributes
from worker.engine.policy import Condition, HandlerResult
from worker.errors import ConfigError, DecodeError, PermanentError, RetryLater, SchemaError
from worker.service.startup import inspect_queue
from worker.settings import Settings

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"
#: Invocations per body key of ``raises_key_error``, in this process.
CALLS: collections.Counter[str] = collections.Counter()


class LibraryError(Exception):
    """Stands for a library's exception a user wants dead-lettered without wrapping it."""


class NotFoundError(LibraryError):
    """A subclass: it counts as its base."""


async def raises_key_error(message: Message) -> object:
    """A handler that always raises KeyError (a lookup that will never succeed)."""
    key = str(message.json()["key"])
    CALLS[key] += 1
    raise KeyError("sku-404")


# --- classification ------------------------------------------------------------------------------------


def test_listed_types_and_their_subclasses_are_permanent() -> None:
    """A listed type, or any subclass of one, is PERMANENT; anything else stays a transient ERROR."""
    permanent = load_permanent_errors(["tests.test_permanent_errors:LibraryError", "builtins:KeyError"])
    assert permanent == (LibraryError, KeyError)
    assert classify(LibraryError("x"), permanent) is HandlerResult.PERMANENT
    assert classify(NotFoundError("x"), permanent) is HandlerResult.PERMANENT
    assert classify(KeyError("x"), permanent) is HandlerResult.PERMANENT
    assert classify(ValueError("x"), permanent) is HandlerResult.ERROR
    assert classify(LookupError("x"), permanent) is HandlerResult.ERROR  # a base of KeyError does not count
    assert classify(KeyError("x")) is HandlerResult.ERROR  # nothing listed: as before


def test_worker_error_types_keep_their_meaning_even_under_a_broad_entry() -> None:
    """Listing Exception makes plain errors permanent; RetryLater, schema and decode errors keep theirs."""
    permanent = load_permanent_errors(["builtins:Exception"])
    assert classify(RuntimeError("x"), permanent) is HandlerResult.PERMANENT
    assert classify(RetryLater(delay=3), permanent) is HandlerResult.RETRY_LATER
    assert classify(SchemaError("x"), permanent) is HandlerResult.SCHEMA
    assert classify(DecodeError("x"), permanent) is HandlerResult.DECODE
    assert classify(PermanentError("x"), permanent) is HandlerResult.PERMANENT


def test_nothing_listed_loads_nothing() -> None:
    """The default (empty) imports nothing and classifies as before."""
    assert load_permanent_errors([]) == ()


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("no_such_module_for_tests:Error", "cannot import module 'no_such_module_for_tests'"),
        ("builtins:NoSuchError", "has no attribute 'NoSuchError'"),
        ("builtins:print", "not an Exception subclass"),
        ("builtins:int", "not an Exception subclass"),
        ("builtins:KeyboardInterrupt", "not an Exception subclass"),  # a BaseException only
        ("tests.test_permanent_errors:CALLS", "not an Exception subclass"),
    ],
)
def test_bad_entries_stop_with_one_line_naming_variable_and_entry(entry: str, says: str) -> None:
    """Each bad entry raises ConfigError: one line naming WORKER_PERMANENT_ERRORS, the entry and why."""
    with pytest.raises(ConfigError) as caught:
        load_permanent_errors(["builtins:KeyError", entry])
    text = str(caught.value)
    assert text.startswith(f"WORKER_PERMANENT_ERRORS entry {entry!r}: ")
    assert says in text
    assert "\n" not in text


def test_module_failing_at_import_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that raises while importing (not an ImportError) still gives one line, no traceback."""
    (tmp_path / "boom_on_import_d.py").write_text('raise RuntimeError("no config file\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_permanent_errors(["boom_on_import_d:Error"])
    assert str(caught.value) == (
        "WORKER_PERMANENT_ERRORS entry 'boom_on_import_d:Error': "
        "importing it raised RuntimeError: no config file"
    )


class NoCalls:
    """An SQS client stand-in that fails the test if start-up calls it."""

    calls = 0

    async def get_queue_attributes(self, **_: Any) -> Any:
        self.calls += 1
        raise AssertionError("start-up called SQS before checking WORKER_PERMANENT_ERRORS")


async def test_startup_checks_the_imports_before_any_call() -> None:
    """inspect_queue (the start-up checks of worker run) refuses a bad entry before its first SQS call."""
    settings = Settings(queue_url=QUEUE, handler="builtins:print", permanent_errors=["builtins:print"])
    client = NoCalls()
    with pytest.raises(
        ConfigError, match=r"^WORKER_PERMANENT_ERRORS entry 'builtins:print': not an Exception"
    ):
        await inspect_queue(client, settings)  # type: ignore[arg-type]
    assert client.calls == 0


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    """`worker run` with an entry that does not import exits 2 with one stderr line and no traceback."""
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("WORKER_", "AWS_"))}
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # nothing listens there: a stray call could reach nobody
        WORKER_QUEUE_URL=QUEUE,
        WORKER_DLQ_URL=QUEUE + "-dlq",
        WORKER_HANDLER="builtins:print",
        WORKER_PERMANENT_ERRORS="builtins:KeyError,requests_not_installed_here:HTTPError",
    )
    run = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        "worker: configuration error: WORKER_PERMANENT_ERRORS entry 'requests_not_installed_here:HTTPError': "
        "cannot import module 'requests_not_installed_here': No module named 'requests_not_installed_here'"
    ]


# --- live -------------------------------------------------------------------------------------------------


@pytest.mark.localstack
async def test_listed_library_error_is_dead_lettered_on_first_delivery(
    sqs: Any, queues: QueueFactory
) -> None:
    """KeyError listed as permanent: one run (no immediate retry), then the DLQ as PermanentError/KeyError."""
    q = await queues()
    key = unique("keyerr")
    sink = Collecting()
    async with running_worker(
        q,
        sink=sink,
        handler="tests.test_permanent_errors:raises_key_error",
        permanent_errors=["builtins:KeyError"],
        immediate_retries=1,
    ):
        await send(sqs, q["url"], {"key": key})
        await wait_for(lambda: sink.outcomes, timeout=15, what="dead-letter outcome")
    [outcome] = sink.outcomes
    assert outcome.condition is Condition.PERMANENT_ERROR
    assert (outcome.error_type, outcome.attempts) == ("KeyError", 1)
    assert CALLS[key] == 1
    [entry] = await drain(sqs, q["dlq_url"], expect=1, timeout=10)
    record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
    assert record is not None
    assert (record.condition, record.error_type, record.error_message) == (
        "PermanentError",
        "KeyError",
        "'sku-404'",
    )
    assert (record.attempts, record.receive_count) == (1, 1)
    assert json.loads(entry["Body"]) == {"key": key}
