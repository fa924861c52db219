"""The consumers the bench compares: a table of how each is launched and what it needs, and the
handle of one running as a subprocess (ready check, CPU/RSS samples, /metrics, stop)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from bench.common import BENCH_DIR, FAUXQS_DIR, ROOT, log
from bench.emulators import free_port, http_get, npm_install
from bench.process import cpu_seconds, rss_bytes

# --------------------------------------------------------------------------------------------------
# How each consumer is launched


@dataclass(frozen=True)
class Launch:
    """What one consumer run is for: its queue, its handler, and the bench options every consumer shares."""

    queue_url: str
    dlq_url: str
    handler: str
    pollers: int
    wait: int
    concurrency: int | None
    worker_command: str
    candidate_src: str | None
    node: str | None


@dataclass(frozen=True)
class Command:
    """A consumer's command line, working directory, extra environment and HTTP port (the worker's)."""

    argv: tuple[str, ...]
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    http_port: int | None = None


@dataclass(frozen=True)
class ConsumerSpec:
    """One consumer: how to build its command, and what it needs before it can run."""

    name: str
    command: Callable[[Launch], Command]
    #: Runs on Node (skipped when no node/npm is found).
    needs_node: bool = False
    #: A module that must be importable (the consumer is skipped otherwise).
    needs_module: str | None = None
    #: Runs the worker from ``--candidate-src DIR`` (an error without it).
    needs_candidate_src: bool = False
    #: A Python process (py-spy can profile it).
    python: bool = True


def _raw(launch: Launch) -> Command:
    return Command((sys.executable, str(BENCH_DIR / "raw_consumer.py")))


def _worker_settings(launch: Launch, http_port: int) -> dict[str, str]:
    """The worker's WORKER_* settings, the BENCH_* ones translated."""
    env = {
        "WORKER_QUEUE_URL": launch.queue_url,
        "WORKER_DLQ_URL": launch.dlq_url,
        "WORKER_HANDLER": f"bench.handlers:{launch.handler}",
        "WORKER_POLLERS": str(launch.pollers),
        "WORKER_WAIT_TIME_SECONDS": str(launch.wait),
        "WORKER_VISIBILITY_TIMEOUT_SECONDS": "60",
        "WORKER_HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_PORT": str(http_port),
        "WORKER_QUEUE_METRICS_INTERVAL_SECONDS": "15",
    }
    if launch.concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(launch.concurrency)
    return env


def _worker(launch: Launch) -> Command:
    port = free_port()
    argv = (sys.executable, *launch.worker_command.split())
    return Command(argv, env=_worker_settings(launch, port), http_port=port)


def _worker_candidate(launch: Launch) -> Command:
    """The worker's command in another source tree (e.g. this repo with a patch applied)."""
    if not launch.candidate_src:
        raise RuntimeError("worker-candidate needs --candidate-src DIR")
    port = free_port()
    cwd = Path(launch.candidate_src).resolve()
    env = {**_worker_settings(launch, port), "PYTHONPATH": str(cwd)}
    argv = (sys.executable, *launch.worker_command.split())
    return Command(argv, cwd=cwd, env=env, http_port=port)


def _worker_uvloop(launch: Launch) -> Command:
    port = free_port()
    argv = (sys.executable, str(BENCH_DIR / "worker_uvloop.py"))
    return Command(argv, env=_worker_settings(launch, port), http_port=port)


def _sqs_consumer(launch: Launch) -> Command:
    if launch.node is None:
        raise RuntimeError("node is not available")
    return Command((launch.node, str(BENCH_DIR / "sqs_consumer.mjs")))


SPECS: dict[str, ConsumerSpec] = {
    entry.name: entry
    for entry in (
        ConsumerSpec("raw", _raw),
        ConsumerSpec("worker", _worker),
        ConsumerSpec("worker-candidate", _worker_candidate, needs_candidate_src=True),
        ConsumerSpec("worker-uvloop", _worker_uvloop, needs_module="uvloop"),
        ConsumerSpec("sqs-consumer", _sqs_consumer, needs_node=True, python=False),
    )
}
#: Every consumer name, in the table's order.
CONSUMERS = tuple(SPECS)


def spec(name: str) -> ConsumerSpec:
    """The spec of consumer ``name``; an unknown name is an error."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown consumer {name!r}; known: {', '.join(CONSUMERS)}") from None


def node_binary(args: argparse.Namespace) -> str | None:
    """The node that runs the Node consumers, with their packages installed, or None (reason logged)."""
    wanted = [name for name in args.consumers if spec(name).needs_node]
    if not wanted:
        return None
    node = args.node or (
        str(FAUXQS_DIR / "node_modules" / ".bin" / "node")
        if args.emulator == "fauxqs"
        else shutil.which("node")
    )
    if node is None or shutil.which("npm") is None:
        log(f"node/npm not found: skipping {', '.join(wanted)}")
        return None
    npm_install(BENCH_DIR)
    return node


def start(name: str, launch: Launch, env: dict[str, str], stdout: Path, stderr: Path) -> ConsumerProcess:
    """Start consumer ``name`` with the shared environment ``env``; its output into the two files."""
    command = spec(name).command(launch)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env={**env, **command.env},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    return ConsumerProcess(name, proc, stdout, stderr, http_port=command.http_port)


# --------------------------------------------------------------------------------------------------
# One running consumer


@dataclass
class ConsumerProcess:
    """One consumer subprocess: started, made ready, measured, stopped."""

    name: str
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    http_port: int | None = None
    peak_rss_sampled: int = 0
    _files: list[TextIO] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The consumer's pid."""
        return self.proc.pid

    def alive(self) -> bool:
        """Still running."""
        return self.proc.poll() is None

    def failure(self, what: str) -> RuntimeError:
        """An error naming the consumer with the end of its stderr."""
        tail = self.stderr_path.read_text(errors="replace")[-3000:] if self.stderr_path.exists() else ""
        return RuntimeError(f"{self.name}: {what} (exit {self.proc.poll()}); stderr ends with:\n{tail}")

    async def wait_ready(self, limit: float = 90.0) -> None:
        """Until the worker answers /readyz, or the others print ``ready``."""
        with anyio.move_on_after(limit):
            while True:
                if not self.alive():
                    raise self.failure("exited before it was ready")
                if self.http_port is not None:
                    status, _ = await anyio.to_thread.run_sync(
                        http_get, f"http://127.0.0.1:{self.http_port}/readyz"
                    )
                    if status == 200:
                        return
                elif "ready" in self.stdout_path.read_text(errors="replace").split():
                    return
                await anyio.sleep(0.05)
        raise self.failure(f"not ready within {limit:g} s")

    def sample(self) -> float:
        """CPU seconds so far; keeps the largest RSS seen."""
        with contextlib.suppress(OSError):
            self.peak_rss_sampled = max(self.peak_rss_sampled, rss_bytes(self.pid))
        return cpu_seconds(self.pid)

    def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {"name{labels}": value} (empty for the other consumers)."""
        if self.http_port is None:
            return {}
        status, body = http_get(f"http://127.0.0.1:{self.http_port}/metrics")
        out: dict[str, float] = {}
        if status == 200:
            for line in body.decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[name] = float(value)
        return out

    async def stop(self, limit: float = 40.0) -> None:
        """SIGTERM, wait; SIGKILL past ``limit`` seconds."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            await anyio.to_thread.run_sync(self.proc.wait, limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def final_line(self) -> dict[str, Any]:
        """The JSON line the raw and Node consumers print at exit."""
        for line in reversed(self.stdout_path.read_text(errors="replace").splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    return doc
        return {}
