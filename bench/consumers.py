"""The consumers the bench compares: a table of how each is launched (in which configuration, with which
handlers) and what it needs, and the handle of one running as a subprocess (ready check, CPU/RSS samples of
its whole process tree, /metrics, stop)."""

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
from bench.process import tree_cpu_seconds, tree_rss_bytes

#: The handlers of a throughput drain.
HANDLERS = ("noop", "sleep50")
#: The Consumer instance counts bbc/sqs-consumer's no-op drains run with (``sqs-consumer-N``).
SQS_CONSUMER_INSTANCES = (1, 2, 4, 8)
#: Where ``make bench-peers`` installs the Python peers (their own virtualenv).
PEERS_VENV = ROOT / ".venv-peers"

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
    #: The worker's WORKER_CONCURRENCY in no-op drains (None: its default).
    concurrency: int | None
    worker_command: str
    candidate_src: str | None
    node: str | None
    #: The total concurrency every consumer gets with the 50 ms handler (None in no-op drains).
    io_concurrency: int | None = None
    #: The Python of the peers' virtualenv.
    peers_python: Path = PEERS_VENV / "bin" / "python"

    @property
    def batch_pollers(self) -> int:
        """Pollers of the consumers that handle one batch of 10 per poller (raw, sqs-consumer): P, or the
        total concurrency over 10 with the 50 ms handler."""
        return self.pollers if self.io_concurrency is None else max(1, self.io_concurrency // 10)


@dataclass(frozen=True)
class Command:
    """A consumer's command line, working directory, extra environment and HTTP port (the worker's)."""

    argv: tuple[str, ...]
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    http_port: int | None = None
    #: The configuration, as the results name it.
    config: str = ""


@dataclass(frozen=True)
class ConsumerSpec:
    """One consumer: how to build its command, and what it needs before it can run."""

    name: str
    command: Callable[[Launch], Command]
    #: What it is, for the best-configuration comparison: raw, worker, sqs-consumer, sqs-workers, ...
    family: str = ""
    #: The drains it runs (a peer's no-op configurations and its 50 ms one are separate entries).
    handlers: tuple[str, ...] = HANDLERS
    #: A Python peer: runs in the peers' virtualenv (skipped without it), preloaded with its own encoding.
    peer: bool = False
    #: Runs on Node (skipped when no node/npm is found).
    needs_node: bool = False
    #: A module that must be importable (the consumer is skipped otherwise).
    needs_module: str | None = None
    #: Runs the worker from ``--candidate-src DIR`` (an error without it).
    needs_candidate_src: bool = False
    #: A Python process (py-spy can profile it).
    python: bool = True
    #: Also runs the start/stop, request-count and latency runs (a variant that differs from another consumer
    #: only in its throughput configuration leaves them to that one).
    side_runs: bool = True


def _raw_variant(user_agent_cache: bool, pipelined: bool) -> Callable[[Launch], Command]:
    """The raw loop with P pollers (C / 10 with the 50 ms handler); with the worker's cached User-Agent;
    pipelined: each poller receives its next batch while the previous batch's DeleteMessageBatch is in
    flight."""

    def command(launch: Launch) -> Command:
        pollers = launch.batch_pollers
        env = {"BENCH_POLLERS": str(pollers)}
        config = f"{pollers} pollers, each ReceiveMessage(10) -> handlers -> DeleteMessageBatch"
        if pipelined:
            env["BENCH_RAW_PIPELINED"] = "1"
            config = (
                f"{pollers} pollers, each ReceiveMessage(10) -> handlers -> DeleteMessageBatch in the "
                "background, the next ReceiveMessage meanwhile (one delete in flight per poller)"
            )
        if user_agent_cache:
            env["BENCH_RAW_USER_AGENT_CACHE"] = "1"
            config += ", the worker's cached User-Agent"
        return Command((sys.executable, str(BENCH_DIR / "raw_consumer.py")), env=env, config=config)

    return command


_raw = _raw_variant(user_agent_cache=False, pipelined=False)


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
    concurrency = launch.io_concurrency or launch.concurrency
    if concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(concurrency)
    return env


def _worker(launch: Launch) -> Command:
    port = free_port()
    argv = (sys.executable, *launch.worker_command.split())
    env = _worker_settings(launch, port)
    concurrency = env.get("WORKER_CONCURRENCY", "50 (default)")
    config = f"WORKER_POLLERS={launch.pollers}, WORKER_CONCURRENCY={concurrency}, wait {launch.wait} s"
    return Command(argv, env=env, http_port=port, config=config)


def _worker_defaults(launch: Launch) -> Command:
    """The worker with only the required settings (and the HTTP port the bench reads, on loopback): pollers
    that size themselves, its own long-poll wait and queue-depth metrics; WORKER_CONCURRENCY only with the
    50 ms handler, where every consumer gets the same total concurrency."""
    port = free_port()
    argv = (sys.executable, *launch.worker_command.split())
    env = {
        "WORKER_QUEUE_URL": launch.queue_url,
        "WORKER_HANDLER": f"bench.handlers:{launch.handler}",
        "WORKER_HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_PORT": str(port),
    }
    config = "defaults (WORKER_QUEUE_URL, WORKER_HANDLER)"
    if launch.io_concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(launch.io_concurrency)
        config += f", WORKER_CONCURRENCY={launch.io_concurrency}"
    return Command(argv, env=env, http_port=port, config=config)


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


def _sqs_consumer_instances(instances: int | None) -> Callable[[Launch], Command]:
    """bbc/sqs-consumer: ``instances`` Consumer instances in one Node process sharing one SQSClient (None:
    P, or C / 10 with the 50 ms handler), batchSize 10, handleMessageBatch, every attribute requested."""

    def command(launch: Launch) -> Command:
        if launch.node is None:
            raise RuntimeError("node is not available")
        n = instances if instances is not None else launch.batch_pollers
        return Command(
            (launch.node, str(BENCH_DIR / "sqs_consumer.mjs")),
            env={"BENCH_POLLERS": str(n)},
            config=f"{n} Consumer instances sharing one SQSClient, batchSize 10, handleMessageBatch, "
            "every attribute",
        )

    return command


_sqs_consumer = _sqs_consumer_instances(None)


def _sqs_consumer_default(launch: Launch) -> Command:
    """bbc/sqs-consumer as most users run it: one Consumer with the library's defaults."""
    if launch.node is None:
        raise RuntimeError("node is not available")
    return Command(
        (launch.node, str(BENCH_DIR / "sqs_consumer.mjs")),
        env={"BENCH_SQS_CONSUMER_DEFAULTS": "1"},
        config="1 Consumer instance, its defaults: batchSize 1, handleMessage, wait 20 s, the queue's "
        "visibility, no attributes",
    )


# The Python peers, each in the configurations its docs point to for throughput (bench/peers/*.py say which
# and why; docs/PERFORMANCE.md links the doc text). No-op drains try a few; the 50 ms drain derives the one
# configuration that gives the same total concurrency as every other consumer.


def _sqs_workers(processes: int | None) -> Callable[[Launch], Command]:
    def command(launch: Launch) -> Command:
        n = processes if processes is not None else launch.io_concurrency or 1
        return Command(
            (str(launch.peers_python), "-m", "bench.peers.sqs_workers_consumer"),
            env={"BENCH_PEER_PROCESSES": str(n)},
            config=f"{n} processes x process_queue(), batch reads of 10, DeleteMessageBatch",
        )

    return command


def _dramatiq(processes: int, threads: int | None) -> Callable[[Launch], Command]:
    def command(launch: Launch) -> Command:
        t = threads if threads is not None else max(1, (launch.io_concurrency or processes) // processes)
        argv = (
            str(launch.peers_python.parent / "dramatiq"),
            "bench.peers.dramatiq_consumer",
            "--processes",
            str(processes),
            "--threads",
            str(t),
        )
        # The long-poll wait is dramatiq's worker_timeout, 1 s by default (no CLI option): left as it is, as
        # every dramatiq user runs it; a longer one would only slow dramatiq's stop (it waits for the poll).
        return Command(argv, config=f"{processes} processes x {t} threads, prefetch 10, wait 1 s (default)")

    return command


def _celery(pool: str, concurrency: int | None) -> Callable[[Launch], Command]:
    def command(launch: Launch) -> Command:
        c = concurrency if concurrency is not None else launch.io_concurrency or 1
        # Celery's optimizing guide: "lots of short tasks" want a large prefetch multiplier ("say 64"); the
        # default of 4 is its middle ground, kept for the 50 ms handler (20 threads x 4 = 80 reserved). kombu
        # receives min(10, what the prefetch count still allows) a call.
        multiplier = 64 if concurrency is not None else 4
        argv = (
            str(launch.peers_python.parent / "celery"),
            "-A",
            "bench.peers.celery_consumer",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(c),
            "--loglevel",
            "WARNING",
        )
        env = {"BENCH_PEER_PREFETCH_MULTIPLIER": str(multiplier)}
        config = f"--pool {pool} --concurrency {c}, prefetch multiplier {multiplier}"
        return Command(argv, env=env, config=config)

    return command


SPECS: dict[str, ConsumerSpec] = {
    entry.name: entry
    for entry in (
        ConsumerSpec("raw", _raw, family="raw"),
        ConsumerSpec("raw-ua", _raw_variant(True, False), "raw", ("noop",), side_runs=False),
        ConsumerSpec("raw-pipelined", _raw_variant(True, True), "raw", ("noop",), side_runs=False),
        ConsumerSpec("worker-defaults", _worker_defaults, family="worker"),
        ConsumerSpec("worker", _worker, family="worker"),
        ConsumerSpec("worker-candidate", _worker_candidate, family="worker", needs_candidate_src=True),
        ConsumerSpec("worker-uvloop", _worker_uvloop, family="worker", needs_module="uvloop"),
        ConsumerSpec("sqs-consumer", _sqs_consumer, family="sqs-consumer", needs_node=True, python=False),
        *(
            ConsumerSpec(
                f"sqs-consumer-{n}",
                _sqs_consumer_instances(n),
                "sqs-consumer",
                ("noop",),
                needs_node=True,
                python=False,
                side_runs=False,
            )
            for n in SQS_CONSUMER_INSTANCES
        ),
        ConsumerSpec(
            "sqs-consumer-default", _sqs_consumer_default, "sqs-consumer", needs_node=True, python=False
        ),
        *(
            ConsumerSpec(f"sqs-workers-p{n}", _sqs_workers(n), "sqs-workers", ("noop",), peer=True)
            for n in (1, 2, 4)
        ),
        ConsumerSpec("sqs-workers-io", _sqs_workers(None), "sqs-workers", ("sleep50",), peer=True),
        *(
            ConsumerSpec(f"dramatiq-p{n}t8", _dramatiq(n, 8), "dramatiq", ("noop",), peer=True)
            for n in (1, 2)
        ),
        ConsumerSpec("dramatiq-io", _dramatiq(2, None), "dramatiq", ("sleep50",), peer=True),
        ConsumerSpec("celery-prefork-c2", _celery("prefork", 2), "celery", ("noop",), peer=True),
        ConsumerSpec("celery-threads-c10", _celery("threads", 10), "celery", ("noop",), peer=True),
        ConsumerSpec("celery-solo", _celery("solo", 1), "celery", ("noop",), peer=True),
        ConsumerSpec("celery-io", _celery("threads", None), "celery", ("sleep50",), peer=True),
    )
}
#: Every consumer name, in the table's order.
CONSUMERS = tuple(SPECS)
#: The Python peers' families.
PEER_FAMILIES = ("sqs-workers", "dramatiq", "celery")
#: What ``make bench`` runs: the issue's comparison (the worker with its defaults and tuned, the raw loop and
#: its two variants, bbc/sqs-consumer at P, 1, 2, 4 and 8 instances and with its defaults, and each Python
#: peer in its configurations).
DEFAULT_CONSUMERS = tuple(name for name in CONSUMERS if name not in ("worker-candidate", "worker-uvloop"))


def peer_encoder(name: str) -> str | None:
    """The module whose ``bodies`` mode encodes a peer's messages (None: the payload is the body)."""
    family = spec(name).family
    return {
        "dramatiq": "bench.peers.dramatiq_consumer",
        "celery": "bench.peers.celery_consumer",
    }.get(family)


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
    return ConsumerProcess(name, proc, stdout, stderr, http_port=command.http_port, config=command.config)


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
    config: str = ""
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
        """CPU seconds so far of the whole process tree; keeps the largest RSS (of the tree) seen."""
        with contextlib.suppress(OSError):
            self.peak_rss_sampled = max(self.peak_rss_sampled, tree_rss_bytes(self.pid))
        return tree_cpu_seconds(self.pid)

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
