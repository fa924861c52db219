"""Batched SQS calls (DeleteMessageBatch, ChangeMessageVisibilityBatch): sent at 10 entries or a linger."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from worker import clock
from worker.aws.client import CALL_ERRORS, error_code
from worker.backoff import Backoff
from worker.limits import SQS_BATCH_MAX
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


log = logging.getLogger("worker.sqs")
#: Between attempts of a whole batch call that failed: full jitter below 0.2 s doubling, capped at 2 s.
CALL_BACKOFF = Backoff(base=0.2, cap=2.0)


class BatchCall(Enum):
    """The two batched SQS calls: the operation name (metrics, logs) and the client method."""

    DELETE = ("DeleteMessageBatch", "delete_message_batch")
    CHANGE_VISIBILITY = ("ChangeMessageVisibilityBatch", "change_message_visibility_batch")

    def __init__(self, operation: str, method: str) -> None:
        self.operation = operation
        self.method = method


class _Batch:
    """Entries that go out in one call; one event wakes all their submitters."""

    __slots__ = ("callbacks", "done", "entries", "errors", "opened")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.entries: list[dict[str, Any]] = []
        self.errors: dict[int, str] = {}
        self.done = anyio.Event()
        #: (entry index, callback) of the entries submitted with submit_nowait().
        self.callbacks: list[tuple[int, Callable[[str | None], None]]] = []

    def complete(self) -> None:
        """Wake the submitters and run the callbacks (a failing callback is logged, never fatal)."""
        self.done.set()
        for index, callback in self.callbacks:
            try:
                callback(self.errors.get(index))
            except Exception:
                log.exception("batch entry callback failed", extra={"event": "batch_callback_failed"})


class Batcher:
    """Collects entries for a ``*Batch`` SQS call: flushes at 10 entries or ``linger`` s after the first.

    ``await submit(entry)`` returns None on success or the error code of that entry. Several flushers
    run at once so one slow call never stalls the others. Whole-call failures are retried with
    backoff a bounded number of times; entries still failing are reported, never silently dropped.
    """

    def __init__(
        self,
        client: SQSClient,
        call: BatchCall,
        queue_url: str,
        metrics: Metrics,
        *,
        linger: float = 0.01,
        flushers: int = 4,
        call_attempts: int = 3,
    ) -> None:
        self._client = client
        self._operation = call.operation
        self._method = call.method
        self._queue_url = queue_url
        self._metrics = metrics
        self._linger = linger
        self._flushers = flushers
        self._call_attempts = call_attempts
        #: The batch being filled; sealed batches wait in the stream for a free flusher.
        self._open: _Batch | None = None
        self._opened = anyio.Event()
        self._closed = False
        self._send, self._receive = anyio.create_memory_object_stream[_Batch](math.inf)
        #: Sealed batches not flushed yet: failed, never left waiting, if the flushers are gone.
        self._queued: set[_Batch] = set()

    async def submit(self, entry: dict[str, Any]) -> str | None:
        """Queue one entry (without ``Id``) and wait for its batch call; None means success."""
        batch, index = self._add(entry)
        await batch.done.wait()
        return batch.errors.get(index)

    def submit_nowait(self, entry: dict[str, Any], callback: Callable[[str | None], None]) -> None:
        """Queue one entry and return at once; ``callback(error)`` runs when its batch call has answered."""
        batch, index = self._add(entry)
        batch.callbacks.append((index, callback))

    def _add(self, entry: dict[str, Any]) -> tuple[_Batch, int]:
        if self._closed:
            raise anyio.ClosedResourceError
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(clock.now())
            self._opened.set()
        index = len(batch.entries)
        batch.entries.append(entry)
        if index + 1 >= SQS_BATCH_MAX:
            self._seal()
        return batch, index

    def _seal(self) -> None:
        batch, self._open = self._open, None
        if batch is not None:
            self._send.send_nowait(batch)
            self._queued.add(batch)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the flushers until ``close()``, then drain what is queued."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._flushers):
                    tg.start_soon(self._flusher, self._receive.clone())
                self._receive.close()
                tg.start_soon(self._lingerer)
                task_status.started()
        finally:
            self.close()
            for batch in list(self._queued):  # only after a crash or cancellation: report, never hang
                batch.errors = dict.fromkeys(range(len(batch.entries)), "BatcherClosed")
                batch.complete()
            self._queued.clear()

    def close(self) -> None:
        """No more submissions: flushers finish what is queued and return."""
        if not self._closed:
            self._closed = True
            batch = self._open
            try:
                self._seal()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                if batch is not None:  # the flushers are gone (cancelled): report, never hang
                    batch.errors = dict.fromkeys(range(len(batch.entries)), "BatcherClosed")
                    batch.complete()
            self._opened.set()  # wakes the lingerer, which returns
        self._send.close()

    async def _lingerer(self) -> None:
        """Seals the open batch ``linger`` seconds after its first entry."""
        while not self._closed:
            batch = self._open
            if batch is None:
                await self._opened.wait()
                self._opened = anyio.Event()
                continue
            await anyio.sleep(max(0.0, batch.opened + self._linger - anyio.current_time()))
            if self._open is batch:
                self._seal()

    async def _flusher(self, receive: anyio.abc.ObjectReceiveStream[_Batch]) -> None:
        async with receive:
            async for batch in receive:
                self._queued.discard(batch)
                with anyio.CancelScope(shield=True):
                    await self._flush(batch)

    async def _flush(self, batch: _Batch) -> None:
        entries = [{"Id": str(i), **entry} for i, entry in enumerate(batch.entries)]
        for attempt in range(self._call_attempts):
            try:
                response = await getattr(self._client, self._method)(
                    QueueUrl=self._queue_url, Entries=entries
                )
            except CALL_ERRORS as exc:
                code = error_code(exc)
                self._metrics.sqs_errors.labels(self._operation).inc()
                log.warning("sqs call failed", extra={"operation": self._operation, "error": code})
                if attempt + 1 < self._call_attempts:
                    await anyio.sleep(CALL_BACKOFF.delay(attempt + 1))
                    continue
                batch.errors = dict.fromkeys(range(len(entries)), code)
                break
            retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            if retried:  # botocore retried (throttling, 5xx) before succeeding: still errors worth counting
                self._metrics.sqs_errors.labels(self._operation).inc(retried)
            for failed in response.get("Failed", []):
                batch.errors[int(failed["Id"])] = str(failed.get("Code", "Failed"))
                self._metrics.sqs_errors.labels(self._operation).inc()
            break
        batch.complete()
