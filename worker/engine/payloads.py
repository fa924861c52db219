"""Extended-client payloads in S3: resolved for the handler, stored for oversized records, deleted on success.

``PayloadStore`` holds one S3 client, opened on first use (a worker that never meets a pointer never loads
the S3 model) and closed by its owner. ``ExtendedPayloads`` is what ``worker run`` wires: ``wrap`` gives the
handler the payload instead of the pointer (the processor keeps the received message, so the DLQ copy
keeps the pointer), and ``run`` composes the outcome sink so that, when configured, a succeeded message's
object is deleted only after its outcome arrives, which is after the SQS delete.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from worker.aws.client import CALL_ERRORS, client_config, create_client, error_code
from worker.backoff import Backoff
from worker.engine.batch import BatchReportInvalid, BatchResult, read_report
from worker.engine.handler import LoadedHandler
from worker.engine.message import Message
from worker.engine.outcome import Outcome, OutcomeSink
from worker.engine.payload_pointer import (
    PayloadMissing,
    PayloadPointer,
    PayloadUnavailable,
    check_allowed,
    check_size,
    declared_size,
    decode_payload,
    find_pointer,
    object_key,
    resolved,
)
from worker.engine.work_queue import serve
from worker.errors import DecodeError

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

    from worker.settings_groups import ExtendedPayloadSettings

log = logging.getLogger("worker.payloads")

#: Error codes (and HTTP statuses) meaning the object is not there and never will be.
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
#: What a store call can raise that means "this call failed" (the store closed at shutdown included).
STORE_ERRORS: tuple[type[BaseException], ...] = (*CALL_ERRORS, PayloadUnavailable)
#: Bytes asked for per read of an object's body.
READ_CHUNK_BYTES = 1024 * 1024
#: Succeeded payloads waiting for their delete; beyond this, deletes are skipped (and logged).
CLEANUP_CAPACITY = 10_000
#: Concurrent DeleteObject calls.
CLEANUP_TASKS = 2
#: Attempts per delete (throttling, 5xx, network), spaced by BACKOFF.
DELETE_ATTEMPTS = 3
BACKOFF = Backoff(base=0.2, cap=5.0)
#: At shutdown, seconds given to the queued deletes, then to the client to close.
SHUTDOWN_GRACE_SECONDS = 3.0
CLIENT_CLOSE_SECONDS = 2.0


class PayloadStore:
    """S3 reads, writes and deletes of payloads through one client, opened on first use."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        pool: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._pool = pool
        self._timeout = timeout
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._lock = anyio.Lock()
        self._closed = False

    async def client(self) -> S3Client:
        """The S3 client, created by its first caller (shielded: a cancelled caller leaves none half-open)."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._closed:
                raise PayloadUnavailable("the payload store is closed (the worker is stopping)")
            if self._client is None:
                with anyio.CancelScope(shield=True):
                    config = client_config(read_timeout=self._timeout, pool=self._pool)
                    self._client = await self._stack.enter_async_context(
                        create_client("s3", config, endpoint_url=self._endpoint_url)
                    )
            if self._client is None:  # for the type checker: a shielded scope swallows nothing
                raise PayloadUnavailable("the S3 client could not be opened")
            return self._client

    async def aclose(self) -> None:
        """Close the client (if one was opened); later calls fail as PayloadUnavailable."""
        self._closed = True
        self._client = None
        await self._stack.aclose()

    async def fetch(self, pointer: PayloadPointer, max_bytes: int) -> str:
        """The payload's text. PayloadMissing (permanent) when the object is gone, PayloadTooLarge above
        ``max_bytes``, PayloadUnavailable (transient) for any other failure of the call."""
        client = await self.client()
        try:
            response = await client.get_object(Bucket=pointer.bucket, Key=pointer.key)
            async with response["Body"] as stream:  # closed on every path: the connection goes back
                check_size(pointer, response.get("ContentLength"), max_bytes)
                data = bytearray()
                while chunk := await stream.read(READ_CHUNK_BYTES):  # a read returns what has arrived
                    data += chunk
                    check_size(pointer, len(data), max_bytes)
        except CALL_ERRORS as exc:
            code = error_code(exc)
            if code in MISSING_CODES:
                raise PayloadMissing(f"payload {pointer.uri} does not exist ({code})") from None
            raise PayloadUnavailable(f"payload {pointer.uri} could not be read ({code})") from exc
        return decode_payload(pointer, bytes(data))

    async def put(self, pointer: PayloadPointer, data: bytes) -> None:
        """PutObject; returns once S3 acknowledged it (botocore's exceptions otherwise)."""
        client = await self.client()
        await client.put_object(Bucket=pointer.bucket, Key=pointer.key, Body=data)

    async def delete(self, pointer: PayloadPointer) -> None:
        """DeleteObject (S3 answers 204 for a key that is already gone)."""
        client = await self.client()
        await client.delete_object(Bucket=pointer.bucket, Key=pointer.key)


@dataclasses.dataclass(frozen=True, slots=True)
class PayloadOffload:
    """Where the worker's own oversized messages go (WORKER_EXTENDED_PAYLOADS__BUCKET and __PREFIX)."""

    store: PayloadStore
    bucket: str
    prefix: str = ""

    @classmethod
    def for_settings(cls, settings: ExtendedPayloadSettings, store: PayloadStore) -> PayloadOffload | None:
        """The offload the settings configure, or None without a bucket (records are cut, as before)."""
        if settings.bucket is None:
            return None
        return cls(store=store, bucket=settings.bucket, prefix=settings.prefix or "")

    def pointer(self, *parts: str) -> PayloadPointer:
        """The pointer to the object ``prefix/parts...`` of the bucket."""
        return PayloadPointer(self.bucket, object_key(self.prefix, *parts))

    async def put(self, pointer: PayloadPointer, data: bytes) -> None:
        """Store ``data`` at ``pointer``; returns once S3 acknowledged it."""
        await self.store.put(pointer, data)


class ExtendedPayloads:
    """The extended-client pattern in ``worker run``: resolve pointers; delete after success when asked."""

    def __init__(
        self, settings: ExtendedPayloadSettings, *, pool: int = 10, endpoint_url: str | None = None
    ) -> None:
        self.settings = settings
        self.store = PayloadStore(endpoint_url=endpoint_url, pool=pool)
        #: The DLQ writer's offload for bodies with no room for their metadata (None without a bucket).
        self.offload = PayloadOffload.for_settings(settings, self.store)

    def wrap(self, handler: LoadedHandler) -> LoadedHandler:
        """``handler`` with pointers resolved first (WORKER_EXTENDED_PAYLOADS__RESOLVE), else ``handler``.

        Only the handler's argument changes: the processor, the DLQ writer and the destinations keep the
        message as received (its pointer). A batch handler gets the messages that resolved; the others are
        reported failed with their error (and, FIFO, the later messages of their group are held back).
        """
        if not self.settings.resolve:
            return handler
        inner, inner_batch = handler.invoke, handler.invoke_batch

        async def invoke(message: Message) -> object:
            pointer = find_pointer(message)
            if pointer is None:
                return await inner(message)
            return await inner(await self.resolve(message, pointer))

        if inner_batch is None:
            return dataclasses.replace(handler, invoke=invoke)

        async def invoke_batch(messages: list[Message]) -> object:
            ready, failures = await self._resolve_batch(messages)
            if not failures:
                return await inner_batch(ready)
            returned = await inner_batch(ready) if ready else None
            report = read_report(returned, [message.id for message in ready])
            if isinstance(report, BatchReportInvalid):
                raise report  # the whole batch fails, as with the report alone
            return BatchResult(failures={**report.failures, **failures}, responses=report.responses)

        return dataclasses.replace(handler, invoke=invoke, invoke_batch=invoke_batch)

    async def _resolve_batch(
        self, messages: list[Message]
    ) -> tuple[list[Message], dict[str, BaseException | None]]:
        """The messages to hand on (resolved, in order) and the failures of the others, by message id."""
        results: list[Message | BaseException] = list(messages)

        async def one(index: int, message: Message) -> None:
            try:
                pointer = find_pointer(message)
                if pointer is not None:
                    results[index] = await self.resolve(message, pointer)
            except Exception as exc:
                results[index] = exc

        async with anyio.create_task_group() as tg:
            for index, message in enumerate(messages):
                tg.start_soon(one, index, message)
        ready: list[Message] = []
        failures: dict[str, BaseException | None] = {}
        blocked: set[str] = set()  # FIFO groups with a failed message: the rest of the group waits
        for message, result in zip(messages, results, strict=True):
            group = message.group_id
            if group is not None and group in blocked:
                failures[message.id] = None
            elif isinstance(result, Message):
                ready.append(result)
            else:
                failures[message.id] = result
                if group is not None:
                    blocked.add(group)
        return ready, failures

    async def resolve(self, message: Message, pointer: PayloadPointer) -> Message:
        """The message with its payload read from S3 (allow-list and size cap checked first)."""
        check_allowed(pointer, self.settings.allowed_buckets)
        check_size(pointer, declared_size(message.attributes), self.settings.max_bytes)
        payload = await self.store.fetch(pointer, self.settings.max_bytes)
        return resolved(message, payload)

    async def run(
        self,
        sink: OutcomeSink | None,
        *,
        task_status: TaskStatus[OutcomeSink | None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Report the outcome sink to use (``sink``, or a PayloadCleanup around it); run until cancelled.

        Cancelled, queued deletes get a short grace, then the S3 client is closed.
        """
        try:
            if self.settings.delete_after_success:
                cleanup = PayloadCleanup(self.store, sink)
                await cleanup.run(task_status=task_status)
            else:
                task_status.started(sink)
                await anyio.sleep_forever()
        finally:
            with anyio.move_on_after(CLIENT_CLOSE_SECONDS, shield=True):
                await self.store.aclose()


class PayloadCleanup:
    """An OutcomeSink: forwards every outcome, and deletes the payload of each succeeded pointer message.

    Outcomes reach a sink after the message's SQS delete, so the object outlives the message; the delete
    runs off the hot path (a bounded queue and two tasks), and a failed one only leaves an object behind.
    """

    def __init__(
        self,
        store: PayloadStore,
        inner: OutcomeSink | None,
        *,
        capacity: int = CLEANUP_CAPACITY,
        tasks: int = CLEANUP_TASKS,
        shutdown_grace: float = SHUTDOWN_GRACE_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.inner = inner
        self.tasks = max(1, tasks)
        self.shutdown_grace = shutdown_grace
        self._jitter = jitter
        self._send, self._receive = anyio.create_memory_object_stream[PayloadPointer](capacity)
        #: Deletes done, failed and skipped (queue full or stopped), for logs and tests.
        self.deleted = 0
        self.failed = 0
        self.skipped = 0

    def submit(self, outcome: Outcome) -> None:
        """Queue the delete of a succeeded payload; pass the outcome on. Never blocks or raises."""
        try:
            self._queue_delete(outcome)
        except Exception as exc:  # the contract: submit never raises
            log.error(  # noqa: TRY400 - no traceback in the hot path
                "payload delete not queued",
                extra={"event": "payload_delete_skipped", "error": type(exc).__name__},
            )
        if self.inner is not None:
            self.inner.submit(outcome)

    def _queue_delete(self, outcome: Outcome) -> None:
        if not outcome.succeeded:
            return  # a dead-lettered message keeps its payload: the DLQ copy points at it
        if not outcome.deleted:
            return  # the SQS delete failed: the message comes back and needs its payload
        try:
            pointer = find_pointer(outcome.message)
        except DecodeError:
            return  # cannot happen: such a message never reaches its handler, so never succeeds
        if pointer is None:
            return
        try:
            self._send.send_nowait(pointer)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.skipped += 1
            log.warning(
                "payload delete skipped (queue full or stopping); the object stays",
                extra={"event": "payload_delete_skipped", "message_id": outcome.message.id},
            )

    async def run(self, *, task_status: TaskStatus[OutcomeSink | None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Delete until cancelled; then give what is queued ``shutdown_grace`` seconds."""
        await serve(
            self._send,
            self._receive,
            tasks=self.tasks,
            handle=self._delete,
            grace=self.shutdown_grace,
            leftover=self._left,
            started=self,
            task_status=task_status,
        )

    def _left(self, left: list[PayloadPointer]) -> None:
        if left:
            self.skipped += len(left)
            log.warning(
                f"{len(left)} payload delete(s) not done at shutdown; the objects stay",
                extra={"event": "payload_delete_skipped", "dropped": len(left)},
            )

    async def _delete(self, pointer: PayloadPointer) -> None:
        code = "Unknown"
        for attempt in range(DELETE_ATTEMPTS):
            if attempt:
                await anyio.sleep(BACKOFF.delay(attempt, self._jitter()))
            try:
                await self.store.delete(pointer)
            except STORE_ERRORS as exc:
                code = error_code(exc)
                continue
            self.deleted += 1
            return
        self.failed += 1
        log.warning(
            "payload delete failed; the object stays",
            extra={"event": "payload_delete_failed", "error": code, "attempts": DELETE_ATTEMPTS},
        )
