"""Messages a scan or a redrive keeps invisible until it ends, then gives back all at once.

A DLQ read for inspection, or by a redrive that leaves some messages where they are (filtered out,
failed, held by the loop guard), must not see the same message twice in one pass: the message stays
invisible (its lease extended while the pass runs) and is made visible again at the end with
``ChangeMessageVisibilityBatch(0)``. If the process dies, SQS makes them visible again when the lease
runs out: nothing is lost either way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio

from worker.aws.client import CALL_ERRORS, error_code
from worker.limits import SQS_BATCH_MAX

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef


log = logging.getLogger("worker.redrive")

#: Concurrent ChangeMessageVisibilityBatch calls when giving many messages back at once.
PARALLEL_CALLS = 8


async def change_visibility(
    client: SQSClient, queue_url: str, entries: Iterable[tuple[str, int]]
) -> list[str]:
    """Set each (receipt handle, seconds), 10 per call, several calls at once; the receipts that failed."""
    items = list(entries)
    failed: list[str] = []
    limiter = anyio.CapacityLimiter(PARALLEL_CALLS)

    async def one_batch(chunk: list[tuple[str, int]]) -> None:
        async with limiter:
            request: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": int(seconds)}
                for i, (receipt, seconds) in enumerate(chunk)
            ]
            try:
                response = await client.change_message_visibility_batch(QueueUrl=queue_url, Entries=request)
            except CALL_ERRORS as exc:
                log.warning(
                    "visibility change failed; those messages reappear when their lease ends",
                    extra={
                        "event": "redrive_visibility_failed",
                        "error": error_code(exc),
                        "count": len(chunk),
                    },
                )
                failed.extend(receipt for receipt, _ in chunk)
                return
            for entry in response.get("Failed", []):
                failed.append(chunk[int(entry["Id"])][0])

    async with anyio.create_task_group() as tg:
        for start in range(0, len(items), SQS_BATCH_MAX):
            tg.start_soon(one_batch, items[start : start + SQS_BATCH_MAX])
    return failed


class HeldMessages:
    """Receipt handles kept invisible for the length of a pass; ``release_all`` gives them back at once."""

    def __init__(self, client: SQSClient, queue_url: str, lease: float) -> None:
        self._client = client
        self._queue_url = queue_url
        self.lease = max(1, math.ceil(lease))
        self._receipts: dict[str, None] = {}

    def add(self, receipt: str) -> None:
        """Keep this message invisible until ``release_all``."""
        self._receipts[receipt] = None

    def __len__(self) -> int:
        return len(self._receipts)

    async def keep_alive(self) -> None:
        """Extend every held lease at a third of its length, until cancelled."""
        while True:
            await anyio.sleep(self.lease / 3)
            receipts = list(self._receipts)
            if receipts:
                for receipt in await change_visibility(
                    self._client, self._queue_url, ((r, self.lease) for r in receipts)
                ):
                    # A lease that could not be extended is lost: SQS shows the message again.
                    self._receipts.pop(receipt, None)

    async def release_all(self) -> int:
        """Make every held message visible again now; returns how many could not be (they reappear later)."""
        receipts, self._receipts = list(self._receipts), {}
        if not receipts:
            return 0
        return len(await change_visibility(self._client, self._queue_url, ((r, 0) for r in receipts)))
