"""Handlers of tests/test_extended_payloads.py, loaded by path like a user's: they record what they got."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

from worker import Message, PermanentError


@dataclass(frozen=True)
class Seen:
    """What one invocation was given: the payload's size and digest, the raw SQS body, where it came from."""

    message_id: str
    size: int
    digest: str
    raw_body: str
    attributes: frozenset[str]
    topic_arn: str | None


#: Invocations per test run (the ``run`` message attribute), in this process.
SEEN: collections.defaultdict[str, list[Seen]] = collections.defaultdict(list)
#: Runs whose messages fail with a PermanentError (dead-lettered at once).
POISONED: set[str] = set()


def digest(text: str) -> str:
    """The SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def _run(message: Message) -> str:
    attr = message.attributes.get("run")
    return str(attr.value) if attr is not None else "?"


def _record(message: Message) -> str:
    run = _run(message)
    SEEN[run].append(
        Seen(
            message_id=message.id,
            size=len(message.body.encode()),
            digest=digest(message.body),
            raw_body=message.raw_body,
            attributes=frozenset(message.attributes),
            topic_arn=message.sns.topic_arn if message.sns is not None else None,
        )
    )
    return run


async def record(message: Message) -> object:
    """Records the payload it was given; a poisoned run's messages fail permanently."""
    run = _record(message)
    if run in POISONED:
        raise PermanentError("poisoned for the test")
    return {"size": len(message.body.encode())}


async def echo(message: Message) -> object:
    """Records the payload and returns it whole: the on-success record is as large as the payload twice."""
    _record(message)
    return {"echo": message.body}
