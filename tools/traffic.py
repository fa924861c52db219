"""Traffic generator for the compose stack: the demo's order mix, published to an SNS topic at a steady rate.

    python tools/traffic.py --topic-arn arn:aws:sns:us-east-1:000000000000:orders --rate 5
    python tools/traffic.py --count 100        # a burst of 100, then exit

The mix (successes, blips, flaky and slow orders, poison, invalid and garbage bodies) is the demo's
(``worker.devkit.demo_traffic.build_orders``), published ten per ``PublishBatch`` with its ``publish``; every
batch gets its own seed and order ids, so the dashboard shows every outcome within a minute. Endpoint,
region and credentials come from the standard AWS_* variables, like the worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TextIO

import anyio

from worker.devkit.demo_traffic import build_orders, publish

BATCH = 10


def batch(number: int, size: int, seed: int) -> list[tuple[str, str]]:
    """``size`` orders of the demo mix, with order ids unique to batch ``number``."""
    orders = []
    for index, (scenario, body) in enumerate(build_orders(size, seed=seed + number)):
        if scenario == "garbage":
            orders.append((scenario, body))
            continue
        doc = json.loads(body)
        doc["order_id"] = f"o-{number:06d}-{index}"
        orders.append((scenario, json.dumps(doc)))
    return orders


async def run(topic_arn: str, *, rate: float, count: int, seed: int, out: TextIO | None = None) -> int:
    """Publish at ``rate`` messages/s until ``count`` are sent (0: forever); returns how many were sent."""
    sent = 0
    started = time.monotonic()
    next_report = started
    number = 0
    while count == 0 or sent < count:
        size = BATCH if count == 0 else min(BATCH, count - sent)
        await publish(topic_arn, batch(number, size, seed))
        sent += size
        number += 1
        now = time.monotonic()
        if now >= next_report or (count and sent >= count):
            print(f"traffic: {sent} orders published to {topic_arn}", file=out or sys.stdout, flush=True)
            next_report = now + 10
        await anyio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    return sent


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and publish."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--topic-arn",
        default=os.environ.get("TRAFFIC_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:orders"),
        help="SNS topic to publish to (env TRAFFIC_TOPIC_ARN)",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (default 0: never)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="seed of the mix")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.count < 0:
        parser.error("--rate must be positive and --count not negative")
    anyio.run(lambda: run(args.topic_arn, rate=args.rate, count=args.count, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
