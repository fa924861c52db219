"""What processing decided for one message: the policy's final verdict, and where the message stands."""

from __future__ import annotations

from dataclasses import dataclass

from worker.engine import policy


@dataclass(frozen=True, slots=True)
class Verdict:
    """A final decision for one message and the attempts it counts (records carry them)."""

    decision: policy.Ack | policy.RetryAfter | policy.DeadLetter
    attempts: int

    def not_before(self, seconds: int) -> Verdict:
        """This verdict, with a retry delayed to ``seconds`` at least."""
        if isinstance(self.decision, policy.RetryAfter) and self.decision.seconds < seconds:
            return Verdict(policy.RetryAfter(seconds), self.attempts)
        return self

    def traced(self) -> tuple[str, dict[str, str | int]]:
        """The span's ``worker.decision`` and its details."""
        if isinstance(self.decision, policy.RetryAfter):
            return "retry_after", {"retry_delay_seconds": self.decision.seconds}
        if isinstance(self.decision, policy.DeadLetter):
            return "dead_letter", {"dead_letter_condition": self.decision.condition.value}
        return "ack", {}


@dataclass(frozen=True, slots=True)
class Disposition:
    """What happened to a message; ``give_back`` is set when it went back to the queue with a delay."""

    finished: bool
    give_back: int | None = None
    #: The message is still held: a delete is in flight and will release it (run_one's ``settle``).
    settle_pending: bool = False
