"""Frozen detail objects passed to outcome sinks (destinations and Python hooks), and their Protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.engine.message import Message
from worker.engine.policy import Condition


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a message left the source queue: succeeded, or dead-lettered with a condition."""

    message: Message
    condition: Condition
    attempts: int
    handler: str
    handler_version: str
    timestamp: float  # unix time the outcome was reached
    response: object = None  # the handler's return value on success
    error_type: str | None = None
    error_message: str | None = None
    #: False when the message's delete failed (or its lease was lost): SQS will deliver it again.
    deleted: bool = True

    @property
    def succeeded(self) -> bool:
        """True for the Success condition."""
        return self.condition is Condition.SUCCESS


class OutcomeSink(Protocol):
    """Receives final outcomes; must return at once and never raise (work happens elsewhere)."""

    def submit(self, outcome: Outcome) -> None:
        """Take an outcome for best-effort delivery."""
