"""`worker demo`'s stack: the SNS topics, SQS queues and S3 bucket it creates, and what they hold.

SNS topic -> SQS queue (RedrivePolicy) -> worker -> DLQ, with failure records archived in S3, failure
alerts on an SNS topic (delivered to an inbox queue) and success confirmations on an SQS queue. The
orders topic, queue, DLQ, subscription and subscription DLQ are `worker topology`'s (one definition).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.aws.client import client_config, create_client
from worker.aws.queues import queue_depth
from worker.ops.topology import ensure_topology
from worker.ops.topology_records import Status
from worker.ops.topology_spec import build_spec

if TYPE_CHECKING:
    from types_aiobotocore_sqs.literals import QueueAttributeNameType


@dataclass
class Topology:
    """Names and addresses of everything the demo creates."""

    topic_arn: str
    queue_url: str
    dlq_url: str
    confirmations_url: str
    alerts_arn: str
    alerts_inbox_url: str
    bucket: str
    prefix: str = "failed"
    #: Where SNS puts what it could not deliver to the queue (the subscription's RedrivePolicy).
    subscription_dlq_url: str = ""


@dataclass(frozen=True)
class Consumer:
    """One consumer of the orders topic as `worker topology` creates it: queue, DLQ, subscription DLQ."""

    topic_arn: str
    queue_url: str
    dlq_url: str
    subscription_dlq_url: str


async def ensure_consumer(prefix: str, queue: str, max_receive_count: int) -> Consumer:
    """`worker topology`'s topic, ``queue`` subscribed to it, its DLQ and subscription DLQ, all emptied."""
    spec = build_spec(topic=f"{prefix}-orders", queue=queue, max_receive_count=max_receive_count)
    orders = await ensure_topology(spec)
    if not orders.ok:
        failing = [c.what for c in orders.checks if c.status != Status.OK]
        raise RuntimeError(f"demo topology incomplete: {', '.join(failing)}")
    consumer = Consumer(
        orders.arns.topic,
        str(orders.seen.queue.url),
        str(orders.seen.dlq.url),
        str(orders.seen.subscription_dlq.url),
    )
    async with create_client("sqs", client_config()) as sqs:
        for url in (consumer.queue_url, consumer.dlq_url, consumer.subscription_dlq_url):
            await sqs.purge_queue(QueueUrl=url)
    return consumer


async def create_topology(prefix: str, max_receive_count: int) -> Topology:
    """Create the topic, queues, bucket and subscriptions (idempotent: reruns reuse them, emptied)."""
    orders = await ensure_consumer(prefix, f"{prefix}-orders", max_receive_count)
    topic_arn, queue_url, dlq_url = orders.topic_arn, orders.queue_url, orders.dlq_url
    subscription_dlq_url = orders.subscription_dlq_url
    async with (
        create_client("sqs", client_config()) as sqs,
        create_client("sns", client_config()) as sns,
        create_client("s3", client_config()) as s3,
    ):

        async def queue(
            name: str, attributes: Mapping[QueueAttributeNameType, str] | None = None
        ) -> tuple[str, str]:
            url = (await sqs.create_queue(QueueName=name, Attributes=attributes or {}))["QueueUrl"]
            await sqs.purge_queue(QueueUrl=url)
            arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]
            return url, arn["QueueArn"]

        confirmations_url, _ = await queue(f"{prefix}-orders-confirmed")
        inbox_url, inbox_arn = await queue(f"{prefix}-alerts-inbox")
        alerts_arn = (await sns.create_topic(Name=f"{prefix}-alerts"))["TopicArn"]
        await sns.subscribe(
            TopicArn=alerts_arn, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"}
        )
        bucket = f"{prefix}-failures"
        await s3.create_bucket(Bucket=bucket)
        listed = await s3.list_objects_v2(Bucket=bucket)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=bucket, Key=item["Key"])
    return Topology(
        topic_arn,
        queue_url,
        dlq_url,
        confirmations_url,
        alerts_arn,
        inbox_url,
        bucket,
        subscription_dlq_url=subscription_dlq_url,
    )


async def count_messages(url: str) -> int:
    """Visible + in-flight + delayed messages."""
    async with create_client("sqs", client_config()) as sqs:
        return sum((await queue_depth(sqs, url)).values())


async def count_s3(bucket: str, prefix: str) -> int:
    """Objects under the prefix."""
    async with create_client("s3", client_config()) as s3:
        total = 0
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
            total += len(page.get("Contents", []))
        return total
