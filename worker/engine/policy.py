"""What to do with a message after each handler outcome: a pure function of frozen inputs.

No I/O, no clock, no randomness of its own: the caller passes the jitter draw and the elapsed time,
so every branch is unit- and property-testable.

Attempts are counted from SQS's ``ApproximateReceiveCount`` (it survives restarts) less the receives this
worker handed back unprocessed, plus the immediate retries of the first delivery. The policy only ever
decides after a handler invocation: a message whose count says "exhausted" still runs once (its final
attempt), so a dead-letter record always carries a real error from a real invocation. The age cap
(``max_message_age_seconds``) is checked there too, after a failed invocation, never before one: a message
that arrives already too old still runs once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from worker.backoff import Backoff
from worker.limits import SQS_VISIBILITY_CAP_SECONDS

#: SQS caps a message's visibility timeout at 12 hours counted from its receive.
#: Seconds kept in hand below the cap so a change issued now still lands before it.
CAP_MARGIN_SECONDS = 5


class HandlerResult(StrEnum):
    """How one handler invocation ended."""

    SUCCESS = "Success"
    ERROR = "Error"  # any other exception: transient
    TIMEOUT = "Timeout"  # the per-message deadline expired: transient
    RETRY_LATER = "RetryLater"  # the handler asked for a delay: transient
    PERMANENT = "PermanentError"
    DECODE = "DecodeError"
    SCHEMA = "SchemaError"


#: Outcomes that dead-letter at once, whatever the attempts left.
TERMINAL = frozenset({HandlerResult.PERMANENT, HandlerResult.DECODE, HandlerResult.SCHEMA})


class Condition(StrEnum):
    """Why a message left the source queue; the ``condition`` of destination records."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    TIMEOUT = "Timeout"
    PERMANENT_ERROR = "PermanentError"
    DECODE_ERROR = "DecodeError"
    SCHEMA_ERROR = "SchemaError"
    MAX_AGE_EXCEEDED = "MaxAgeExceeded"


_TERMINAL_CONDITION = {
    HandlerResult.PERMANENT: Condition.PERMANENT_ERROR,
    HandlerResult.DECODE: Condition.DECODE_ERROR,
    HandlerResult.SCHEMA: Condition.SCHEMA_ERROR,
}


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """The retry settings the policy needs."""

    max_attempts: int = 5
    immediate_retries: int = 1
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    #: A failed attempt on a message at least this old (since its first send) dead-letters; None: no cap.
    max_message_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """Everything known about a message right after one handler invocation."""

    outcome: HandlerResult
    receive_count: int
    immediate_retries_done: int = 0
    retry_later_delay: float | None = None
    seconds_since_receive: float = 0.0
    jitter: float = 1.0  # a draw from uniform[0, 1), supplied by the caller
    #: Earlier receives of this message that ran no handler (hand-backs this worker made).
    handed_back: int = 0
    #: Seconds since the message was first sent (through redrives); None when unknown or not measured.
    message_age_seconds: float | None = None

    @property
    def deliveries(self) -> int:
        """Deliveries that ran the handler, this one included (receives less known hand-backs)."""
        return deliveries_run(self.receive_count, self.handed_back)


@dataclass(frozen=True, slots=True)
class Ack:
    """Succeeded: delete the message, fire on-success destinations."""


#: The decision for every success, whatever else is known (``decide`` returns it; callers may skip the call).
ACK = Ack()


@dataclass(frozen=True, slots=True)
class RetryNow:
    """Run the handler again in process, without giving the message back."""


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Give the message back: set its visibility to ``seconds`` and let SQS redeliver it."""

    seconds: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send to the DLQ (then delete); ``condition`` says why."""

    condition: Condition


Decision = Ack | RetryNow | RetryAfter | DeadLetter


def deliveries_run(receive_count: int, handed_back: int = 0) -> int:
    """Deliveries that ran the handler, the current one included: receives less known hand-backs, >= 1."""
    return max(1, receive_count - handed_back)


def attempts_made(
    receive_count: int, immediate_retries_done: int, config: RetryConfig, handed_back: int = 0
) -> int:
    """Handler invocations so far, the current one included: exact on a first delivery, else an upper bound.

    A later delivery assumes every earlier one ran the handler and used all its immediate retries; receives
    this worker handed back unprocessed (``handed_back``) are not counted as deliveries.
    """
    delivery = deliveries_run(receive_count, handed_back)
    if delivery <= 1:
        return 1 + immediate_retries_done
    return delivery + config.immediate_retries + immediate_retries_done


def backoff_ceiling(retry_number: int, config: RetryConfig) -> float:
    """Upper bound of the k-th delayed retry's delay: min(MAX, BASE * 2^(k-1)), overflow-safe."""
    return Backoff(config.backoff_base_seconds, config.backoff_max_seconds).ceiling(retry_number)


def backoff_delay(retry_number: int, jitter: float, config: RetryConfig) -> int:
    """Full jitter: uniform(0, ceiling) from a [0, 1) draw, in whole seconds, at least 1."""
    ceiling = backoff_ceiling(retry_number, config)
    return max(1, min(int(ceiling), int(jitter * ceiling)))


def visibility_cap(seconds_since_receive: float) -> int:
    """The longest visibility a change issued now may ask for (SQS's 12 h counts from the receive)."""
    return max(0, math.floor(SQS_VISIBILITY_CAP_SECONDS - CAP_MARGIN_SECONDS - seconds_since_receive))


def too_old(attempt: Attempt, config: RetryConfig) -> bool:
    """The message reached the age cap (False without a cap or a known age)."""
    cap, age = config.max_message_age_seconds, attempt.message_age_seconds
    return cap is not None and age is not None and age >= cap


def decide(attempt: Attempt, config: RetryConfig) -> Decision:
    """The decision table: success acks; terminal errors, exhausted attempts and age dead-letter; else retry.

    Precedence among the dead-letter conditions: a terminal outcome's own, then ``RetriesExhausted`` /
    ``Timeout``, then ``MaxAgeExceeded``; the age cap also stops immediate retries and ``RetryLater``.
    """
    if attempt.outcome is HandlerResult.SUCCESS:
        return ACK
    terminal = _TERMINAL_CONDITION.get(attempt.outcome)
    if terminal is not None:
        return DeadLetter(terminal)
    made = attempts_made(attempt.receive_count, attempt.immediate_retries_done, config, attempt.handed_back)
    if made >= config.max_attempts:
        timed_out = attempt.outcome is HandlerResult.TIMEOUT
        return DeadLetter(Condition.TIMEOUT if timed_out else Condition.RETRIES_EXHAUSTED)
    if too_old(attempt, config):
        return DeadLetter(Condition.MAX_AGE_EXCEEDED)
    if attempt.outcome is HandlerResult.RETRY_LATER:
        asked = attempt.retry_later_delay
        if asked is not None and not math.isnan(asked):
            cap = visibility_cap(attempt.seconds_since_receive)
            # Compare before ceil: math.ceil(inf) raises OverflowError (RetryLater(float("inf")) is legal).
            return RetryAfter(cap if asked >= cap else max(0, math.ceil(asked)))
    elif attempt.deliveries <= 1 and attempt.immediate_retries_done < config.immediate_retries:
        return RetryNow()
    delay = backoff_delay(attempt.deliveries, attempt.jitter, config)
    return RetryAfter(min(delay, visibility_cap(attempt.seconds_since_receive)))
