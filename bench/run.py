"""The benchmark: the worker against the raw aiobotocore ceiling and bbc/sqs-consumer, in one run.

``python -m bench`` (``make bench``): starts an emulator (the embedded LocalStack, or ``--emulator fauxqs``,
or ``--endpoint URL``), and for each consumer and handler preloads a fresh queue with N 200-byte JSON
messages, starts the consumer as a subprocess, and measures while it drains the queue:

- messages/s: the drop of the queue's depth (visible + in flight) between the first sample that shows
  consumption and the first that shows an empty queue, sampled every 50 ms;
- CPU seconds per 1,000 messages of the consumer process over the same interval (psutil, or /proc);
- peak RSS of the consumer process (VmHWM, or the largest sample);
then, at a low steady rate (single SendMessage calls), the handler start latency: handler start minus the
time the producer stamped into the body just before sending (the SendMessage round trip included, the
same for every consumer). Every ratio compares figures measured in this run on this machine.

``--quick`` is the smoke mode (N=3000, one repetition); ``--soak`` runs the worker soak instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import anyio

from bench import report

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
FAUXQS_DIR = BENCH_DIR / "fauxqs"

CONSUMERS = ("raw", "worker", "worker-candidate", "worker-uvloop", "sqs-consumer")
HANDLERS = ("noop", "sleep50")
#: Body size of the preloaded messages, as the issue asks.
BODY_BYTES = 200
SAMPLE_INTERVAL = 0.05
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

try:  # optional: /proc is read directly when psutil is absent
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


def log(text: str) -> None:
    """Progress on stderr."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Process figures from the OS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, in seconds."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cores(start: float | None, end: float | None, seconds: float) -> float | None:
    if start is None or end is None or seconds <= 0:
        return None
    return round((end - start) / seconds, 2)


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    kb = _status_kb(pid, "VmRSS")
    return (kb or 0) * 1024


def peak_rss_bytes(pid: int, sampled: int) -> int:
    """The kernel's high-water mark of the RSS when it keeps one (Linux), else the largest sample."""
    kb = _status_kb(pid, "VmHWM")
    return max(sampled, kb * 1024) if kb is not None else sampled


# --------------------------------------------------------------------------------------------------
# Emulators


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except OSError:
        return 0, b""


def free_port() -> int:
    """A free loopback TCP port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def npm_install(directory: Path) -> None:
    """``npm ci`` (or ``npm install`` without a lock) in ``directory`` when its node_modules is stale."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    lock = directory / "package-lock.json"
    stamp = directory / "node_modules" / ".bench-installed"
    source = lock if lock.exists() else directory / "package.json"
    if stamp.exists() and stamp.stat().st_mtime >= source.stat().st_mtime:
        return
    command = "ci" if lock.exists() else "install"
    log(f"npm {command} in {directory.relative_to(ROOT)}")
    subprocess.run(
        [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    stamp.touch()


@contextlib.contextmanager
def emulator(kind: str, endpoint: str | None, workdir: Path) -> Iterator[tuple[str, str, int | None]]:
    """Yield (endpoint, description, pid or None) of a running emulator, stopped on exit unless given."""
    if endpoint:
        yield endpoint, f"existing endpoint {endpoint}", None
        return
    if kind == "localstack":
        from worker.devkit.localstack import EmbeddedLocalStack

        log("starting the embedded LocalStack (host mode)")
        with EmbeddedLocalStack(log_path=workdir / "localstack.log") as instance:
            version = _localstack_version()
            yield instance.endpoint, f"LocalStack {version} (host mode)", instance.pid
        return
    if kind == "fauxqs":
        npm_install(FAUXQS_DIR)
        node = FAUXQS_DIR / "node_modules" / ".bin" / "node"
        cli = FAUXQS_DIR / "node_modules" / "fauxqs" / "dist" / "cli.js"
        port = free_port()
        env = {**os.environ, "FAUXQS_PORT": str(port), "FAUXQS_LOGGER": "false", "FAUXQS_HOST": "localhost"}
        with (workdir / "fauxqs.log").open("wb") as out:
            proc = subprocess.Popen(
                [str(node), str(cli)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while _http_get(f"{url}/health")[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fauxqs did not start; see {workdir / 'fauxqs.log'}")
                time.sleep(0.1)
            version = json.loads((cli.parents[1] / "package.json").read_text())["version"]
            node_version = subprocess.run(
                [str(node), "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
            yield url, f"fauxqs {version} (Node {node_version})", proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        return
    raise SystemExit(f"unknown emulator {kind!r}")


def _localstack_version() -> str:
    from worker.devkit.localstack import requirements_path

    for line in requirements_path().read_text().splitlines():
        if line.startswith("localstack-core=="):
            return line.split("==", 1)[1].split(";")[0].strip()
    return "?"


def sealed_aws_env(endpoint: str, workdir: Path) -> dict[str, str]:
    """The AWS_* variables of every process here: the emulator, test credentials, no real account."""
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or ""
    if host not in ("localhost", "127.0.0.1", "::1") and not host.startswith("127."):
        raise SystemExit(f"refusing a non-loopback endpoint: {endpoint}")
    empty = workdir / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# --------------------------------------------------------------------------------------------------
# Consumers as subprocesses


@dataclass(frozen=True)
class Sample:
    """One look at a drain: when, messages left, and CPU seconds so far (consumer, emulator, machine)."""

    at: float
    remaining: int
    cpu: float
    emulator_cpu: float | None
    machine_cpu: float | None


def _counts(metrics: dict[str, float], report: dict[str, Any]) -> dict[str, int]:
    """What the consumer says it received (and, for the worker, ran to success)."""
    if metrics:
        return {
            "received": int(
                sum(v for k, v in metrics.items() if k.startswith("worker_messages_received_total"))
            ),
            "succeeded": int(
                sum(
                    v
                    for k, v in metrics.items()
                    if k.startswith("worker_messages_processed_total") and 'outcome="succeeded"' in k
                )
            ),
        }
    if report:
        return {"received": int(report.get("deleted", report.get("handled", 0)))}
    return {}


@dataclass
class Queue:
    """A throwaway queue and its DLQ."""

    url: str
    dlq_url: str


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
                        _http_get, f"http://127.0.0.1:{self.http_port}/readyz"
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
        status, body = _http_get(f"http://127.0.0.1:{self.http_port}/metrics")
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


@dataclass
class Bench:
    """Everything a run shares: options, the emulator's environment, a client, the results."""

    args: argparse.Namespace
    aws_env: dict[str, str]
    workdir: Path
    client: Any
    node: str | None
    emulator_pid: int | None = None
    counter: int = 0
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:6]}")

    # -- queues --

    async def make_queue(self, label: str) -> Queue:
        """A queue with a RedrivePolicy to its own DLQ (the worker requires a DLQ)."""
        self.counter += 1
        base = f"{self.prefix}-{self.counter}-{label}"
        dlq = (await self.client.create_queue(QueueName=f"{base}-dlq"))["QueueUrl"]
        arn = (await self.client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 10})
        url = (
            await self.client.create_queue(
                QueueName=base, Attributes={"VisibilityTimeout": "60", "RedrivePolicy": policy}
            )
        )["QueueUrl"]
        return Queue(url, dlq)

    async def delete_queue(self, queue: Queue) -> None:
        """Best effort."""
        for url in (queue.url, queue.dlq_url):
            with contextlib.suppress(Exception):
                await self.client.delete_queue(QueueUrl=url)

    async def depth(self, url: str) -> int:
        """Visible + in flight + delayed."""
        from worker.aws.client import queue_depth

        return sum((await queue_depth(self.client, url)).values())

    async def preload(self, url: str, count: int, senders: int = 8) -> float:
        """Send ``count`` 200-byte JSON messages with SendMessageBatch from several senders; msg/s."""
        started = time.perf_counter()
        batches = [range(i, min(i + 10, count)) for i in range(0, count, 10)]
        position = 0

        async def sender() -> None:
            nonlocal position
            while position < len(batches):
                batch = batches[position]
                position += 1
                entries = [{"Id": str(k), "MessageBody": body(i)} for k, i in enumerate(batch)]
                response = await self.client.send_message_batch(QueueUrl=url, Entries=entries)
                if response.get("Failed"):
                    raise RuntimeError(f"preload: SendMessageBatch failed: {response['Failed'][:1]}")

        async with anyio.create_task_group() as tg:
            for _ in range(senders):
                tg.start_soon(sender)
        return count / (time.perf_counter() - started)

    # -- consumers --

    def spawn(
        self, name: str, queue: Queue, handler: str, *, concurrency: int | None = None, extra: dict[str, str]
    ) -> ConsumerProcess:
        """Start consumer ``name`` on ``queue`` with ``handler``; BENCH_* settings shared by all three."""
        pollers = self.args.pollers
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "WORKER_", "BENCH_", "PYTHON"))
        }
        env.update(self.aws_env)
        env.update(
            BENCH_QUEUE_URL=queue.url,
            BENCH_POLLERS=str(pollers),
            BENCH_WAIT_SECONDS=str(self.args.wait),
            BENCH_VISIBILITY_SECONDS="60",
            BENCH_HANDLER=handler,
            **extra,
        )
        http_port = None
        cwd = ROOT
        if name == "raw":
            argv = [sys.executable, str(BENCH_DIR / "raw_consumer.py")]
        elif name in ("worker", "worker-candidate", "worker-uvloop"):
            http_port = free_port()
            env.update(
                WORKER_QUEUE_URL=queue.url,
                WORKER_DLQ_URL=queue.dlq_url,
                WORKER_HANDLER=f"bench.handlers:{handler}",
                WORKER_POLLERS=str(pollers),
                WORKER_WAIT_TIME_SECONDS=str(self.args.wait),
                WORKER_VISIBILITY_TIMEOUT_SECONDS="60",
                WORKER_HTTP_HOST="127.0.0.1",
                WORKER_HTTP_PORT=str(http_port),
                WORKER_QUEUE_METRICS_INTERVAL_SECONDS="15",
            )
            if concurrency is not None:
                env["WORKER_CONCURRENCY"] = str(concurrency)
            argv = [sys.executable, *self.args.worker_command.split()]
            if name == "worker-uvloop":
                argv = [sys.executable, str(BENCH_DIR / "worker_uvloop.py")]
            if name == "worker-candidate":  # the same command in another source tree (a patch to compare)
                cwd = Path(self.args.candidate_src).resolve()
                env["PYTHONPATH"] = str(cwd)
        elif name == "sqs-consumer":
            if self.node is None:
                raise RuntimeError("node is not available")
            argv = [self.node, str(BENCH_DIR / "sqs_consumer.mjs")]
        else:
            raise SystemExit(f"unknown consumer {name!r}")
        stem = f"{self.counter:03d}-{name}-{handler}"
        out, err = self.workdir / f"{stem}.out", self.workdir / f"{stem}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL
            )
        return ConsumerProcess(name, proc, out, err, http_port=http_port)

    def profile(self, consumer: ConsumerProcess, handler: str) -> subprocess.Popen[bytes] | None:
        """With ``--profile DIR``: py-spy samples a Python consumer (non-blocking) into DIR/*.txt."""
        if not self.args.profile or consumer.name == "sqs-consumer":
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        py_spy_args = [py_spy, "record", "--rate", "250", "--nonblocking", "--format", "raw"]
        target = Path(self.args.profile) / f"{self.counter:03d}-{consumer.name}-{handler}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [*py_spy_args, "--pid", str(consumer.pid), "--output", str(target)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def others_cpu(self) -> tuple[float | None, float | None]:
        """CPU seconds so far of the emulator (when this run started it) and of the whole machine."""
        emulator_cpu = None
        if self.emulator_pid is not None:
            with contextlib.suppress(OSError):
                emulator_cpu = cpu_seconds(self.emulator_pid)
        return emulator_cpu, machine_busy_seconds()

    # -- measurements --

    async def drain(self, name: str, handler: str, count: int) -> dict[str, Any]:
        """Preload ``count`` messages, let consumer ``name`` drain them, measure rate, CPU and RSS."""
        queue = await self.make_queue(f"{name}-{handler}")
        try:
            preload_rate = await self.preload(queue.url, count)
            concurrency = self.args.io_concurrency if handler == "sleep50" else self.args.concurrency
            consumer = self.spawn(name, queue, handler, concurrency=concurrency, extra={})
            profiler = None
            try:
                await consumer.wait_ready()
                profiler = self.profile(consumer, handler)
                first, last = await self._watch(consumer, queue.url, count)
                peak = peak_rss_bytes(consumer.pid, consumer.peak_rss_sampled)
                metrics = consumer.metrics()
            finally:
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)
                    await anyio.to_thread.run_sync(profiler.wait)
                await consumer.stop()
        finally:
            await self.delete_queue(queue)
        seconds = last.at - first.at
        result: dict[str, Any] = {
            "consumer": name,
            "handler": handler,
            "messages": count,
            "measured_messages": first.remaining,
            "seconds": round(seconds, 3),
            "msgs_per_s": round(first.remaining / seconds, 1),
            "cpu_s_per_1k": round((last.cpu - first.cpu) / first.remaining * 1000, 4),
            "peak_rss_mb": round(peak / 2**20, 1),
            "preload_msgs_per_s": round(preload_rate),
            # Cores busy meanwhile: the emulator process, and the whole machine (every process).
            "emulator_cores": _cores(first.emulator_cpu, last.emulator_cpu, seconds),
            "machine_cores_busy": _cores(first.machine_cpu, last.machine_cpu, seconds),
            **_counts(metrics, consumer.final_line()),
        }
        log(
            f"{name:>12} {handler:<8} {result['msgs_per_s']:>8.0f} msg/s  "
            f"{result['cpu_s_per_1k']:.3f} CPU s/1k  {result['peak_rss_mb']:.0f} MB"
        )
        return result

    async def _watch(self, consumer: ConsumerProcess, url: str, count: int) -> tuple[Sample, Sample]:
        """Sample until the queue is empty: the first sample showing consumption, and the last one."""
        first: Sample | None = None
        deadline = time.monotonic() + self.args.drain_timeout
        while True:
            remaining = await self.depth(url)
            now = time.perf_counter()
            cpu = consumer.sample()
            if (first is None and remaining < count) or remaining == 0:
                sample = Sample(now, remaining, cpu, *self.others_cpu())
                first = first or sample
                if remaining == 0:
                    return first, sample
            if not consumer.alive():
                raise consumer.failure("exited while draining")
            if time.monotonic() > deadline:
                raise consumer.failure(f"{remaining} messages left after {self.args.drain_timeout} s")
            await anyio.sleep(SAMPLE_INTERVAL)

    async def latency(self, name: str) -> dict[str, Any]:
        """Handler start latency at a low steady rate of single SendMessage calls."""
        queue = await self.make_queue(f"{name}-latency")
        path = self.workdir / f"latency-{self.counter}-{name}.txt"
        path.write_text("")
        count, rate = self.args.latency_messages, self.args.latency_rate
        try:
            consumer = self.spawn(name, queue, "latency", extra={"BENCH_LATENCY_FILE": str(path)})
            try:
                await consumer.wait_ready()
                await anyio.sleep(1.0)  # every poller is in its long poll
                period = 1.0 / rate
                due = time.perf_counter()
                for i in range(count):
                    text = json.dumps({"t": time.time(), "i": i})
                    await self.client.send_message(QueueUrl=queue.url, MessageBody=text)
                    due += period
                    await anyio.sleep(max(0.0, due - time.perf_counter()))
                with anyio.move_on_after(30):
                    while len(path.read_text().splitlines()) < count:
                        if not consumer.alive():
                            raise consumer.failure("exited during the latency run")
                        await anyio.sleep(0.1)
            finally:
                await consumer.stop()
        finally:
            await self.delete_queue(queue)
        values = sorted(float(line.split()[0]) for line in path.read_text().splitlines() if line.strip())
        if len(values) < count:
            raise RuntimeError(f"{name}: {len(values)} of {count} latency samples")
        result = {
            "consumer": name,
            "messages": count,
            "rate_per_s": rate,
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2),
        }
        log(f"{name:>12} latency  p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms")
        return result


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def body(i: int) -> str:
    """A JSON body of exactly BODY_BYTES bytes."""
    head = json.dumps({"i": i, "pad": ""})
    return json.dumps({"i": i, "pad": "x" * (BODY_BYTES - len(head))})


# --------------------------------------------------------------------------------------------------
# The run


def machine() -> dict[str, Any]:
    """What this ran on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "cpu_figures_from": "psutil" if psutil is not None else "/proc/<pid>/stat",
    }


def node_binary(args: argparse.Namespace) -> str | None:
    """The node that runs sqs-consumer, with its packages installed, or None (with a reason logged)."""
    if "sqs-consumer" not in args.consumers:
        return None
    node = args.node or (
        str(FAUXQS_DIR / "node_modules" / ".bin" / "node")
        if args.emulator == "fauxqs"
        else shutil.which("node")
    )
    if node is None or shutil.which("npm") is None:
        log("node/npm not found: skipping sqs-consumer")
        return None
    npm_install(BENCH_DIR)
    return node


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", "-n", type=int, default=20_000, help="N preloaded per no-op drain")
    p.add_argument("--io-messages", type=int, default=5_000, help="N per drain with the 50 ms handler")
    p.add_argument("--pollers", "-p", type=int, default=2, help="P: pollers / consumers (default 2)")
    p.add_argument("--io-concurrency", type=int, default=200, help="worker concurrency, 50 ms handler")
    p.add_argument("--concurrency", type=int, default=None, help="worker concurrency, no-op (default 50)")
    p.add_argument("--wait", type=int, default=5, help="long-poll wait of every consumer, seconds")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of each drain (median reported)")
    p.add_argument(
        "--consumers",
        default="raw,worker,sqs-consumer",
        help="comma-separated, from " + ",".join(CONSUMERS) + " (default raw,worker,sqs-consumer)",
    )
    p.add_argument("--handlers", default=",".join(HANDLERS), help="comma-separated subset of noop,sleep50")
    p.add_argument("--emulator", choices=("localstack", "fauxqs"), default="localstack")
    p.add_argument("--endpoint", default=None, help="use this running emulator (loopback only)")
    p.add_argument("--warmup", type=int, default=3000, help="messages of an unmeasured first drain")
    p.add_argument("--latency-messages", type=int, default=300, help="messages of the latency run")
    p.add_argument("--latency-rate", type=float, default=20.0, help="messages/s of the latency run")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--quick", action="store_true", help="smoke mode: N=3000, one repetition, short runs")
    p.add_argument("--soak", action="store_true", help="run the worker soak instead of the comparison")
    p.add_argument("--soak-messages", type=int, default=100_000)
    p.add_argument("--soak-concurrent", type=int, default=1000)
    p.add_argument("--soak-worker", choices=("worker", "worker-candidate"), default="worker")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds one drain may take")
    p.add_argument("--node", default=None, help="node binary for sqs-consumer (default: node on PATH)")
    p.add_argument(
        "--worker-command", default="-m worker run", help="arguments after the python of the worker"
    )
    p.add_argument(
        "--candidate-src",
        default=None,
        metavar="DIR",
        help="a source tree (e.g. this repo with a patch applied) run as the worker-candidate consumer",
    )
    p.add_argument("--output", default=None, help="results JSON (default bench/results/<date>.json)")
    p.add_argument("--profile", default=None, metavar="DIR", help="py-spy the Python consumers into DIR")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs of every process")
    args = p.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 3000)
        args.io_messages = min(args.io_messages, 1000)
        args.repeat = 1
        args.warmup = min(args.warmup, 500)
        args.latency_messages = min(args.latency_messages, 60)
        args.soak_messages = min(args.soak_messages, 10_000)
        args.soak_concurrent = min(args.soak_concurrent, 200)
    args.consumers = [c for c in args.consumers.split(",") if c]
    if "worker-candidate" in args.consumers and not args.candidate_src:
        p.error("worker-candidate needs --candidate-src DIR")
    if "worker-uvloop" in args.consumers and not _importable("uvloop"):
        log("uvloop is not installed: skipping worker-uvloop")
        args.consumers.remove("worker-uvloop")
    args.handlers = [h for h in args.handlers.split(",") if h]
    for c in args.consumers:
        if c not in CONSUMERS:
            p.error(f"unknown consumer {c!r}")
    for h in args.handlers:
        if h not in HANDLERS:
            p.error(f"unknown handler {h!r}")
    return args


@contextlib.asynccontextmanager
async def sqs_client() -> AsyncIterator[Any]:
    """The bench's own client (preloading, depth samples, latency sends)."""
    from worker.aws.client import client_config, create_client

    async with create_client("sqs", client_config(read_timeout=30, pool=20)) as client:
        yield client


async def run(
    args: argparse.Namespace, endpoint: str, description: str, emulator_pid: int | None, workdir: Path
) -> dict[str, Any]:
    """The whole comparison (or the soak); returns the results document."""
    os.environ.update(sealed_aws_env(endpoint, workdir))
    node = node_binary(args)
    consumers = [c for c in args.consumers if c != "sqs-consumer" or node is not None]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": description,
        "machine": machine(),
        "n": args.messages,
        "io_n": args.io_messages,
        "pollers": args.pollers,
        "io_worker_concurrency": args.io_concurrency,
        "wait_seconds": args.wait,
        "repeat": args.repeat,
        "quick": args.quick,
        "consumers": consumers,
    }
    if node is not None:
        version = await anyio.run_process([node, "--version"], check=False)
        results["node"] = version.stdout.decode().strip()
    async with sqs_client() as client:
        bench = Bench(args, sealed_aws_env(endpoint, workdir), workdir, client, node, emulator_pid)
        if args.soak:
            from bench.soak import soak

            results["soak"] = await soak(bench)
            return results
        if args.warmup:
            log(f"warm-up: {args.warmup} messages through the raw loop (not measured)")
            await bench.drain("raw", "noop", args.warmup)
        throughput: list[dict[str, Any]] = []
        for handler in args.handlers:
            count = args.messages if handler == "noop" else args.io_messages
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in consumers}
            for _ in range(args.repeat):
                for name in consumers:  # interleaved, so a noisy neighbour hits every consumer alike
                    runs[name].append(await bench.drain(name, handler, count))
            throughput.extend(report.median_runs(runs[name]) for name in consumers)
        results["throughput"] = throughput
        if not args.no_latency:
            results["latency"] = [await bench.latency(name) for name in consumers]
    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    try:
        with emulator(args.emulator, args.endpoint, workdir) as (endpoint, description, pid):
            log(f"emulator: {description}; N={args.messages}, P={args.pollers}, {os.cpu_count()} cores")
            results = anyio.run(run, args, endpoint, description, pid, workdir)
    finally:
        if args.keep_workdir:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    output = Path(args.output) if args.output else RESULTS_DIR / f"{datetime.now(UTC):%Y-%m-%dT%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if "throughput" in results:
        print(
            f"\n{results['emulator']}, N={results['n']} (50 ms handler: {results['io_n']}), "
            f"P={results['pollers']}, {results['machine']['cores']} cores\n"
        )
        print(report.table(results))
        print()
        for t in results["targets"]:
            state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            print(f"  {state:>12}  {t['target']}  ({t['value']})")
    if "soak" in results:
        print(report.soak_summary(results["soak"]))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
