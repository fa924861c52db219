"""Helpers shared by the LocalStack tests: run a worker in-process, wait on conditions, read queues."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel

from worker.aws.queues import queue_depth
from worker.engine.outcome import Outcome
from worker.service.app import Worker, run_worker
from worker.settings import ENV_PREFIX, Settings
from worker.telemetry.metrics import Metrics


class Collecting:
    """An outcome sink that keeps what it is given."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def submit(self, outcome: Outcome) -> None:
        """Keep it."""
        self.outcomes.append(outcome)


_COLLECT: Any = object()


@asynccontextmanager
async def running_worker(
    queue: dict[str, str], *, sink: Any = _COLLECT, metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    """A worker on ``queue`` inside this test's task group; drained and stopped on exit.

    ``sink`` defaults to a fresh Collecting sink; ``sink=None`` uses the configured destinations.
    """
    values: dict[str, Any] = {
        "queue_url": queue["url"],
        "dlq_url": queue["dlq_url"],
        "handler": "tests.handlers:scripted",
        "http_port": 0,
        "http_host": "127.0.0.1",
        "wait_time_seconds": 1,
        "backoff_base_seconds": 1,
        "backoff_max_seconds": 2,
        "shutdown_timeout_seconds": 10,
        "queue_metrics_interval_seconds": 1,
    }
    values.update(overrides)
    settings = Settings(**values)
    # The worker reaches the emulator its queue lives on (``queues`` says which) through the standard chain.
    with endpoint_env(queue.get("endpoint")):
        async with anyio.create_task_group() as tg:
            worker: Worker = await tg.start(
                lambda task_status: run_worker(
                    settings,
                    metrics=metrics,
                    sink=Collecting() if sink is _COLLECT else sink,
                    handle_signals=False,
                    task_status=task_status,
                )
            )
            try:
                yield worker
            finally:
                if not worker.stopping.is_set():
                    worker.stop()


@contextmanager
def endpoint_env(endpoint: str | None) -> Iterator[None]:
    """``AWS_ENDPOINT_URL=endpoint`` in this process for a block, then the previous value back.

    An in-process worker takes its endpoint from the standard AWS chain (settings have none), so this is
    how it reaches the emulator its queue lives on; the test's own clients pass theirs explicitly.
    Nothing changes when ``endpoint`` is None.
    """
    if endpoint is None:
        yield
        return
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous


async def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def send(sqs: Any, url: str, body: Any, **kwargs: Any) -> str:
    """Send one message (dicts are JSON-encoded); returns its id."""
    text = body if isinstance(body, str) else json.dumps(body)
    return str((await sqs.send_message(QueueUrl=url, MessageBody=text, **kwargs))["MessageId"])


def read_journal(*paths: Path) -> dict[str, collections.Counter[str]]:
    """How many times each key logged "start" and "done" in the test handlers' journal files.

    A worker killed mid-write can leave a torn last line (SIGKILL cuts a write that crosses a page boundary):
    only lines ended by a newline count. Give each worker process its own file (``TEST_JOURNAL``), so a torn
    line is always the last of its file and never runs into another process's line.
    """
    counts: dict[str, collections.Counter[str]] = {
        "start": collections.Counter(),
        "done": collections.Counter(),
    }
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().split("\n")[:-1]:
            event, _, key = line.partition(" ")
            if event in counts and key:
                counts[event][key] += 1
    return counts


async def journaled_receives(message: Any) -> Any:
    """A test handler: ``tests.handlers:scripted``, after a "receive <key> <receive count>" journal line.

    The receive count a handler run sees, against the runs journaled before it, tells how many receives of
    that message ran no handler (hand-backs); read them back with ``read_receive_counts``.
    """
    from tests.handlers import scripted

    _journal_receive(str(message.json().get("key", message.id)), message.receive_count)
    return await scripted(message)


def _journal_receive(key: str, receive_count: int) -> None:
    path = os.environ.get("TEST_JOURNAL")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"receive {key} {receive_count}\n")


def read_receive_counts(*paths: Path) -> dict[str, list[int]]:
    """Per key, the receive counts of its handler runs journaled by ``journaled_receives``, in file order.

    Whole lines only, as in read_journal (give each worker process its own file).
    """
    counts: dict[str, list[int]] = collections.defaultdict(list)
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().split("\n")[:-1]:
            event, _, rest = line.partition(" ")
            key, _, count = rest.partition(" ")
            if event == "receive" and key and count.isdigit():
                counts[key].append(int(count))
    return dict(counts)


async def send_bodies(sqs: Any, url: str, bodies: Iterable[Any]) -> None:
    """Send each body (JSON-encoded) with SendMessageBatch, ten at a time, in order."""
    batch: list[dict[str, str]] = []
    for body in bodies:
        batch.append({"Id": str(len(batch)), "MessageBody": json.dumps(body)})
        if len(batch) == 10:
            await sqs.send_message_batch(QueueUrl=url, Entries=batch)
            batch = []
    if batch:
        await sqs.send_message_batch(QueueUrl=url, Entries=batch)


async def drain(sqs: Any, url: str, *, expect: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Receive (and delete) until ``expect`` messages arrived or the deadline passes."""
    got: list[dict[str, Any]] = []
    with anyio.move_on_after(timeout):
        while len(got) < expect:
            response = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            for entry in response.get("Messages", []):
                got.append(entry)
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=entry["ReceiptHandle"])
    return got


async def depth(sqs: Any, url: str) -> int:
    """Visible + in-flight + delayed messages of a queue."""
    return sum((await queue_depth(sqs, url)).values())


def free_port() -> int:
    """A free loopback TCP port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path; (status, body), (0, error) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def http_get_async(port: int, path: str) -> tuple[int, str]:
    """http_get from a worker thread, so an in-process server on this loop can answer."""
    return await anyio.to_thread.run_sync(http_get, port, path)


class WorkerProcess:
    """``python -m worker run`` in a subprocess with its own settings; logs kept in a file."""

    def __init__(self, env: dict[str, str], log_dir: Any, **settings: Any) -> None:
        import os
        import sys

        self.port = free_port()
        values: dict[str, Any] = {
            "handler": "tests.handlers:scripted",
            "http_port": self.port,
            "http_host": "127.0.0.1",
            "wait_time_seconds": 1,
            "backoff_base_seconds": 1,
            "backoff_max_seconds": 2,
            "queue_metrics_interval_seconds": 1,
            "log_format": "json",
        }
        values.update(settings)
        self.env = dict(env)
        for key, value in values.items():
            self.env[f"WORKER_{key.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
        self.log_path = log_dir / f"worker-{self.port}.log"
        self.argv = [sys.executable, "-m", "worker", "run"]
        self.proc: Any = None

    def start(self) -> WorkerProcess:
        """Start the process (stdin closed, stderr to the log file)."""
        import subprocess

        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (fails early if the process exits)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.logs()[-2000:]}")
            return http_get(self.port, "/readyz", timeout=1)[0] == 200

        await wait_for(ready, timeout=timeout, interval=0.2, what="worker ready")

    def signal(self, signum: int) -> None:
        """Send a signal."""
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        """Wait for exit; returns the exit code."""
        code = await wait_for(lambda: self.proc.poll() is not None, timeout=timeout, what="worker exit")
        del code
        self._log.close()
        return int(self.proc.returncode)

    def logs(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed."""
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._log.close()


@dataclass(frozen=True)
class Run:
    """A finished command-line run."""

    code: int
    stdout: str
    stderr: str


def run_concurrently(commands: Mapping[str, tuple[list[str], dict[str, str]]], cwd: Path) -> dict[str, Run]:
    """Start ``python <argv>`` for every (argv, env) at once (each a fresh interpreter), then collect them."""
    import subprocess
    import sys

    started = {
        name: subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (argv, env) in commands.items()
    }
    finished: dict[str, Run] = {}
    try:
        for name, proc in started.items():
            stdout, stderr = proc.communicate(timeout=60)
            finished[name] = Run(proc.returncode, stdout, stderr)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return finished


def setting_variables(model: type[BaseModel] | None = None, prefix: str = ENV_PREFIX) -> list[str]:
    """Every leaf setting's variable in field order: a nested model's fields as WORKER_FIELD__SUB."""
    names: list[str] = []
    for field, info in (model or Settings).model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names += setting_variables(info.annotation, f"{prefix}{field.upper()}__")
        else:
            names.append(f"{prefix}{field.upper()}")
    return names
