"""An in-repo TCP fault proxy (no toxiproxy or netem here): latency, resets, blackholes, cut responses.

It runs its own event loop in a thread, so it serves in-process workers and subprocesses alike, and the
test switches its behaviour at run time by setting attributes.

It reads the requests it forwards one by one (HTTP/1.1 with a Content-Length), so it can reset a connection
on a request: a client's pooled keep-alive connection, established before a fault was switched on, is hit
on its next request (``Faults.reset_request_share``, ``FaultProxy.reset_next_requests``), not only new
connections. Every reset it performs is counted (``resets`` by operation, ``reset_kinds`` by kind).

A request predicate (``Faults.blackhole_request``) blackholes only the requests it matches, e.g. the sends to
one queue (``sends_to_queue``): each is read whole, never forwarded and never answered (the client gives up on
its own), and counted in ``blackholed`` by operation; every other request flows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import socket
import struct
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse


@dataclass(frozen=True)
class ProxiedRequest:
    """One whole request the proxy read: its API operation ("SendMessage", "" when unnamed), head and body."""

    operation: str
    head: bytes
    body: bytes

    def queue_url(self) -> str | None:
        """The request's ``QueueUrl`` (JSON protocol, or a form-encoded query-protocol body), else None."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            value = doc.get("QueueUrl")
            return value if isinstance(value, str) else None
        found = parse_qs(self.body.decode("utf-8", "replace")).get("QueueUrl")
        return found[0] if found else None


#: The operations that write messages into a queue.
SEND_OPERATIONS = frozenset({"SendMessage", "SendMessageBatch"})


def sends_to_queue(
    queue_url: str, operations: Collection[str] = SEND_OPERATIONS
) -> Callable[[ProxiedRequest], bool]:
    """A ``blackhole_request`` predicate: the send requests (``operations``) whose QueueUrl is ``queue_url``.

    Queue URLs are compared by their path (account and name), so a client that spells the host differently
    (``localhost`` or ``sqs.<region>.localhost.localstack.cloud``) is matched too.
    """
    wanted = urlparse(queue_url).path.rstrip("/")

    def matches(request: ProxiedRequest) -> bool:
        url = request.queue_url() if request.operation in operations else None
        return url is not None and urlparse(url).path.rstrip("/") == wanted

    return matches


@dataclass
class Faults:
    """What the proxy does to new and live connections."""

    blackhole: bool = False  # accept, read, never forward or answer
    reset_share: float = 0.0  # share of new connections reset at once (RST)
    # Share of requests, on new and pooled connections alike, read whole and then answered by a reset
    # (never forwarded: the server does not see them).
    reset_request_share: float = 0.0
    latency: float = 0.0  # seconds added before each forwarded request and response chunk
    cut_response_after: int | None = None  # close a connection after this many response bytes
    error_share: float = 0.0  # share of requests answered by the proxy itself with ``error_status``
    error_status: int = 503  # 503 (server error) or 400 (with a throttling code)
    # Requests this predicate matches are read whole, never forwarded, never answered (counted in
    # ``FaultProxy.blackholed``); the others flow. None: no request is singled out.
    blackhole_request: Callable[[ProxiedRequest], bool] | None = None


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target, applying ``faults``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults = Faults()
        self.port = 0
        self.connections = 0
        #: Errors the proxy answered itself, by API operation (from the X-Amz-Target header).
        self.injected: collections.Counter[str] = collections.Counter()
        #: Resets the proxy performed on a request, by API operation of the request they cut.
        self.resets: collections.Counter[str] = collections.Counter()
        #: Resets the proxy performed, by kind: "connect" (a new connection, ``reset_share``), "first" (the
        #: first request of a connection), "pooled" (a later request: the connection was reused), "live"
        #: (``reset_all``), "cut" (``cut_response_after``).
        self.reset_kinds: collections.Counter[str] = collections.Counter()
        #: Requests held unanswered by ``Faults.blackhole_request``, by API operation.
        self.blackholed: collections.Counter[str] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()  # the client side of each live connection
        self._doomed: set[asyncio.StreamWriter] = set()  # reset on their next request
        #: The client connections whose request ``blackhole_request`` holds (``release_blackholed``).
        self._held: set[asyncio.StreamWriter] = set()

    @classmethod
    def towards(cls, endpoint: str) -> FaultProxy:
        """A proxy (not started) in front of the service at ``endpoint`` (an http URL)."""
        target = urlparse(endpoint)
        return cls(target.hostname or "127.0.0.1", target.port or 80)

    @property
    def endpoint(self) -> str:
        """The URL to point a client at."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        """Start listening on a free loopback port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def reset_count(self) -> int:
        """All resets performed so far, of every kind."""
        return sum(dict(self.reset_kinds).values())  # a copy: the proxy's thread may add a kind meanwhile

    def reset_all(self) -> None:
        """Reset every live connection now (each client connection counted as a "live" reset)."""
        asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(timeout=10)

    async def _reset_all(self) -> None:
        self.reset_kinds["live"] += len(self._clients)
        for writer in list(self._writers):
            _rst(writer)

    def reset_next_requests(self) -> int:
        """Make every live client connection reset on its next request; returns how many were marked.

        A client's idle pooled connections are what this reaches: a reset while they are idle would only make
        the client drop them quietly, a reset on their next request fails that request.
        """

        async def mark() -> int:
            self._doomed |= self._clients
            return len(self._clients)

        return asyncio.run_coroutine_threadsafe(mark(), self._loop).result(timeout=10)

    def release_blackholed(self) -> int:
        """Reset the connections of the requests ``blackhole_request`` holds now; returns how many.

        The end of an outage that drops connection state (a firewall's or a NAT's): the clients see their held
        requests fail at once instead of each waiting for its own timeout.
        """

        async def release() -> int:
            held = list(self._held)
            for writer in held:
                _rst(writer)
            return len(held)

        return asyncio.run_coroutine_threadsafe(release(), self._loop).result(timeout=10)

    def stop(self) -> None:
        """Close everything and stop the thread."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._reset_all()
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        self._clients.add(writer)
        try:
            if self.faults.reset_share and random.random() < self.faults.reset_share:
                self.reset_kinds["connect"] += 1
                _rst(writer)
                return
            if self.faults.blackhole:
                while await reader.read(65536):
                    pass
                return
            first_head = b""
            if self.faults.error_share:
                # One request per connection while errors are injected, so every request gets its draw.
                first_head = await reader.readuntil(b"\r\n\r\n")
                if random.random() < self.faults.error_share:
                    self.injected[_operation(first_head)] += 1
                    await _answer_error(first_head, reader, writer, self.faults.error_status)
                    return
                first_head = _force_close(first_head)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._requests(reader, writer, up_writer, first_head),
                    self._pipe(up_reader, writer, response=True),
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._clients.discard(writer)
            self._doomed.discard(writer)
            writer.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        """Forward the client's requests one by one, resetting the connection on a request when told to."""
        served = 0
        try:
            while True:
                if self.faults.blackhole:
                    await asyncio.sleep(3600)
                if not head:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError:
                        break  # the client closed its side (between requests, normally)
                if _header(head, b"transfer-encoding") is not None:
                    # A chunked body: no request boundaries to find here, pass the rest through.
                    upstream.write(head)
                    await self._pipe(reader, upstream, response=False)
                    return
                body = await reader.readexactly(int(_header(head, b"content-length") or 0))
                if self.faults.blackhole:  # switched on while this request was being read
                    await asyncio.sleep(3600)
                matches = self.faults.blackhole_request
                if matches is not None and matches(ProxiedRequest(_operation(head), head, body)):
                    self.blackholed[_operation(head)] += 1
                    self._held.add(client)
                    try:
                        while await reader.read(65536):  # held until the client gives up and closes
                            pass
                    finally:
                        self._held.discard(client)
                    return
                doomed = client in self._doomed
                share = self.faults.reset_request_share
                if doomed or (share and random.random() < share):
                    self.resets[_operation(head)] += 1
                    self.reset_kinds["pooled" if served else "first"] += 1
                    _rst(client)
                    upstream.close()  # ends the response pipe too
                    return
                if self.faults.latency:
                    await asyncio.sleep(self.faults.latency)
                upstream.write(head + body)
                await upstream.drain()
                served += 1
                head = b""
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if upstream.can_write_eof():
                with contextlib.suppress(OSError):
                    upstream.write_eof()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, response: bool
    ) -> None:
        sent = 0
        try:
            while True:
                if self.faults.blackhole:
                    await asyncio.sleep(3600)
                data = await reader.read(65536)
                if not data:
                    break
                if self.faults.latency:
                    await asyncio.sleep(self.faults.latency)
                limit = self.faults.cut_response_after
                if response and limit is not None and sent + len(data) > limit:
                    writer.write(data[: max(0, limit - sent)])
                    await writer.drain()
                    self.reset_kinds["cut"] += 1
                    _rst(writer)
                    return
                writer.write(data)
                await writer.drain()
                sent += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()


def _force_close(head: bytes) -> bytes:
    """The request head with ``Connection: close``, so the server ends the connection after answering."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _header(head: bytes, wanted: bytes) -> bytes | None:
    """The value of header ``wanted`` (lower case) in a request head, or None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip()
    return None


def _operation(head: bytes) -> str:
    """The API operation of a JSON-protocol request head ("ReceiveMessage"), or "" when it names none."""
    target = _header(head, b"x-amz-target")
    return "" if target is None else target.decode().rpartition(".")[2]


async def _answer_error(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int
) -> None:
    """Answer the request whose head was read with an AWS-style error (JSON protocol), then close."""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    if status == 400:
        body = b'{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}'
        extra = b"x-amzn-query-error: Throttling;Sender\r\n"
    else:
        body = b'{"__type":"com.amazonaws.sqs#InternalError","message":"injected"}'
        extra = b""
    writer.write(
        b"HTTP/1.1 %d Error\r\nContent-Type: application/x-amz-json-1.0\r\n%sContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, extra, len(body), body)
    )
    await writer.drain()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
