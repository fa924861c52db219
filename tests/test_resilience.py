"""Faults while running: the queue disappears, SQS resets connections, logs never leak bodies."""

from __future__ import annotations

import http.client
import http.server
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import chaos_report
from tests.conftest import QueueFactory, unique
from tests.faultproxy import FaultProxy
from tests.helpers import WorkerProcess, depth, http_get, send, send_bodies, wait_for

# The tests that run a worker are marked localstack and slow one by one: the fault proxy's own tests at the
# end need neither.


@pytest.mark.localstack
@pytest.mark.slow
async def test_queue_deleted_while_running_recovers_without_spinning(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Queue deleted: a clear log line, not ready, low CPU, alive; queue back: it consumes again."""
    q = await queues()
    name = q["url"].rsplit("/", 1)[-1]
    worker = WorkerProcess(aws_env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"]).start()
    try:
        await worker.wait_ready()
        await sqs.delete_queue(QueueUrl=q["url"])
        await wait_for(lambda: http_get(worker.port, "/readyz")[0] == 503, timeout=20, what="not ready")
        process = psutil.Process(worker.proc.pid)
        before = process.cpu_times()
        started = time.monotonic()
        await wait_for(lambda: time.monotonic() - started > 3, what="3 s of outage")
        after = process.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
        assert cpu < 0.5 * (time.monotonic() - started), f"spinning: {cpu:.2f} CPU s"
        assert http_get(worker.port, "/healthz")[0] == 200
        assert worker.proc.poll() is None
        failures = [e for e in worker.events() if e.get("event") == "poll_failed"]
        assert failures, "no log line about the failing receive"
        assert "NonExistentQueue" in failures[0]["error"] or "QueueDoesNotExist" in failures[0]["error"]
        await sqs.create_queue(QueueName=name)
        await wait_for(lambda: http_get(worker.port, "/readyz")[0] == 200, timeout=60, what="ready again")
        await send(sqs, q["url"], {"key": unique("after")})
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=30, what="consumed after recovery")
    finally:
        worker.kill()


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


@pytest.mark.localstack
@pytest.mark.slow
async def test_rst_storm_loses_nothing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    """Pooled connections reset, then 30 % of requests: 200 processed, none dead-lettered, resets counted."""
    q = await queues()
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint, "TEST_JOURNAL": str(tmp_path / "journal")}
    keys = [unique("rst") for _ in range(200)]
    worker = WorkerProcess(
        env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"], visibility_timeout_seconds=5
    )
    operations = ("ReceiveMessage", "DeleteMessageBatch")
    try:
        worker.start()
        await worker.wait_ready()
        # Ready: its long polls go over keep-alive connections it now holds in its pool. Resetting a new
        # connection would not reach them; resetting their next request does, whatever pool they are in.
        assert fault_proxy.reset_next_requests() > 0, "the worker holds no connection through the proxy"
        await wait_for(
            lambda: fault_proxy.reset_kinds["pooled"] > 0, timeout=20, what="a pooled connection reset"
        )
        fault_proxy.faults.reset_request_share = 0.3
        await send_bodies(sqs, q["url"], [{"key": k} for k in keys])  # all of them flow through the storm
        await wait_for(lambda: _all_done(tmp_path / "journal", keys), timeout=90, what="every key done")
        fault_proxy.faults.reset_request_share = 0.0
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=60, what="source empty")
        assert await depth(sqs, q["dlq_url"]) == 0
        resets = {op: fault_proxy.resets[op] for op in operations}
        assert all(resets.values()), f"not every operation was reset: {dict(fault_proxy.resets)}"

        def counted_as_reset() -> bool:
            # Each reset fails one attempt, which botocore retries (RetryAttempts, counted on success) or,
            # after 3 failed attempts, the call fails (counted once): resets / 3 <= counted <= resets.
            status_code, text = http_get(worker.port, "/metrics")
            counted = _sqs_errors(text) if status_code == 200 else {}
            return all(
                fault_proxy.resets[op] / 3 <= counted.get(op, 0) <= fault_proxy.resets[op]
                for op in operations
            )

        # A long poll retried after a reset is counted only when it returns.
        try:
            await wait_for(counted_as_reset, timeout=30, what="the resets counted as SQS errors")
        except AssertionError as exc:
            counted = _sqs_errors(http_get(worker.port, "/metrics")[1])
            raise AssertionError(f"{exc}: counted {counted}, resets {dict(fault_proxy.resets)}") from exc
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=30) == 0
    finally:
        worker.kill()


def _all_done(path: Path, keys: list[str]) -> bool:
    if not path.exists():
        return False
    return _done(path) >= set(keys)


@pytest.mark.localstack
@pytest.mark.slow
async def test_logs_never_carry_bodies_attributes_or_credentials(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Mixed traffic at the default log level: no body, attribute value or credential in any log line."""
    q = await queues()
    secret_body = unique("BODYSECRET")
    secret_attr = unique("ATTRSECRET")
    env = {**aws_env, "AWS_SECRET_ACCESS_KEY": "CREDSECRET" + unique("k")}
    worker = WorkerProcess(env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"], max_attempts=2).start()
    try:
        await worker.wait_ready()
        attrs = {"token": {"DataType": "String", "StringValue": secret_attr}}
        for do in ("ok", "fail", "permanent"):
            await send(
                sqs, q["url"], {"key": unique(do), "do": do, "secret": secret_body}, MessageAttributes=attrs
            )
        await send(sqs, q["url"], f"not json {secret_body}", MessageAttributes=attrs)
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=30, what="all handled")
        await wait_for(lambda: _dlq_has(sqs, q["dlq_url"], 3), timeout=30, what="3 dead-lettered")
        worker.signal(signal.SIGTERM)
        await worker.wait()
    finally:
        worker.kill()
    logs = worker.logs()
    assert "handler failed" in logs
    assert "dead-lettered" in logs
    for secret in (secret_body, secret_attr, env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in logs  # ...without their content


async def _dlq_has(sqs: Any, url: str, count: int) -> bool:
    return await depth(sqs, url) >= count


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.parametrize("status", [503, 400])
async def test_server_errors_and_throttling_are_counted_and_lose_nothing(
    sqs: Any,
    queues: QueueFactory,
    aws_env: dict[str, str],
    tmp_path: Path,
    fault_proxy: FaultProxy,
    status: int,
) -> None:
    """40 % of requests answered 503 or throttled: all processed, none dead-lettered, the errors counted."""
    q = await queues()
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint, "TEST_JOURNAL": str(tmp_path / "journal")}
    keys = [unique("err") for _ in range(300)]  # ~60 receives and deletes: some certainly get an error
    await send_bodies(sqs, q["url"], [{"key": k} for k in keys])
    worker = WorkerProcess(
        env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"], visibility_timeout_seconds=5
    )
    fault_proxy.faults.error_status = status
    fault_proxy.faults.error_share = 0.4  # from the first connection: pooled connections would dodge it
    try:
        worker.start()
        await worker.wait_ready()
        await wait_for(lambda: _all_done(tmp_path / "journal", keys), timeout=90, what="every key done")
        fault_proxy.faults.error_share = 0.0
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=60, what="source empty")
        assert await depth(sqs, q["dlq_url"]) == 0
        operations = ("ReceiveMessage", "DeleteMessageBatch")
        assert sum(fault_proxy.injected[op] for op in operations) > 0

        def counted_as_injected() -> bool:
            # botocore retries an answered error (counted from RetryAttempts) or, after 3 failed attempts,
            # the call fails (counted once): so injected / 3 <= counted <= injected, per operation.
            status_code, text = http_get(worker.port, "/metrics")
            counted = _sqs_errors(text) if status_code == 200 else {}
            return all(
                fault_proxy.injected[op] / 3 <= counted.get(op, 0) <= fault_proxy.injected[op]
                for op in operations
            )

        # A long poll retried after an injected error is counted only when it returns.
        await wait_for(counted_as_injected, timeout=30, what="injected errors counted")
    finally:
        worker.kill()


def _sqs_errors(metrics: str) -> dict[str, float]:
    """worker_sqs_errors_total by operation, from a /metrics page."""
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        match = re.fullmatch(r'worker_sqs_errors_total\{operation="(\w+)"\} (\S+)', line)
        if match:
            found[match[1]] = float(match[2])
    return found


@pytest.mark.localstack
@pytest.mark.slow
async def test_lost_lease_is_never_deleted(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    """Heartbeats blackholed past the lease: the worker does not delete what it lost; it runs again later."""
    q = await queues(visibility=2)
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint, "TEST_JOURNAL": str(tmp_path / "journal")}
    key = unique("lost")
    settings = {
        "queue_url": q["url"],
        "dlq_url": q["dlq_url"],
        "visibility_timeout_seconds": 2,
        "timeout_seconds": 20,
    }
    worker = WorkerProcess(env, tmp_path, **settings)
    try:
        worker.start()
        await worker.wait_ready()
        await send(sqs, q["url"], {"key": key, "sleep": 4})
        await wait_for(lambda: _count(tmp_path / "journal", "start", key) == 1, what="handler started")
        fault_proxy.faults.blackhole = True
        fault_proxy.reset_all()
        await wait_for(
            lambda: _count(tmp_path / "journal", "done", key) == 1, timeout=20, what="first run done"
        )
        await wait_for(
            lambda: any(
                e.get("event") == "lease_lost" and e.get("action") == "delete" for e in worker.events()
            ),
            timeout=10,
            what="lease_lost logged for the delete",
        )
        fault_proxy.faults.blackhole = False
        fault_proxy.reset_all()
        await wait_for(lambda: _count(tmp_path / "journal", "done", key) == 2, timeout=60, what="second run")
        await wait_for(lambda: _empty(sqs, q["url"]), timeout=30, what="deleted by the run that held it")
        metrics = http_get(worker.port, "/metrics")[1]
        assert 'worker_visibility_extensions_total{queue="' in metrics
        assert 'result="lease_lost"' in metrics
    finally:
        worker.kill()


def _count(path: Path, event: str, key: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line == f"{event} {key}")


OUTAGE_SECONDS = float(os.environ.get("CHAOS_OUTAGE_SECONDS", "8"))
#: How often /healthz is read while SQS is out, and the longest it may go unanswered.
PROBE_INTERVAL = 0.2
PROBE_MAX_GAP = 2.0


class _Prober:
    """Reads a path of a worker's HTTP port every ``interval`` seconds from a thread, keeping each answer."""

    def __init__(self, port: int, path: str, interval: float = PROBE_INTERVAL) -> None:
        self.port, self.path, self.interval = port, path, interval
        #: (monotonic time of the answer, HTTP status; 0 when nothing answered).
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"probe {path}")

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            status = http_get(self.port, self.path)[0]
            self.answers.append((time.monotonic(), status))
            if self._stop.wait(self.interval):
                return

    def between(self, start: float, end: float) -> list[tuple[float, int]]:
        """The answers that arrived between two monotonic times."""
        return [(t, status) for t, status in self.answers if start <= t <= end]


@pytest.mark.localstack
@pytest.mark.slow
async def test_outage_then_rst_storm_recovers_by_itself(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    """SQS blackholed with messages in flight, then 30 % resets: /healthz 200 at every 0.2 s probe, idle CPU,
    ready again, 0 lost."""
    q = await queues()
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint, "TEST_JOURNAL": str(tmp_path / "journal")}
    keys = [unique("out") for _ in range(300)]
    worker = WorkerProcess(
        env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"], visibility_timeout_seconds=5
    )
    with chaos_report.scenario("outage_then_reset_storm", outage_s=OUTAGE_SECONDS, messages=300) as figures:
        try:
            worker.start()
            await worker.wait_ready()
            # The first 20 take 2 s each, so the blackhole falls on messages in flight. Fewer than the
            # concurrency (50): with every slot held by a call hanging in the blackhole, no receive is due
            # and /readyz cannot see the outage until those calls time out (3 x 30 s).
            await send_bodies(sqs, q["url"], [{"key": k, "sleep": 2} for k in keys[:20]])
            await wait_for(
                lambda: _started(tmp_path / "journal") >= 20, timeout=30, what="messages in flight"
            )
            status, text = http_get(worker.port, "/metrics")
            assert status == 200
            figures["in_flight_at_blackhole"] = in_flight = _gauge(text, "worker_messages_in_flight")
            assert in_flight >= 20, f"only {in_flight} in flight when the blackhole began"
            with _Prober(worker.port, "/healthz") as prober:  # reads /healthz all through the outage
                outage_began = time.monotonic()
                fault_proxy.faults.blackhole = True
                fault_proxy.reset_all()
                await send_bodies(sqs, q["url"], [{"key": k} for k in keys[20:200]])  # sent during the outage
                await wait_for(
                    lambda: http_get(worker.port, "/readyz")[0] == 503, timeout=30, what="not ready"
                )
                process = psutil.Process(worker.proc.pid)
                before, started = process.cpu_times(), time.monotonic()
                await wait_for(
                    lambda: time.monotonic() - started >= OUTAGE_SECONDS, timeout=OUTAGE_SECONDS + 5
                )
                after = process.cpu_times()
                cpu = (after.user + after.system) - (before.user + before.system)
                figures["cpu_s_per_outage_s"] = round(cpu / OUTAGE_SECONDS, 4)
                assert cpu < 0.2 * OUTAGE_SECONDS, f"spinning during the outage: {cpu:.2f} CPU s"
                outage_ended = time.monotonic()
                fault_proxy.faults.blackhole = False
                fault_proxy.faults.reset_share = 0.3  # new connections...
                fault_proxy.faults.reset_request_share = 0.3  # ...and requests on pooled ones, all storm long
                fault_proxy.reset_all()
                await send_bodies(sqs, q["url"], [{"key": k} for k in keys[200:]])
                await wait_for(
                    lambda: http_get(worker.port, "/readyz")[0] == 200, timeout=90, what="ready again"
                )
                figures["ready_again_s"] = round(time.monotonic() - outage_ended, 2)
            probed_until = time.monotonic()
            failed = [(round(t - outage_began, 1), status) for t, status in prober.answers if status != 200]
            assert not failed, f"/healthz not 200 at (s into the outage, status): {failed}"
            during = prober.between(outage_began, outage_ended)
            figures["healthz_probes_in_outage"] = len(during)
            least = int(OUTAGE_SECONDS / PROBE_INTERVAL / 2)
            assert len(during) >= least, (
                f"/healthz read {len(during)} times in the outage, fewer than {least}"
            )
            marks = [outage_began, *(t for t, _ in prober.answers), probed_until]
            gap = max(later - earlier for earlier, later in itertools.pairwise(marks))
            figures["healthz_max_gap_s"] = round(gap, 2)
            assert gap <= PROBE_MAX_GAP, f"/healthz went {gap:.1f} s without an answer"
            await wait_for(lambda: _all_done(tmp_path / "journal", keys), timeout=120, what="every key done")
            figures["all_done_s"] = round(time.monotonic() - outage_ended, 2)
            fault_proxy.faults.reset_share = fault_proxy.faults.reset_request_share = 0.0
            figures["resets"] = dict(fault_proxy.reset_kinds)
            storm = sum(fault_proxy.reset_kinds[kind] for kind in ("connect", "first", "pooled"))
            assert storm > 0, (
                f"no connection or request was reset after the outage: {fault_proxy.reset_kinds}"
            )
            await wait_for(lambda: _empty(sqs, q["url"]), timeout=60, what="source empty")
            assert await depth(sqs, q["dlq_url"]) == 0
            figures["lost"] = len(set(keys) - _done(tmp_path / "journal"))
            figures["duplicates"] = _done_count(tmp_path / "journal") - len(keys)
            assert worker.proc.poll() is None
        finally:
            worker.kill()


def _started(path: Path) -> int:
    return (
        sum(1 for line in path.read_text().splitlines() if line.startswith("start ")) if path.exists() else 0
    )


def _done(path: Path) -> set[str]:
    return {line.split(" ", 1)[1] for line in path.read_text().splitlines() if line.startswith("done ")}


def _done_count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith("done "))


def _gauge(text: str, name: str) -> int:
    """The sum of a gauge's samples in Prometheus text."""
    return int(
        sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
    )


class _Backend(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 keep-alive server that answers each POST "ok <body>" and records (X-Amz-Target, body)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the head and body go out as two writes
    server: _BackendServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.headers.get("X-Amz-Target", ""), body))
        answer = b"ok " + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _BackendServer(http.server.ThreadingHTTPServer):
    seen: list[tuple[str, bytes]]


@pytest.fixture
def proxied_backend() -> Iterator[tuple[FaultProxy, list[tuple[str, bytes]]]]:
    """A fault proxy in front of a local keep-alive HTTP server; yields (proxy, requests the server saw)."""
    server = _BackendServer(("127.0.0.1", 0), _Backend)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True, name="proxied-backend")
    thread.start()
    proxy = FaultProxy("127.0.0.1", server.server_address[1]).start()
    try:
        yield proxy, server.seen
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _post(conn: http.client.HTTPConnection, operation: str, body: bytes) -> bytes:
    conn.request("POST", "/", body=body, headers={"X-Amz-Target": f"AmazonSQS.{operation}"})
    response = conn.getresponse()
    return response.read()


def test_proxy_resets_a_pooled_connection_on_its_next_request(
    proxied_backend: tuple[FaultProxy, list[tuple[str, bytes]]],
) -> None:
    """A keep-alive connection made before the fault: reset on its next request, not forwarded, counted."""
    proxy, seen = proxied_backend
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        assert _post(conn, "ReceiveMessage", b"one") == b"ok one"
        assert proxy.reset_next_requests() == 1
        with pytest.raises(ConnectionError):
            _post(conn, "DeleteMessageBatch", b"two")
    finally:
        conn.close()
    assert proxy.connections == 1, "the second request did not reuse the first connection"
    assert dict(proxy.resets) == {"DeleteMessageBatch": 1}
    assert dict(proxy.reset_kinds) == {"pooled": 1}
    assert seen == [("AmazonSQS.ReceiveMessage", b"one")], "the reset request reached the server"


def test_proxy_resets_a_share_of_requests_and_counts_each(
    proxied_backend: tuple[FaultProxy, list[tuple[str, bytes]]],
) -> None:
    """Half the requests reset: each of 200 is either reset and counted or answered, never both."""
    proxy, seen = proxied_backend
    proxy.faults.reset_request_share = 0.5
    answered = 0
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for i in range(200):
            try:
                answered += _post(conn, "ReceiveMessage", b"%d" % i) == b"ok %d" % i
            except ConnectionError:
                conn.close()  # dropped; the next request opens a new connection
    finally:
        conn.close()
    resets = proxy.resets["ReceiveMessage"]
    assert answered + resets == 200
    assert len(seen) == answered
    assert 50 <= resets <= 150, resets
    kinds = proxy.reset_kinds
    assert kinds["first"] > 0, kinds
    assert kinds["pooled"] > 0, kinds
    assert kinds["first"] + kinds["pooled"] == resets == proxy.reset_count, kinds
