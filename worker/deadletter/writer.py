"""Sends a failed message to the dead-letter queue: the copy is acknowledged before the source is deleted."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from worker.aws.client import CALL_ERRORS, error_code
from worker.deadletter.record import (
    DeadLetterTooLarge,
    FailureRecord,
    build_dead_letter,
    dead_letter_object,
    failure_record,
    read_failure,
)
from worker.engine.message import Message
from worker.engine.payloads import STORE_ERRORS, PayloadOffload
from worker.telemetry.metrics import Metrics
from worker.telemetry.tracing import dead_letter_trace

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


log = logging.getLogger("worker.deadletter")


class DeadLetterWriter:
    """Sends failed messages to the DLQ; ``send`` returns True only once SQS acknowledged the copy."""

    def __init__(
        self,
        client: SQSClient,
        dlq_url: str,
        *,
        source_queue_arn: str,
        handler: str,
        handler_version: str,
        metrics: Metrics,
        timeout: float = 10.0,
        offload: PayloadOffload | None = None,
    ) -> None:
        """``offload``: the S3 bucket a body with no room for its failure metadata goes to, if any."""
        self._offload = offload
        self._client = client
        self.dlq_url = dlq_url
        self._fifo = dlq_url.endswith(".fifo")
        self._source_arn = source_queue_arn
        self._handler = handler
        self._handler_version = handler_version
        self._metrics = metrics
        self._timeout = timeout

    async def send(
        self,
        message: Message,
        condition: str,
        error_type: str,
        error_message: str,
        attempts: int,
        *,
        handed_back: int = 0,
        version: tuple[str, str] | None = None,
    ) -> bool:
        """Write the DLQ copy with its failure record; False when it could not be acknowledged.

        ``version``: (handler, handler version) that ran, when not WORKER_HANDLER's (a canary's).
        """
        handler, handler_version = version or (self._handler, self._handler_version)
        trace_header, span = dead_letter_trace(message)
        record = failure_record(
            message,
            error_type=error_type,
            error_message=error_message,
            condition=condition,
            attempts=attempts,
            source_queue_arn=self._source_arn,
            handler=handler,
            handler_version=handler_version,
            now=datetime.now(UTC),
            previous=read_failure(message.sqs_attributes),
            handed_back=handed_back,
            trace=span,
        )
        try:
            request = build_dead_letter(message, record, fifo=self._fifo, trace_header=trace_header)
        except DeadLetterTooLarge:
            offloaded = await self._offloaded(message, record, trace_header)
            if offloaded is None:
                return False
            request = offloaded
        with anyio.move_on_after(self._timeout, shield=True):
            try:
                await self._client.send_message(QueueUrl=self.dlq_url, **request)
            except CALL_ERRORS as exc:
                self._metrics.sqs_errors.labels("SendMessage").inc()
                log.warning(
                    "dead-letter send failed; the message stays on the source queue",
                    extra={"event": "dead_letter_failed", "message_id": message.id, "error": error_code(exc)},
                )
                return False
            log.info(
                "dead-lettered",
                extra={
                    "event": "dead_lettered",
                    "message_id": message.id,
                    "condition": condition,
                    "error_type": error_type,
                    "attempts": attempts,
                },
            )
            return True
        self._metrics.sqs_errors.labels("SendMessage").inc()
        log.warning(
            "dead-letter send timed out", extra={"event": "dead_letter_failed", "message_id": message.id}
        )
        return False

    async def _offloaded(
        self, message: Message, record: FailureRecord, trace_header: str | None
    ) -> dict[str, Any] | None:
        """The DLQ copy with its body stored in S3 first (acknowledged before the send), or None."""
        if self._offload is None:
            log.error(
                "message too large to carry failure metadata; left for the queue's RedrivePolicy",
                extra={"event": "dead_letter_too_large", "message_id": message.id},
            )
            return None
        pointer = self._offload.pointer(dead_letter_object(record))
        try:
            request = build_dead_letter(
                message, record, fifo=self._fifo, offloaded=pointer, trace_header=trace_header
            )
        except DeadLetterTooLarge:  # the attributes alone leave no room
            log.error(  # noqa: TRY400 - an expected condition, no traceback wanted
                "message attributes too large to carry failure metadata; left for the queue's RedrivePolicy",
                extra={"event": "dead_letter_too_large", "message_id": message.id},
            )
            return None
        with anyio.move_on_after(self._timeout, shield=True):
            try:
                await self._offload.put(pointer, message.raw_body.encode())
            except STORE_ERRORS as exc:
                log.warning(
                    "dead-letter body could not be stored in S3; the message stays on the source queue",
                    extra={"event": "dead_letter_failed", "message_id": message.id, "error": error_code(exc)},
                )
                return None
            return request
        log.warning(
            "dead-letter body store timed out; the message stays on the source queue",
            extra={"event": "dead_letter_failed", "message_id": message.id, "error": "Timeout"},
        )
        return None
