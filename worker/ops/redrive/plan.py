"""What ``worker redrive`` does with one DLQ message (pure): read it, decide, build the redriven copy.

The redriven copy carries the original body byte for byte and the original attributes (``worker.failure``
removed, displaced ones put back), plus the failure record updated for the trip: ``redrive_count`` raised,
``redriven_at`` set, the original message id and first send time kept. The record rides along in
``worker.failure`` so that a later dead-letter appends it to its history (``deadletter.failure_record`` does
not count such a trip twice), and so that a copy the *broker* moves back to the DLQ still carries the raised
count: the loop guard holds whichever way a message returns. The copy keeps the DLQ message's
``AWSTraceHeader`` (a system attribute), so the redriven delivery stays in the producer's trace.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.aws.names import queue_name
from worker.deadletter.record import (
    FAILURE_ATTRIBUTE,
    DeadLetterTooLarge,
    FailureRecord,
    build_dead_letter,
    first_sent_time,
    read_failure,
    restore_attributes,
)
from worker.engine.message import Message, parse_or_fallback
from worker.ops.filters import MALFORMED, NO_RECORD, Facts
from worker.timestamps import iso_utc, parse_iso

#: System attribute SQS sets on a message its RedrivePolicy moved.
BROKER_SOURCE = "DeadLetterQueueSourceArn"
#: Condition of the record ``worker redrive`` writes for a message the broker dead-lettered.
BROKER_CONDITION = "MaxReceiveCountExceeded"
BROKER_ERROR_TYPE = "BrokerDeadLettered"


@dataclass(frozen=True, slots=True)
class DeadLetteredMessage:
    """One DLQ message as received, with its failure record (if any) read back."""

    message: Message
    record: FailureRecord | None
    #: ``worker.failure`` is there but cannot be read.
    malformed: bool
    #: ``DeadLetterQueueSourceArn``: set when the broker's RedrivePolicy moved the message.
    broker_source_arn: str | None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], queue_url: str) -> DeadLetteredMessage:
        """Read a ReceiveMessage entry (a malformed SNS-looking body is kept raw, never an error)."""
        message, _ = parse_or_fallback(entry, queue_url)
        record = read_failure(message.sqs_attributes)
        malformed = record is None and FAILURE_ATTRIBUTE in message.sqs_attributes
        broker = message.system_attributes.get(BROKER_SOURCE) or None
        return cls(message, record, malformed, broker)

    @property
    def error_type(self) -> str:
        """The record's error type; ``none`` without a record, ``malformed`` for an unreadable one."""
        if self.malformed:
            return MALFORMED
        return self.record.error_type if self.record else NO_RECORD

    @property
    def original_id(self) -> str:
        """The id the message had when first sent (SQS gives every copy a new one)."""
        if self.record and self.record.original_message_id:
            return self.record.original_message_id
        return self.message.id

    @property
    def redrive_count(self) -> int:
        """Times this message was redriven before it came to rest here."""
        return self.record.redrive_count if self.record else 0

    @property
    def source_url(self) -> str | None:
        """The source queue URL from the record, if it names one."""
        return (self.record.source_queue_url or None) if self.record else None

    @property
    def source_arn(self) -> str | None:
        """The source queue ARN: from the record, else from ``DeadLetterQueueSourceArn``."""
        if self.record and self.record.source_queue_arn:
            return self.record.source_queue_arn
        return self.broker_source_arn

    @property
    def source_name(self) -> str | None:
        """The source queue's name, or None when the message names no source."""
        ref = self.source_url or self.source_arn
        return queue_name(ref) if ref else None

    @property
    def dead_lettered_at(self) -> datetime | None:
        """When it was dead-lettered: the record's time, else when SQS accepted this copy."""
        if self.record:
            when = parse_iso(self.record.dead_lettered_at)
            if when is not None:
                return when
        return self.message.sent_at

    def age(self, now: datetime) -> float | None:
        """Seconds since dead-lettered."""
        when = self.dead_lettered_at
        return None if when is None else max(0.0, (now - when).total_seconds())

    def original_attributes(self) -> dict[str, str]:
        """Original attributes as strings (binary ones base64), for filters and listings."""
        out: dict[str, str] = {}
        for name, attr in restore_attributes(self.message.sqs_attributes).items():
            value = attr.value
            out[name] = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        return out

    def facts(self, now: datetime) -> Facts:
        """What ``--filter`` looks at."""
        names = {queue_name(ref) for ref in (self.source_url, self.source_arn, self.broker_source_arn) if ref}
        return Facts(
            error_type=self.error_type,
            condition=self.record.condition if self.record else None,
            sources=tuple(sorted(names)),
            age_seconds=self.age(now),
            attributes=self.original_attributes(),
        )


class Verdict(StrEnum):
    """What happens to one message (the values are the metric's ``result`` label)."""

    MOVE = "moved"
    SKIP = "skipped"
    HOLD = "held"
    FAIL = "failed"


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision for one message; ``request`` holds SendMessage arguments (no QueueUrl) for MOVE."""

    verdict: Verdict
    reason: str = ""
    request: dict[str, Any] | None = None
    redrive_count: int = 0


def redrive_dedup_id(original_message_id: str, redrive_count: int) -> str:
    """FIFO deduplication id of a redriven copy: original id and redrive count (never a content hash)."""
    return f"redrive-{redrive_count}-{original_message_id}"[:128]


def broker_record(
    dead: DeadLetteredMessage, source_url: str | None, now: datetime, redrive_count: int = 1
) -> FailureRecord:
    """A record for a message the broker dead-lettered (it carries none): what is known, nothing made up."""
    return FailureRecord(
        error_type=BROKER_ERROR_TYPE,
        error_message="moved to the DLQ by the source queue's RedrivePolicy (maxReceiveCount exceeded)",
        condition=BROKER_CONDITION,
        attempts=0,
        receive_count=0,
        original_message_id=dead.message.id,
        source_queue_url=source_url or "",
        source_queue_arn=dead.broker_source_arn or "",
        handler="",
        handler_version="",
        dead_lettered_at="",
        sent_at=iso_utc(dead.message.sent_at),
        first_sent_at=iso_utc(dead.message.sent_at),
        redrive_count=redrive_count,
        redriven_at=iso_utc(now),
    )


def plan_redrive(
    dead: DeadLetteredMessage,
    *,
    target_url: str | None,
    dlq_url: str,
    max_redrives: int,
    now: datetime,
    source_url: str | None = None,
) -> Plan:
    """Decide what to do with ``dead`` and build the copy for ``target_url``.

    ``source_url`` is the resolved URL of ``DeadLetterQueueSourceArn`` (for the record written on a
    message the broker dead-lettered).
    """
    if dead.malformed:
        return Plan(Verdict.FAIL, f"unreadable {FAILURE_ATTRIBUTE} metadata: left in the DLQ")
    if target_url is None:
        return Plan(
            Verdict.FAIL, "names no source queue (no failure record, no DeadLetterQueueSourceArn): give --to"
        )
    if target_url == dlq_url:
        return Plan(Verdict.FAIL, "its target is the DLQ itself")
    if dead.redrive_count >= max_redrives:
        return Plan(
            Verdict.HOLD,
            f"redriven {dead.redrive_count} times already (--max-redrives {max_redrives}): left in the DLQ",
        )
    fifo = target_url.endswith(".fifo")
    if fifo and not dead.message.group_id:
        return Plan(Verdict.FAIL, "the FIFO target needs a message group id and the message has none")
    count = dead.redrive_count + 1
    if dead.record is not None:
        record = dataclasses.replace(
            dead.record,
            redrive_count=count,
            redriven_at=iso_utc(now),
            displaced_attributes={},
            # Kept for the age cap; a record from before the field gets the oldest time it names.
            first_sent_at=iso_utc(first_sent_time(dead.record, None)),
        )
    else:
        record = broker_record(dead, source_url, now, count)
    try:
        request = build_dead_letter(dead.message, record, fifo=fifo)
    except DeadLetterTooLarge:
        return Plan(
            Verdict.FAIL, f"too large to carry {FAILURE_ATTRIBUTE} alongside its body: left in the DLQ"
        )
    if fifo:
        request["MessageDeduplicationId"] = redrive_dedup_id(dead.original_id, count)
    return Plan(Verdict.MOVE, request=request, redrive_count=count)
