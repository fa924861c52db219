"""Idempotent handlers: `@idempotent` runs a handler once per key; memory and DynamoDB key stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.idempotency.decorator import Idempotent as Idempotent
from worker.idempotency.decorator import idempotent as idempotent
from worker.idempotency.store import Claimed as Claimed
from worker.idempotency.store import ClaimResult as ClaimResult
from worker.idempotency.store import Completed as Completed
from worker.idempotency.store import IdempotencyStore as IdempotencyStore
from worker.idempotency.store import InProgress as InProgress
from worker.idempotency.store import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from worker.idempotency.dynamodb import DynamoDBStore as DynamoDBStore


def __getattr__(name: str) -> Any:
    """``DynamoDBStore`` loads on first use (it brings the AWS client in)."""
    if name == "DynamoDBStore":
        from worker.idempotency.dynamodb import DynamoDBStore

        return DynamoDBStore
    raise AttributeError(f"module 'worker.idempotency' has no attribute {name!r}")
