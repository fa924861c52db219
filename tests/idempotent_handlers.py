"""Handlers for the idempotency tests, loaded by path like a user's: @idempotent, their runs counted."""

from __future__ import annotations

import collections
from typing import Any

from pydantic import BaseModel

from worker import Message, idempotent

#: Runs of each handler body, per the payload's ``run`` field, in this process.
RUNS: collections.Counter[str] = collections.Counter()


@idempotent(key="payload:order.id")
async def charge(message: Message) -> Any:
    """Charges an order once per ``order.id``: the result names the run and the message that did it."""
    doc = message.json()
    RUNS[doc["run"]] += 1
    return {"charged": doc["order"]["id"], "by": message.id}


class Payment(BaseModel):
    """A payload model: the handler below receives it validated."""

    run: str
    id: str
    amount: int


@idempotent(key="payload:id")
async def typed(payment: Payment) -> Any:
    """A handler whose first parameter is a pydantic model."""
    RUNS[payment.run] += 1
    return {"paid": payment.amount}


@idempotent(key="payload:id")
def blocking(message: Message) -> Any:
    """A plain def handler (runs in the worker's thread)."""
    doc = message.json()
    RUNS[doc["run"]] += 1
    return {"thread": True, "id": doc["id"]}
