"""Queue look-ups: a queue's depth by state, and a queue URL from its ARN or name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.aws.names import Arn, queue_name

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sqs.literals import QueueAttributeNameType
    from types_aiobotocore_sqs.type_defs import ReceiveMessageResultTypeDef


#: A queue's approximate counts by state (the names the metrics and reports use) and their attribute names.
DEPTH_ATTRIBUTES: dict[str, QueueAttributeNameType] = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


async def queue_depth(client: SQSClient, url: str) -> dict[str, int]:
    """A queue's approximate message counts by state: visible, in_flight, delayed (one GetQueueAttributes)."""
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=list(DEPTH_ATTRIBUTES.values()))
    attrs = response["Attributes"]
    return {state: int(attrs.get(name, "0")) for state, name in DEPTH_ATTRIBUTES.items()}


async def lookup_queue_url(client: SQSClient, ref: str) -> str:
    """The URL of a queue given by ARN (any account) or name (this account): one GetQueueUrl."""
    kwargs = {"QueueName": queue_name(ref)}
    if ref.startswith("arn:"):
        arn = Arn.parse(ref)
        if not arn.is_sqs_queue:
            raise ValueError(f"not an SQS queue ARN: {ref!r}")
        kwargs["QueueOwnerAWSAccountId"] = arn.account
    response = await client.get_queue_url(**kwargs)
    return str(response["QueueUrl"])


async def receive(
    client: SQSClient, url: str, most: int, *, wait: int, visibility: int
) -> ReceiveMessageResultTypeDef:
    """One ReceiveMessage with every attribute: the response (``Messages`` may be absent when empty)."""
    return await client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=most,
        WaitTimeSeconds=wait,
        VisibilityTimeout=visibility,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],  # AWSTraceHeader included: the trace context (docs/tracing.md)
    )
