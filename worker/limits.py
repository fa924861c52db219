"""AWS service limits the worker enforces itself, in one place (LocalStack accepts more than AWS does)."""

from __future__ import annotations

import re

#: SQS: a visibility timeout (and a message's total invisible time) is at most 12 hours.
SQS_VISIBILITY_CAP_SECONDS = 43_200
#: SQS: body plus attributes (names, types, values) at most 1 MiB.
SQS_MAX_MESSAGE_BYTES = 1_048_576
#: SQS: at most 10 message attributes.
SQS_MAX_ATTRIBUTES = 10
#: SQS: ReceiveMessage returns at most 10 messages; the *Batch calls take at most 10 entries.
SQS_BATCH_MAX = 10
#: SNS Publish: message (and attributes) at most 256 KiB.
SNS_MAX_BYTES = 262_144
#: EventBridge PutEvents: one entry (time, source, detail type, detail, resources) at most 256 KiB.
EVENTS_MAX_BYTES = 262_144
#: EventBridge counts 14 bytes for the entry's Time field toward its size.
EVENTS_TIME_BYTES = 14
#: In-flight limit of a standard queue; FIFO's is 120,000 as well since 2024 (20,000 before).
MAX_CONCURRENCY = 120_000
#: SQS keeps a message 14 days at most (MessageRetentionPeriod's upper bound).
SQS_MAX_RETENTION_SECONDS = 1_209_600
#: How settings name an importable object: ``pkg.module:attr``.
HANDLER_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
