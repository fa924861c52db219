"""The HTTP port on aiohttp, in-process: probe bodies, /metrics negotiation, limits on hostile clients."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import resource
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from tests.helpers import free_port, http_get, http_get_async, wait_for
from worker.service.http import HttpServer
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@asynccontextmanager
async def serving_server(
    health: Health | None = None, port: int = 0, **options: Any
) -> AsyncIterator[tuple[int, HttpServer]]:
    """An HttpServer in this test's task group; yields its port and the server, cancelled on exit."""
    metrics = Metrics()
    metrics.received.labels("orders").inc(3)
    server = HttpServer("127.0.0.1", port, metrics, health or Health(), **options)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        yield bound, server
        tg.cancel_scope.cancel()


@asynccontextmanager
async def serving(health: Health | None = None, port: int = 0, **options: Any) -> AsyncIterator[int]:
    """An HttpServer in this test's task group; yields its port."""
    async with serving_server(health, port, **options) as (bound, _):
        yield bound


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET with headers through urllib (no decompression): (status, headers, raw body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback test server
        return int(response.status), dict(response.headers), response.read()


def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes (or resets) it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # The server may answer and close before reading everything: its answer is still queued to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(response.split(b" ", 2)[1])


@asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[list[anyio.abc.SocketStream]]:
    """``count`` connections that send nothing, opened in order and all closed on exit."""
    streams: list[anyio.abc.SocketStream] = []
    try:
        for _ in range(count):
            streams.append(await anyio.connect_tcp("127.0.0.1", port))
        yield streams
    finally:
        with anyio.CancelScope(shield=True):
            for stream in streams:
                await stream.aclose()


async def is_open(stream: anyio.abc.SocketStream) -> bool:
    """Whether the server still holds this idle connection (no EOF or reset waiting to be read)."""
    with anyio.move_on_after(0.05):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return False
    return True


def raise_descriptor_limit(wanted: int = 4096) -> None:
    """Raise the soft open-files limit toward ``wanted`` (each loopback connection costs two here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def send_slowly(stream: anyio.abc.SocketStream, sent: list[int], interval: float) -> None:
    """A slowloris: one byte of a never-ending request head every ``interval`` seconds, until cut."""
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000:
            await stream.send(bytes([byte]))
            sent.append(byte)
            await anyio.sleep(interval)
    except (anyio.BrokenResourceError, OSError):
        pass  # cut by the server


async def test_probe_answers_within_a_second_under_1000_idle_connections_and_a_slowloris() -> None:
    """1,000 idle connections and a client sending one header byte a second, all held by the server:
    /healthz answers in < 1 s and no connection was closed to make room."""
    raise_descriptor_limit()
    # A window no load can outlast while the test opens its connections: the server must hold all of them
    # when the probe is sent (cutting idle and slow clients by keep-alive is the next test's).
    async with (
        serving_server(keepalive_seconds=120, max_connections=1100) as (port, server),
        idle_connections(port, 1000),
        idle_connections(port, 1) as (slow,),
        anyio.create_task_group() as tg,
    ):
        sent: list[int] = []
        tg.start_soon(send_slowly, slow, sent, 1.0)
        await wait_for(lambda: len(sent) >= 2, timeout=5, what="the slowloris under way")
        await wait_for(lambda: server.open_connections >= 1001, timeout=10, what="1,001 connections held")
        started = time.monotonic()
        status, body = await http_get_async(port, "/healthz")
        took = time.monotonic() - started
        assert (status, json.loads(body)["status"]) == (200, "ok")
        assert took < 1.0, f"/healthz took {took:.3f}s"
        assert server.open_connections >= 1001
        assert server.evicted == 0, "a connection was closed below the cap"
        tg.cancel_scope.cancel()


async def test_slowloris_is_cut_once_its_keepalive_window_passes() -> None:
    """A client sending one header byte every 0.2 s never completes its head: cut after the 2 s window,
    by keep-alive and not by the cap, while it was still sending."""
    keepalive = 2.0
    async with (
        serving_server(keepalive_seconds=keepalive) as (port, server),
        idle_connections(port, 1) as (slow,),
        anyio.create_task_group() as tg,
    ):
        opened = time.monotonic()
        sent: list[int] = []
        tg.start_soon(send_slowly, slow, sent, 0.2)

        async def slowloris_cut() -> bool:
            return not await is_open(slow)

        await wait_for(slowloris_cut, timeout=keepalive + 10, what="the slowloris cut")
        cut = time.monotonic() - opened
        assert cut > keepalive - 0.5, f"slowloris cut after {cut:.1f}s, before its window"
        assert len(sent) >= 5, f"only {len(sent)} bytes sent before the cut"
        assert server.evicted == 0
        tg.cancel_scope.cancel()


async def test_new_connections_past_the_cap_close_the_oldest() -> None:
    """Cap 8, twenty idle connections: the twelve oldest are closed, the newest kept, probes answered."""
    async with (
        serving_server(max_connections=8) as (port, server),
        idle_connections(port, 20) as streams,
    ):

        async def oldest_closed() -> bool:
            return not any([await is_open(stream) for stream in streams[:12]])

        await wait_for(oldest_closed, timeout=3, what="the twelve oldest connections closed")
        assert all([await is_open(stream) for stream in streams[12:]])
        assert server.evicted == 12
        assert (await http_get_async(port, "/healthz"))[0] == 200


async def test_a_1mb_header_gets_a_4xx_without_an_error_log_and_the_server_answers_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 1 MB header: 400 (aiohttp's parser stops at 8 KiB), nothing logged at warning or above, then 200."""
    caplog.set_level(logging.DEBUG)
    async with serving() as port:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"s" * 1_000_000 + b"\r\n\r\n"
        response = await anyio.to_thread.run_sync(raw, port, request)
        assert status_of(response) in (400, 431), response[:200]
        assert (await http_get_async(port, "/healthz"))[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "sss" not in caplog.text  # the client's bytes are not quoted in our logs


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        # llhttp, aiohttp's parser, knows the registered methods only: an unknown one is a 400 before our code
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_get_400_and_the_server_answers_after(
    request_bytes: bytes, expected: int
) -> None:
    """A garbage request line, a missing target, an unknown method: 400, and the next probe is answered."""
    async with serving() as port:
        response = await anyio.to_thread.run_sync(raw, port, request_bytes)
        assert status_of(response) == expected, response[:200]
        assert (await http_get_async(port, "/healthz"))[0] == 200


async def test_methods_other_than_get_and_head_get_405_json() -> None:
    """POST, PUT, DELETE on any path: 405 with Allow and the JSON body; the connection stays usable."""
    async with serving() as port:
        for method in ("POST", "PUT", "DELETE"):
            request = f"{method} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            response = await anyio.to_thread.run_sync(raw, port, request)
            head, body = response.split(b"\r\n\r\n", 1)
            assert status_of(response) == 405
            assert b"Allow: GET, HEAD" in head
            assert json.loads(body) == {"status": "fail", "reason": "method not allowed"}


async def test_probe_bodies_and_status_codes_follow_health() -> None:
    """/readyz: starting 503, polling 200, draining 503; /healthz: 200, stale 503; unknown path 404 JSON."""
    health = Health()
    async with serving(health) as port:

        async def probe(path: str) -> tuple[int, Any]:
            status, body = await http_get_async(port, path)
            return status, json.loads(body)

        assert await probe("/readyz") == (503, {"status": "fail", "reason": "starting"})
        health.started = True
        health.poll_succeeded()
        assert await probe("/readyz") == (200, {"status": "ok", "reason": "polling"})
        assert await probe("/readyz?verbose=1") == (200, {"status": "ok", "reason": "polling"})
        health.draining = True
        assert await probe("/readyz") == (503, {"status": "fail", "reason": "draining"})
        assert await probe("/healthz") == (200, {"status": "ok", "reason": "poll loop turning"})
        health.stale_after = -1.0
        status, body = await probe("/healthz")
        assert (status, body["status"]) == (503, "fail")
        assert body["reason"].startswith("poll loop has not turned for")
        assert await probe("/nope") == (
            404,
            {"status": "fail", "reason": "not found: try /metrics, /healthz, /readyz"},
        )


async def test_metrics_are_gzipped_when_asked() -> None:
    """Accept-Encoding: gzip gives a gzip body that decompresses to the text exposition; without it, plain."""
    metrics_port = 0
    async with serving() as port:
        metrics_port = port
        status, headers, body = await anyio.to_thread.run_sync(
            lambda: get(port, "/metrics", **{"Accept-Encoding": "gzip"})
        )
        assert status == 200
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = gzip.decompress(body).decode()
        _, plain_headers, plain = await anyio.to_thread.run_sync(lambda: get(port, "/metrics"))
        assert "Content-Encoding" not in plain_headers
    assert metrics_port
    assert text == plain.decode()
    assert 'worker_messages_received_total{queue="orders"} 3.0' in text


async def test_metrics_negotiate_openmetrics() -> None:
    """The OpenMetrics Accept header gives application/openmetrics-text ending with # EOF."""
    async with serving() as port:
        status, headers, body = await anyio.to_thread.run_sync(
            lambda: get(port, "/metrics", Accept=OPENMETRICS)
        )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.decode().endswith("# EOF\n")
    assert 'worker_messages_received_total{queue="orders"} 3.0' in body.decode()


async def test_head_returns_headers_without_a_body() -> None:
    """HEAD /metrics and HEAD /healthz: status and Content-Length, then nothing before the server closes."""
    async with serving() as port:
        for path, status in (("/metrics", 200), ("/healthz", 200)):
            request = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            response = await anyio.to_thread.run_sync(raw, port, request)
            head, body = response.split(b"\r\n\r\n", 1)
            assert status_of(response) == status
            assert int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0]) > 0
            assert body == b""


async def test_port_zero_reports_the_bound_port_and_a_fixed_port_is_kept() -> None:
    """Port 0 starts on a free port and reports it; a given port is used as is."""
    async with serving() as port:
        assert port != 0
        assert (await http_get_async(port, "/healthz"))[0] == 200
    wanted = free_port()
    async with serving(port=wanted) as port:
        assert port == wanted
        assert (await http_get_async(port, "/healthz"))[0] == 200


async def test_cancelling_the_task_group_closes_the_listening_socket() -> None:
    """After the server's task group is cancelled, a connect to its port is refused."""
    async with serving() as port:
        idle = await anyio.connect_tcp("127.0.0.1", port)
        assert (await http_get_async(port, "/healthz"))[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not await is_open(idle)  # the open connection was closed too
    await idle.aclose()
    assert http_get(port, "/healthz", timeout=1)[0] == 0
