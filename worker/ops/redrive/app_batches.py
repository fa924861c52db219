"""Delivery of an app-mode batch: send the planned copies, then delete the acknowledged ones from the DLQ.

Copies go out with ``SendMessageBatch`` per target (one message per FIFO group per call, so a group's order
holds even when a send fails); only the acknowledged ones are deleted with ``DeleteMessageBatch``. A message
not moved stays in the DLQ with the reason (``Outcomes``), and its ``--max`` reservation is given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from worker.aws.client import CALL_ERRORS, error_code
from worker.limits import SQS_BATCH_MAX, SQS_MAX_MESSAGE_BYTES
from worker.ops.redrive.app_budget import Budget
from worker.ops.redrive.app_results import Outcomes, _Received
from worker.ops.redrive.plan import DeadLetteredMessage, Plan, Verdict
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sqs.type_defs import (
        DeleteMessageBatchRequestEntryTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )


class Delivery:
    """Sends and deletes the moves of each received batch of one pass."""

    def __init__(
        self,
        client: SQSClient,
        dlq_url: str,
        *,
        watch: bool,
        metrics: Metrics,
        outcomes: Outcomes,
        budget: Budget,
    ) -> None:
        self._client = client
        self._dlq_url = dlq_url
        self._watch = watch
        self._metrics = metrics
        self._outcomes = outcomes
        self._budget = budget
        #: Original ids this one-shot pass moved: a copy back in the DLQ meanwhile waits for the next pass.
        self.moved_ids: set[str] = set()

    async def send_all(self, batch: _Received, moves: list[tuple[DeadLetteredMessage, str, Plan]]) -> None:
        """Send each (message, target, plan), then delete the acknowledged ones from the DLQ."""
        by_target: dict[str, list[tuple[DeadLetteredMessage, Plan]]] = {}
        for dead, target, plan in moves:
            by_target.setdefault(target, []).append((dead, plan))
        sent: list[tuple[DeadLetteredMessage, str, Plan]] = []
        for target, items in by_target.items():
            failed_groups: set[str] = set()
            for chunk in _chunks(items, fifo=target.endswith(".fifo")):
                ready = []
                for dead, plan in chunk:
                    group = dead.message.group_id
                    if target.endswith(".fifo") and group in failed_groups:
                        self._budget.unreserve()
                        self._outcomes.leave(
                            batch,
                            dead,
                            Verdict.FAIL,
                            "an earlier message of its FIFO group failed",
                            target=target,
                        )
                    else:
                        ready.append((dead, plan))
                for (dead, plan), error in zip(
                    ready, await send_batch(self._client, target, ready, self._metrics), strict=True
                ):
                    if error is None:
                        sent.append((dead, target, plan))
                        if not self._watch:  # at once: the source's worker may dead-letter it again
                            self.moved_ids.add(dead.original_id)  # before this pass deletes the old copy
                        continue
                    self._budget.unreserve()
                    self._outcomes.leave(batch, dead, Verdict.FAIL, error, target=target)
                    if dead.message.group_id:
                        failed_groups.add(dead.message.group_id)
        if sent:
            await self._delete(batch, sent)

    async def _delete(self, batch: _Received, sent: list[tuple[DeadLetteredMessage, str, Plan]]) -> None:
        for start in range(0, len(sent), SQS_BATCH_MAX):
            chunk = sent[start : start + SQS_BATCH_MAX]
            handles = [dead.message.receipt_handle for dead, _, _ in chunk]
            failed = await delete_batch(self._client, self._dlq_url, handles, self._metrics)
            for i, (dead, target, plan) in enumerate(chunk):
                self._budget.outstanding -= 1
                if i in failed:
                    self._budget.reserved -= 1
                    self._outcomes.leave(
                        batch,
                        dead,
                        Verdict.FAIL,
                        f"sent, but not deleted from the DLQ ({failed[i]}): a later redrive sends it again",
                        target=target,
                    )
                else:
                    self._outcomes.record(dead, Verdict.MOVE, target, "", plan.redrive_count)
            self._budget.settle()


async def send_batch(
    client: SQSClient, target: str, items: list[tuple[DeadLetteredMessage, Plan]], metrics: Metrics
) -> list[str | None]:
    """SendMessageBatch; per item None (acknowledged) or the reason it was not."""
    if not items:
        return []
    # plan_redrive (pure) builds each request as SendMessage keywords; with an Id it is a batch entry.
    entries = [
        cast("SendMessageBatchRequestEntryTypeDef", {"Id": str(i), **(plan.request or {})})
        for i, (_, plan) in enumerate(items)
    ]
    try:
        response = await client.send_message_batch(QueueUrl=target, Entries=entries)
    except CALL_ERRORS as exc:
        metrics.sqs_errors.labels("SendMessageBatch").inc()
        return [f"the target did not take it ({error_code(exc)})"] * len(items)
    errors: list[str | None] = [None] * len(items)
    acknowledged = {int(ok["Id"]) for ok in response.get("Successful", [])}
    for failed in response.get("Failed", []):
        metrics.sqs_errors.labels("SendMessageBatch").inc()
        detail = failed.get("Message") or ""
        errors[int(failed["Id"])] = (
            f"the target rejected it ({failed.get('Code', 'Failed')}{': ' + detail if detail else ''})"
        )
    for i in range(len(items)):
        if errors[i] is None and i not in acknowledged:
            errors[i] = "the target did not acknowledge it"
    return errors


async def delete_batch(
    client: SQSClient, queue_url: str, receipt_handles: Sequence[str], metrics: Metrics
) -> dict[int, str]:
    """DeleteMessageBatch (at most ``SQS_BATCH_MAX`` handles); the error code of each entry not deleted."""
    entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
        {"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(receipt_handles)
    ]
    failed: dict[int, str] = {}
    try:
        response = await client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        for entry in response.get("Failed", []):
            failed[int(entry["Id"])] = str(entry.get("Code", "Failed"))
    except CALL_ERRORS as exc:
        failed = dict.fromkeys(range(len(entries)), error_code(exc))
    if failed:
        metrics.sqs_errors.labels("DeleteMessageBatch").inc(len(failed))
    return failed


def _chunks(
    items: list[tuple[DeadLetteredMessage, Plan]], *, fifo: bool
) -> list[list[tuple[DeadLetteredMessage, Plan]]]:
    """SendMessageBatch calls: at most 10 entries and 1 MiB each; on FIFO, one message per group per call."""
    chunks: list[list[tuple[DeadLetteredMessage, Plan]]] = []
    pending = list(items)
    while pending:
        chunk: list[tuple[DeadLetteredMessage, Plan]] = []
        size = 0
        groups: set[str | None] = set()
        rest: list[tuple[DeadLetteredMessage, Plan]] = []
        for item in pending:
            dead, plan = item
            nbytes = _request_size(plan)
            group = dead.message.group_id
            if (
                len(chunk) >= SQS_BATCH_MAX
                or (chunk and size + nbytes > SQS_MAX_MESSAGE_BYTES)
                or (fifo and group in groups)
                or (fifo and rest and any(r[0].message.group_id == group for r in rest))
            ):
                rest.append(item)
                continue
            chunk.append(item)
            size += nbytes
            groups.add(group)
        chunks.append(chunk)
        pending = rest
    return chunks


def _request_size(plan: Plan) -> int:
    request = plan.request or {}
    size = len(str(request.get("MessageBody", "")).encode())
    for name, attr in (request.get("MessageAttributes") or {}).items():
        value = attr.get("StringValue", attr.get("BinaryValue", b""))
        raw = value if isinstance(value, bytes) else str(value).encode()
        size += len(name.encode()) + len(str(attr.get("DataType", "")).encode()) + len(raw)
    return size
