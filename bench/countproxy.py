"""A counting HTTP proxy for the requests-per-message figures: consumers talk to the emulator through it, and
it counts each SQS request by action (``X-Amz-Target`` of the JSON protocol, ``Action=`` of the query one).

Requests are parsed only as far as their length (HTTP/1.1 with ``Content-Length``, as every SDK here sends
them) and forwarded unchanged; responses are piped back untouched. A subclass reads the traffic through
per-connection hooks (``ConnectionHooks``: each request, each answer chunk) instead of a forwarding loop of
its own. It runs in the bench's event loop, so its CPU is the bench's, not the consumer's."""

from __future__ import annotations

import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

#: Requests larger than this are not SQS calls of the bench (SQS bodies are 1 MiB at most).
MAX_REQUEST_BYTES = 4 * 2**20


def sqs_action(head: bytes, body: bytes) -> str:
    """The SQS action of one request: from ``X-Amz-Target`` (JSON protocol) or ``Action=`` (query), else
    ``other``."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-amz-target":
            return value.strip().decode("latin-1").rpartition(".")[2] or "other"
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    query = urlsplit(request_line.split(" ")[1] if " " in request_line else "").query
    for text in (body.decode("latin-1"), query):
        action = parse_qs(text).get("Action")
        if action:
            return action[0]
    return "other"


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a request head (0 without one); chunked bodies are refused."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and value.strip().lower() != b"identity":
            raise ValueError("chunked request bodies are not supported by the counting proxy")
    if length > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {length} bytes")
    return length


class ConnectionHooks:
    """What a proxy does besides counting, one per connection: nothing here; a subclass (the open-loop bench's
    timing proxy) reads the traffic it is shown."""

    def request(self, action: str, body: bytes) -> None:
        """One whole request, counted under ``action``, about to be forwarded."""

    def response(self, chunk: bytes, at: float) -> None:
        """One chunk of the emulator's answers, handed on to the client at ``at`` (``time.time()`` just
        before the write)."""


class CountingProxy:
    """``await tg.start(proxy.serve)`` gives its port; ``counts`` holds the requests seen so far by action.
    A subclass sees each connection's traffic through the :class:`ConnectionHooks` of :meth:`hooks`."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"the counting proxy needs host:port in {target!r}")
        self.host, self.port = parts.hostname, parts.port
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> Counter[str]:
        """A copy of the counts now."""
        return Counter(self.counts)

    def hooks(self) -> ConnectionHooks:
        """The hooks of a new connection (none here)."""
        return ConnectionHooks()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept connections on a free loopback port until cancelled."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            task_status.started(int(listener.extra(SocketAttribute.local_port)))
            await listener.serve(self._connection)

    async def _connection(self, client: anyio.abc.SocketStream) -> None:
        hooks = self.hooks()
        async with client:
            try:
                upstream = await anyio.connect_tcp(self.host, self.port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._responses, upstream, client, hooks, tg.cancel_scope)
                await self._requests(client, upstream, hooks)
                tg.cancel_scope.cancel()

    async def _requests(
        self, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream, hooks: ConnectionHooks
    ) -> None:
        """Parse each request far enough to count it; forward its bytes."""
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    buffer += await client.receive()
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = content_length(head)
                while len(buffer) < length:
                    buffer += await client.receive()
                body, buffer = buffer[:length], buffer[length:]
                action = sqs_action(head, body)
                self.counts[action] += 1
                hooks.request(action, body)
                await upstream.send(head + b"\r\n\r\n" + body)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ValueError):
            return

    @staticmethod
    async def _responses(
        upstream: anyio.abc.SocketStream,
        client: anyio.abc.SocketStream,
        hooks: ConnectionHooks,
        scope: anyio.CancelScope,
    ) -> None:
        """Pipe the emulator's answers back; when it closes, close the connection."""
        try:
            async for chunk in upstream:
                # Stamped just before the write: anyio's send yields to the event loop after writing, and
                # other tasks could run before a stamp taken after it.
                at = time.time()
                await client.send(chunk)
                hooks.response(chunk, at)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()
