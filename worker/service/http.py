"""The one HTTP port: /metrics, /healthz (liveness), /readyz (readiness). JSON bodies with a reason."""

from __future__ import annotations

import json
import logging

import anyio
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _response(status: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _json(status: int, ok: bool, reason: str) -> bytes:
    body = json.dumps({"status": "ok" if ok else "fail", "reason": reason}).encode()
    return _response(status, body, "application/json")


class HttpServer:
    """A tiny HTTP/1.1 server; enough for probes and Prometheus scrapes, nothing else."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen; report the bound port through ``task_status`` (useful with port 0)."""
        listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False
        )
        async with listener:
            port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            log.info("http listening", extra={"event": "http_listening", "host": self.host, "port": port})
            task_status.started(port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < 16384:
                        request += await stream.receive(4096)
                    await stream.send(self.route(request))
            except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError, OSError):
                return

    def route(self, request: bytes) -> bytes:
        """The response bytes for one raw request."""
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) < 2:
            return _json(404, False, "bad request")
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _json(405, False, "method not allowed")
        if path == "/metrics":
            return _response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            ok, reason = self.health.liveness()
            return _json(200 if ok else 503, ok, reason)
        if path == "/readyz":
            ok, reason = self.health.readiness()
            return _json(200 if ok else 503, ok, reason)
        return _json(404, False, "not found: try /metrics, /healthz, /readyz")
