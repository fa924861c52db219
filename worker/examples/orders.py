"""The demo's order handler: each order's ``scenario`` field picks a behaviour worth watching."""

from __future__ import annotations

import random
import zlib
from typing import Any

import anyio
from pydantic import BaseModel, Field

from worker import Message, PermanentError

#: Per-process memory of first attempts, for the "blip" scenario (fails once, then succeeds).
_SEEN: set[str] = set()
#: How long a "slow" order takes; the demo sets the worker's timeout below it.
SLOW_SECONDS = 5.0
#: The version of ``handle_v2`` (``worker demo --canary`` rolls it out as a canary, and back).
V2_VERSION = "0.2.0"
#: ``handle_v2`` fails one order in this many (by a hash of the order id: the same orders every time).
V2_FAILS_ONE_IN = 3


class Order(BaseModel):
    """An order as published on the SNS topic."""

    order_id: str
    sku: str
    quantity: int = Field(gt=0)
    scenario: str = "ok"


async def handle(message: Message) -> dict[str, Any]:
    """Accept an order; misbehave as its scenario says (flaky, blip, slow, stuck, poison)."""
    order = message.model(Order)  # bad JSON -> DecodeError, bad fields -> SchemaError: both dead-letter
    scenario = order.scenario
    if scenario == "blip" and message.id not in _SEEN:
        _SEEN.add(message.id)
        raise ConnectionError("inventory service reset the connection")  # the immediate retry fixes it
    if scenario == "flaky" and message.receive_count < 2:
        raise ConnectionError("inventory service unavailable")  # fails the first delivery, then recovers
    if scenario == "slow" and message.receive_count < 2:
        await anyio.sleep(SLOW_SECONDS)  # times out on the first delivery only
    if scenario == "stuck":
        await anyio.sleep(SLOW_SECONDS)  # always times out: dead-lettered with condition Timeout
    if scenario == "poison":
        raise PermanentError(f"unknown sku {order.sku!r}")
    await anyio.sleep(random.uniform(0.002, 0.02))  # the real work
    return {"order_id": order.order_id, "status": "accepted", "quantity": order.quantity}


async def handle_v2(message: Message) -> dict[str, Any]:
    """Version 0.2.0, deliberately bad: ``handle``, but a third of the orders fail with a transient error."""
    order = message.model(Order)
    if zlib.crc32(order.order_id.encode()) % V2_FAILS_ONE_IN == 0:
        raise ConnectionError("pricing service rejected the v2 request")  # transient: retried, not dead
    return await handle(message)
