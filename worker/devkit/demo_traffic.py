"""`worker demo`'s traffic: the order mix, built deterministically and published to the SNS topic.

A few hundred orders mixing successes, transient failures, timeouts and poison messages; tools/traffic.py
publishes the same mix to the compose stack.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types_aiobotocore_sns.type_defs import PublishBatchRequestEntryTypeDef

from worker.aws.client import client_config, create_client

#: The mix of scenarios published (weights); see worker/examples/orders.py for what each does.
MIX = {
    "ok": 70,
    "blip": 8,  # fails once, the immediate retry succeeds
    "flaky": 6,  # fails the first delivery, a delayed retry succeeds
    "slow": 4,  # times out on the first delivery, then succeeds
    "stuck": 2,  # always times out: dead-lettered with condition Timeout
    "poison": 5,  # PermanentError: dead-lettered at once
    "invalid": 3,  # fails the payload model: SchemaError
    "garbage": 2,  # not JSON at all: DecodeError
}


def build_orders(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """(scenario, SNS message) pairs: the mix above, shuffled deterministically."""
    rng = random.Random(seed)
    scenarios = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    orders = []
    for index, scenario in enumerate(scenarios):
        order = {
            "order_id": f"o-{index:05d}",
            "sku": f"SKU-{rng.randint(1, 40)}",
            "quantity": rng.randint(1, 5),
        }
        if scenario == "invalid":
            order["quantity"] = 0
        elif scenario != "garbage":
            order["scenario"] = scenario
        body = "<order>not json</order>" if scenario == "garbage" else json.dumps(order)
        orders.append((scenario, body))
    return orders


async def publish(topic_arn: str, orders: list[tuple[str, str]]) -> None:
    """Publish the orders to the SNS topic, ten per call."""
    async with create_client("sns", client_config()) as sns:
        for start in range(0, len(orders), 10):
            entries: list[PublishBatchRequestEntryTypeDef] = [
                {"Id": str(i), "Message": body} for i, (_, body) in enumerate(orders[start : start + 10])
            ]
            response = await sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
            if response.get("Failed"):
                raise RuntimeError(f"SNS refused {len(response['Failed'])} messages")
