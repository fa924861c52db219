"""Native-mode redrive: an SQS message move task (StartMessageMoveTask), followed and cancellable.

SQS moves the messages itself, unchanged: it cannot raise the redrive counter or apply filters. Without a
destination it returns only messages its own RedrivePolicy moved (they carry ``DeadLetterQueueSourceArn``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import ClientError

from worker.aws.client import CALL_ERRORS, error_code
from worker.ops.progress import Progress, Tally
from worker.ops.settings import QueueRef, ToolError
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sqs.type_defs import ListMessageMoveTasksResultEntryTypeDef


log = logging.getLogger("worker.redrive")

#: StartMessageMoveTask's MaxNumberOfMessagesPerSecond upper bound.
MAX_NATIVE_RATE = 500
FINAL = frozenset({"COMPLETED", "CANCELLED", "FAILED"})


@dataclass(frozen=True, slots=True)
class NativeResult:
    """How the move task ended."""

    status: str
    moved: int
    to_move: int | None
    failure_reason: str | None
    task_handle: str


def _message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}".rstrip(": ")
    return error_code(exc)


async def run_native(
    client: SQSClient,
    dlq: QueueRef,
    *,
    destination_arn: str | None,
    rate: float | None,
    metrics: Metrics,
    progress: Progress,
    stop: anyio.Event,
    max_poll_interval: float = 1.0,
) -> NativeResult:
    """Start the move task, follow it with ListMessageMoveTasks, cancel it when ``stop`` is set."""
    request: dict[str, Any] = {"SourceArn": dlq.arn}
    if destination_arn:
        request["DestinationArn"] = destination_arn
    if rate:
        request["MaxNumberOfMessagesPerSecond"] = int(rate)
    try:
        handle = str((await client.start_message_move_task(**request))["TaskHandle"])
    except CALL_ERRORS as exc:
        raise ToolError(f"SQS refused to start a message move task on {dlq.name}: {_message(exc)}") from None
    log.info(
        "message move task started",
        extra={
            "event": "redrive_native_started",
            "dlq": dlq.name,
            "destination": destination_arn or "sources",
        },
    )
    cancelled = False
    entry: ListMessageMoveTasksResultEntryTypeDef = {}
    poll_interval = 0.05  # short tasks end within the first polls; long ones are polled once a second
    while True:
        with anyio.move_on_after(poll_interval):
            await stop.wait()
        poll_interval = min(max_poll_interval, poll_interval * 1.5)
        if stop.is_set() and not cancelled:
            cancelled = True
            try:
                await client.cancel_message_move_task(TaskHandle=handle)
                log.info("message move task cancelled", extra={"event": "redrive_native_cancel"})
            except CALL_ERRORS as exc:  # it may have finished meanwhile
                log.warning(
                    "cancel failed", extra={"event": "redrive_native_cancel_failed", "error": _message(exc)}
                )
        try:
            response = await client.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=1)
        except CALL_ERRORS as exc:
            log.warning(
                "ListMessageMoveTasks failed",
                extra={"event": "redrive_native_poll_failed", "error": error_code(exc)},
            )
            continue
        results = response.get("Results", [])
        if not results:
            continue
        entry = results[0]
        moved = int(entry.get("ApproximateNumberOfMessagesMoved", 0))
        progress.update(Tally(moved=moved))
        if entry.get("Status") in FINAL:
            break
    moved = int(entry.get("ApproximateNumberOfMessagesMoved", 0))
    metrics.redrive.labels(dlq.name, "moved").inc(moved)
    to_move = entry.get("ApproximateNumberOfMessagesToMove")
    return NativeResult(
        status=str(entry.get("Status")),
        moved=moved,
        to_move=int(to_move) if to_move is not None else None,
        failure_reason=entry.get("FailureReason"),
        task_handle=handle,
    )
