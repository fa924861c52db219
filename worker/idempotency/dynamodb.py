"""DynamoDBStore: idempotency keys shared by a fleet, in a DynamoDB table (conditional writes, TTL attribute).

One item per key: ``pk`` (string, the table's partition key), ``status`` (IN_PROGRESS or COMPLETED),
``expires_at`` (epoch seconds, a Number: point the table's TTL at it), ``token`` (the claim's owner) and,
once completed, ``result`` (the JSON text). The claim is a PutItem conditioned on
``attribute_not_exists(pk) OR expires_at < :now``: of two concurrent claims exactly one is written, and an
item DynamoDB's TTL has not swept yet still counts as absent once it expired. ``complete`` and ``release``
are conditioned on the token, so a claim taken over after it lapsed is never clobbered by its first owner.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import AsyncExitStack
from typing import Any

import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from worker.aws.client import client_config, create_client, error_code
from worker.idempotency.store import (
    COMPLETED,
    IN_PROGRESS,
    Claimed,
    ClaimResult,
    Completed,
    InProgress,
    new_token,
)

log = logging.getLogger("worker.idempotency")

#: DynamoDB's item size limit; a result that would not fit is stored as None.
MAX_ITEM_BYTES = 400 * 1024
#: Room kept for the item's other attributes and their names.
ITEM_OVERHEAD_BYTES = 256
#: DynamoDB's partition key limit; a longer key is stored as its SHA-256.
MAX_KEY_BYTES = 2048
#: Claims retried when the item that blocked one lapses or goes away before it can be read.
CLAIM_TRIES = 3
_CONDITION_FAILED = "ConditionalCheckFailedException"
_NAMES = {"#s": "status", "#e": "expires_at", "#t": "token", "#r": "result"}


class DynamoDBStore:
    """Idempotency keys in a DynamoDB table (partition key ``pk``, a string): for workers on many hosts.

    The client comes from the standard AWS chain (region, credentials, ``AWS_ENDPOINT_URL``) unless
    ``endpoint_url`` is given; it is created on first use, inside the running event loop, and closed by
    ``aclose()``. Needs dynamodb:GetItem, PutItem, UpdateItem and DeleteItem on the table.
    """

    def __init__(
        self, table: str, endpoint_url: str | None = None, *, config: AioConfig | None = None
    ) -> None:
        if not table:
            raise ValueError("DynamoDBStore needs a table name")
        self.table = table
        self.endpoint_url = endpoint_url
        self._config = config or client_config(read_timeout=10, pool=20)
        self._stack: AsyncExitStack | None = None
        self._dynamodb: Any = None
        self._lock: anyio.Lock | None = None

    async def __aenter__(self) -> DynamoDBStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client (a later call opens a new one)."""
        stack, self._stack, self._dynamodb = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _client(self) -> Any:
        if self._dynamodb is None:
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:
                if self._dynamodb is None:
                    stack = AsyncExitStack()
                    client = await stack.enter_async_context(
                        create_client("dynamodb", self._config, endpoint_url=self.endpoint_url)
                    )
                    self._stack, self._dynamodb = stack, client
        return self._dynamodb

    async def claim(self, key: str, now: float, in_progress_until: float) -> ClaimResult:
        """Take ``key`` with a conditional PutItem; a live item's answer when the condition fails."""
        client = await self._client()
        pk = partition_key(key)
        for _ in range(CLAIM_TRIES):
            token = new_token()
            try:
                await client.put_item(
                    TableName=self.table,
                    Item={
                        "pk": {"S": pk},
                        "status": {"S": IN_PROGRESS},
                        "expires_at": {"N": str(math.ceil(in_progress_until))},
                        "token": {"S": token},
                    },
                    ConditionExpression="attribute_not_exists(pk) OR #e < :now",
                    ExpressionAttributeNames={"#e": "expires_at"},
                    ExpressionAttributeValues={":now": {"N": _number(now)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return Claimed(token)
            except ClientError as exc:
                if error_code(exc) != _CONDITION_FAILED:
                    raise
                old: Any = exc.response.get("Item")
                item = old or await self._read(client, pk)
            if item is not None and not float(item["expires_at"]["N"]) < now:
                if item["status"]["S"] == COMPLETED:
                    return Completed(item["result"]["S"] if "result" in item else None)
                return InProgress(float(item["expires_at"]["N"]))
            # It lapsed or was released between the write and the read: claim again.
        return InProgress(now + 1)

    async def _read(self, client: Any, pk: str) -> dict[str, Any] | None:
        answer = await client.get_item(TableName=self.table, Key={"pk": {"S": pk}}, ConsistentRead=True)
        item: dict[str, Any] | None = answer.get("Item")
        return item

    async def complete(self, key: str, result: str | None, expires_at: float, *, token: str) -> None:
        """Mark ``key`` completed with ``result`` (None if it cannot fit in an item) if ``token`` holds it."""
        pk = partition_key(key)
        if (
            result is not None
            and len(result.encode()) + len(pk.encode()) + ITEM_OVERHEAD_BYTES > MAX_ITEM_BYTES
        ):
            log.warning(
                "idempotency result too large for a DynamoDB item: stored as None",
                extra={
                    "event": "idempotency_result_too_large",
                    "table": self.table,
                    "bytes": len(result.encode()),
                },
            )
            result = None
        values: dict[str, Any] = {
            ":completed": {"S": COMPLETED},
            ":expires": {"N": str(math.ceil(expires_at))},
            ":token": {"S": token},
        }
        update = "SET #s = :completed, #e = :expires"
        if result is None:
            update += " REMOVE #r"
        else:
            update += ", #r = :result"
            values[":result"] = {"S": result}
        client = await self._client()
        try:
            await client.update_item(
                TableName=self.table,
                Key={"pk": {"S": pk}},
                UpdateExpression=update,
                ConditionExpression="#t = :token",
                ExpressionAttributeNames=_NAMES,  # all four used: status, expires_at, result, token
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) != _CONDITION_FAILED:
                raise
            log.warning(
                "idempotency claim lapsed and was taken over before the handler completed",
                extra={"event": "idempotency_claim_lost", "table": self.table},
            )

    async def release(self, key: str, *, token: str) -> None:
        """Delete ``key``'s item if ``token`` still holds it."""
        client = await self._client()
        try:
            await client.delete_item(
                TableName=self.table,
                Key={"pk": {"S": partition_key(key)}},
                ConditionExpression="#t = :token",
                ExpressionAttributeNames={"#t": "token"},
                ExpressionAttributeValues={":token": {"S": token}},
            )
        except ClientError as exc:
            if error_code(exc) != _CONDITION_FAILED:
                raise
            # Someone else's claim now (ours lapsed and was taken over): not ours to release.

    async def create_table(self, *, wait_seconds: float = 60.0) -> None:
        """Create the table (on-demand, partition key ``pk``), TTL on ``expires_at``; fine if it exists."""
        client = await self._client()
        try:
            await client.create_table(
                TableName=self.table,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":
                raise
        await client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": max(1, math.ceil(wait_seconds))}
        )
        ttl = await client.describe_time_to_live(TableName=self.table)
        if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") not in {"ENABLED", "ENABLING"}:
            await client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
            )


def partition_key(key: str) -> str:
    """The item's ``pk``: the key itself, or ``sha256:<hex>`` of it when it exceeds DynamoDB's 2,048 bytes."""
    if len(key.encode()) <= MAX_KEY_BYTES:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _number(value: float) -> str:
    """A DynamoDB Number for an epoch time: fixed-point, microseconds."""
    return f"{value:.6f}"
