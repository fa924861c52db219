"""What ``worker dlq`` shows of a subscription DLQ (pure): the SNS notifications SNS could not deliver.

A subscription DLQ holds what SNS failed to deliver to the subscribed queue (deleted, a policy refusing SNS,
a KMS key SNS may not use), in the form the queue would have received it: the SNS envelope (topic, SNS
MessageId, Subject, Timestamp, message attributes, the payload) or, with raw delivery, the bare payload
with the SNS message attributes as SQS ones. The worker never saw these messages, so they carry no failure
record. A DLQ is taken for a subscription DLQ when its queue policy lets SNS topics send to it.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from worker.engine.message import Message, MessageAttribute
from worker.ops.queue_policy import topics_allowed_to_send
from worker.timestamps import iso_utc

#: Attribute values are shown up to this many characters (they route messages; bodies are never shown).
VALUE_CHARS = 64
NO_RECORD_LABEL = "(no worker record: SNS could not deliver it)"


def subscription_dlq_info(attributes: Mapping[str, str], arn: str) -> dict[str, Any] | None:
    """``{"topics": [...]}`` when the queue policy lets SNS topics send here, else None."""
    topics = topics_allowed_to_send(attributes.get("Policy"), arn)
    return {"topics": topics} if topics else None


def _shown(attribute: MessageAttribute) -> str:
    if isinstance(attribute.value, bytes):
        return f"<{len(attribute.value)} bytes>"
    if attribute.kind == "Binary":
        try:
            return f"<{len(base64.b64decode(attribute.value, validate=True))} bytes>"
        except ValueError:
            return "<binary>"
    text = attribute.value
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


def sns_details(message: Message) -> dict[str, Any] | None:
    """Topic, SNS MessageId, Subject, publish time and SNS message attributes of an envelope; None if raw."""
    info = message.sns
    if info is None:
        return None
    own = set(message.sqs_attributes)
    return {
        "topic_arn": info.topic_arn,
        "topic": info.topic_arn.rsplit(":", 1)[-1],
        "message_id": info.message_id,
        "subject": info.subject,
        "published_at": iso_utc(info.timestamp) if info.timestamp else None,
        "attributes": {
            name: _shown(attribute)
            for name, attribute in sorted(message.attributes.items())
            if name not in own
        },
    }


def by_topic(rows: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    """How many SNS envelopes came from each topic."""
    return dict(Counter(row["topic"] for row in rows if row).most_common())


def header_lines(info: dict[str, Any] | None) -> list[str]:
    """The report's line saying this is a subscription DLQ."""
    if not info:
        return []
    topics = ", ".join(arn.rsplit(":", 1)[-1] for arn in info["topics"])
    return [f"  subscription DLQ of SNS topic(s) {topics}: what SNS could not deliver to the queue"]


def record_lines(sns: dict[str, Any] | None) -> list[str]:
    """The SNS part of one listed record."""
    if not sns:
        return []
    lines = [
        f"      sns: topic {sns['topic']}  message id {sns['message_id']}  "
        f"published {(sns['published_at'] or '-')[:19].replace('T', ' ')}"
    ]
    if sns["subject"]:
        lines.append(f"      subject: {sns['subject'][:100]}")
    if sns["attributes"]:
        shown = "  ".join(f"{name}={value}" for name, value in sns["attributes"].items())
        lines.append(f"      attributes: {shown}")
    return lines
