"""SQS plumbing: the aiobotocore client factory and batchers for delete and visibility changes."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from anyio.abc import TaskStatus
from botocore.exceptions import BotoCoreError, ClientError

from .metrics import Metrics

log = logging.getLogger("worker.sqs")

#: SQS batch APIs take at most 10 entries.
BATCH_MAX = 10


def client_config(*, read_timeout: float = 30.0, pool: int = 50, retry_mode: str = "standard") -> AioConfig:
    """Client settings: explicit retry mode, bounded timeouts, a pool sized for the pollers and batchers."""
    return AioConfig(
        retries={"mode": retry_mode, "max_attempts": 3},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=pool,
    )


@asynccontextmanager
async def create_client(service: str, config: AioConfig | None = None) -> AsyncIterator[Any]:
    """An aiobotocore client; endpoint, region and credentials come from the standard AWS variables."""
    session = get_session()
    async with session.create_client(service, config=config or client_config()) as client:
        yield client


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore exception, or its class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


#: Exceptions an SQS call can raise that mean "this call failed", not "the program is broken".
CALL_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, OSError, TimeoutError)


@dataclass(slots=True)
class _Pending:
    entry: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: str | None = None


class Batcher:
    """Collects entries for a ``*Batch`` SQS call: flushes at 10 entries or after ``linger`` seconds.

    ``await submit(entry)`` returns None on success or the error code of that entry. Several flushers
    run at once so one slow call never stalls the others. Whole-call failures are retried with
    backoff a bounded number of times; entries still failing are reported, never silently dropped.
    """

    def __init__(
        self,
        client: Any,
        operation: str,
        queue_url: str,
        metrics: Metrics,
        *,
        linger: float = 0.01,
        flushers: int = 4,
        call_attempts: int = 3,
    ) -> None:
        self._client = client
        self._operation = operation
        self._method = {"DeleteMessageBatch": "delete_message_batch"}.get(
            operation, "change_message_visibility_batch"
        )
        self._queue_url = queue_url
        self._metrics = metrics
        self._linger = linger
        self._flushers = flushers
        self._call_attempts = call_attempts
        self._send, self._receive = anyio.create_memory_object_stream[_Pending](math.inf)

    async def submit(self, entry: dict[str, Any]) -> str | None:
        """Queue one entry (without ``Id``) and wait for its batch call; None means success."""
        pending = _Pending(entry)
        await self._send.send(pending)
        await pending.done.wait()
        return pending.error

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the flushers until ``close()``, then drain what is queued."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._flushers):
                    tg.start_soon(self._flusher, self._receive.clone())
                self._receive.close()
                task_status.started()
        finally:
            self._send.close()

    def close(self) -> None:
        """No more submissions: flushers finish what is queued and return."""
        self._send.close()

    async def _flusher(self, receive: anyio.abc.ObjectReceiveStream[_Pending]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                with anyio.move_on_after(self._linger):
                    while len(batch) < BATCH_MAX:
                        try:
                            batch.append(await receive.receive())
                        except anyio.EndOfStream:
                            break
                with anyio.CancelScope(shield=True):
                    await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        entries = [{"Id": str(i), **p.entry} for i, p in enumerate(batch)]
        remaining = dict(enumerate(batch))
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
                    await anyio.sleep(min(2.0, 0.2 * 2**attempt))
                    continue
                for pending in remaining.values():
                    pending.error = code
                break
            retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            if retried:  # botocore retried (throttling, 5xx) before succeeding: still errors worth counting
                self._metrics.sqs_errors.labels(self._operation).inc(retried)
            for failed in response.get("Failed", []):
                index = int(failed["Id"])
                batch[index].error = str(failed.get("Code", "Failed"))
                self._metrics.sqs_errors.labels(self._operation).inc()
            break
        for pending in batch:
            pending.done.set()
