"""Message parsing on real deliveries from LocalStack: raw SQS, SNS envelope, SNS raw delivery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from worker.engine.message import Message, parse_message

pytestmark = pytest.mark.localstack

SQS_ATTRIBUTES = {
    "tenant": {"DataType": "String", "StringValue": "acme ü"},
    "priority": {"DataType": "Number", "StringValue": "7"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffbytes"},
    "kind": {"DataType": "String.custom", "StringValue": "order"},
}
SNS_ATTRIBUTES = {
    "tenant": {"DataType": "String", "StringValue": "acme ü"},
    "priority": {"DataType": "Number", "StringValue": "7"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffbytes"},
}


async def receive_one(sqs: Any, url: str) -> Message:
    """Long-poll one message with all attributes and parse it."""
    for _ in range(10):
        response = await sqs.receive_message(
            QueueUrl=url,
            WaitTimeSeconds=2,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        if response.get("Messages"):
            return parse_message(response["Messages"][0], url)
    raise AssertionError("no message arrived")


def check_attributes(message: Message) -> None:
    """The three attribute types arrive with their values."""
    assert message.attributes["tenant"].value == "acme ü"
    assert message.attributes["tenant"].data_type == "String"
    assert message.attributes["priority"].value == "7"
    assert message.attributes["priority"].kind == "Number"
    assert message.attributes["blob"].value == b"\x00\xffbytes"


async def test_raw_sqs_message(sqs: Any, queues: QueueFactory) -> None:
    """A direct SQS message: body is raw_body, attributes of each type, system attributes, no SNS."""
    q = await queues()
    body = json.dumps({"order": unique("o"), "note": "日本"})
    sent = await sqs.send_message(QueueUrl=q["url"], MessageBody=body, MessageAttributes=SQS_ATTRIBUTES)
    message = await receive_one(sqs, q["url"])
    assert message.id == sent["MessageId"]
    assert message.body == message.raw_body == body
    assert message.json()["note"] == "日本"
    check_attributes(message)
    assert message.attributes["kind"].data_type == "String.custom"
    assert message.receive_count == 1
    assert message.sent_at is not None
    assert message.first_received_at is not None
    assert message.sns is None
    assert message.queue_url == q["url"]


async def test_sns_envelope_is_unwrapped(sqs: Any, aws: Any, queues: QueueFactory) -> None:
    """Through SNS without raw delivery: payload unwrapped, SNS metadata and attributes exposed."""
    q = await queues()
    sns = await aws("sns")
    topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
    try:
        await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=q["arn"])
        payload = json.dumps({"order": unique("o")})
        published = await sns.publish(
            TopicArn=topic, Message=payload, Subject="new order", MessageAttributes=SNS_ATTRIBUTES
        )
        message = await receive_one(sqs, q["url"])
        assert message.body == payload
        assert json.loads(message.raw_body)["Message"] == payload
        assert message.sns is not None
        assert message.sns.topic_arn == topic
        assert message.sns.message_id == published["MessageId"]
        assert message.sns.subject == "new order"
        assert message.sns.timestamp is not None
        check_attributes(message)
    finally:
        await sns.delete_topic(TopicArn=topic)


async def test_sns_raw_delivery(sqs: Any, aws: Any, queues: QueueFactory) -> None:
    """Through SNS with raw delivery: the body is the payload and SNS attributes become SQS ones."""
    q = await queues()
    sns = await aws("sns")
    topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
    try:
        await sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=q["arn"], Attributes={"RawMessageDelivery": "true"}
        )
        payload = json.dumps({"order": unique("o")})
        await sns.publish(TopicArn=topic, Message=payload, MessageAttributes=SNS_ATTRIBUTES)
        message = await receive_one(sqs, q["url"])
        assert message.body == message.raw_body == payload
        assert message.sns is None
        check_attributes(message)
    finally:
        await sns.delete_topic(TopicArn=topic)
