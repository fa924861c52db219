"""The one HTTP port, on aiohttp: /metrics, /healthz (liveness), /readyz (readiness); JSON with a reason."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from anyio.abc import TaskStatus

from worker.telemetry.exposition import render
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.http")
#: aiohttp's protocol log. A malformed request is the client's fault (it got its 4xx), and aiohttp would log
#: it as an error with a traceback quoting the client's bytes: dropped; the server's own failures stay.
protocol_log = logging.getLogger("worker.http.protocol")
protocol_log.addFilter(
    lambda record: not isinstance(record.exc_info and record.exc_info[1], HttpProcessingError)
)

#: Longest request line and longest header field; aiohttp answers 400 past either.
MAX_LINE_BYTES = 8192
#: Most header fields in one request (probes and scrapers send a handful).
MAX_HEADERS = 64
#: Seconds a connection may go without a complete request head: idle keep-alive, or a head sent too slowly.
KEEPALIVE_SECONDS = 5.0
#: Connections kept open at most; one more closes the oldest, so a flood cannot exhaust file descriptors.
MAX_CONNECTIONS = 512
#: Seconds in-flight requests get to finish when the server stops.
SHUTDOWN_SECONDS = 1.0


def _json(
    status: int, ok: bool, reason: str, details: dict[str, object] | None = None, **headers: str
) -> web.Response:
    body = json.dumps({"status": "ok" if ok else "fail", "reason": reason, **(details or {})}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class _BoundedServer(web.Server):
    """aiohttp's low-level server, holding at most ``max_connections``: a new connection closes the oldest."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.evicted = 0  # connections closed to make room under the cap
        self._open: dict[RequestHandler, None] = {}  # insertion order: oldest first

    @property
    def open_connections(self) -> int:
        """Connections the server holds now."""
        return len(self._open)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Track the connection; evict the oldest past the cap (it is the likeliest idle or stalled)."""
        super().connection_made(handler, transport)
        self._open[handler] = None
        if len(self._open) > self.max_connections:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.force_close()
            self.evicted += 1

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Forget the connection."""
        self._open.pop(handler, None)
        super().connection_lost(handler, exc)


class HttpServer:
    """Probes and Prometheus scrapes on aiohttp's server, with limits against slow and hostile clients."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Health,
        *,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.keepalive_seconds = keepalive_seconds
        self.max_connections = max_connections
        self._server: _BoundedServer | None = None

    @property
    def open_connections(self) -> int:
        """Connections held now (0 before it serves)."""
        return self._server.open_connections if self._server else 0

    @property
    def evicted(self) -> int:
        """Connections closed so far to stay under ``max_connections``."""
        return self._server.evicted if self._server else 0

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; report the bound port through ``task_status`` (useful with port 0).

        aiohttp runs each connection in a task of its own (not in our task group); ``runner.cleanup()``,
        shielded and bounded, closes the listening socket and ends them all.
        """
        self._server = server = _BoundedServer(
            self.handle,
            max_connections=self.max_connections,
            keepalive_timeout=self.keepalive_seconds,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            access_log=None,
            logger=protocol_log,
        )
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            # Port 0 with a host name of several addresses binds each on its own port: the first is reported.
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            log.info(
                "http listening", extra={"event": "http_listening", "host": self.host, "port": site.port}
            )
            task_status.started(site.port)
            await anyio.sleep_forever()
        finally:
            with anyio.move_on_after(SHUTDOWN_SECONDS + 2, shield=True) as scope:
                await runner.cleanup()
            if scope.cancelled_caught:
                log.warning("http server cleanup timed out", extra={"event": "http_cleanup_timeout"})

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The response to one request (aiohttp leaves the body out for HEAD)."""
        if request.method not in ("GET", "HEAD"):
            return _json(405, False, "method not allowed", Allow="GET, HEAD")
        if request.path == "/metrics":
            scrape = render(
                self.metrics.registry,
                request.headers.get("Accept", ""),
                request.headers.get("Accept-Encoding", ""),
            )
            headers = {"Content-Type": scrape.content_type, "Vary": "Accept, Accept-Encoding"}
            if scrape.content_encoding:
                headers["Content-Encoding"] = scrape.content_encoding
            return web.Response(body=scrape.body, headers=headers)
        if request.path == "/healthz":
            ok, reason = self.health.liveness()
            return _json(200 if ok else 503, ok, reason)
        if request.path == "/readyz":
            ok, reason = self.health.readiness()
            details = self.health.details() if self.health.details is not None else None
            return _json(200 if ok else 503, ok, reason, details)
        return _json(404, False, "not found: try /metrics, /healthz, /readyz")
