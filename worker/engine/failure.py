"""A failed handler invocation: its kind for the policy, what the records say of it, and its log line."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.engine import policy
from worker.engine.handler import import_object
from worker.engine.message import Message
from worker.errors import ConfigError, DecodeError, PermanentError, RetryLater, SchemaError

log = logging.getLogger("worker.processor")


@dataclass(frozen=True, slots=True)
class Failure:
    """What the last failed invocation raised, as recorded in the DLQ and destination records."""

    error_type: str
    error_message: str
    error: BaseException | None = None


#: Exception types ``WORKER_PERMANENT_ERRORS`` names, resolved once at start-up.
PermanentTypes = tuple[type[Exception], ...]


def load_permanent_errors(paths: Sequence[str], variable: str = "WORKER_PERMANENT_ERRORS") -> PermanentTypes:
    """Import each ``pkg.module:Error``; a ConfigError names ``variable`` and the entry that is not one."""
    found: list[type[Exception]] = []
    for path in paths:
        entry = f"{variable} entry {path!r}"
        try:
            obj = import_object(path, entry)
        except ConfigError:
            raise
        except Exception as exc:  # the module itself failed while importing: still one line, no traceback
            first_line = next(iter(str(exc).splitlines()), "")
            raise ConfigError(f"{entry}: importing it raised {type(exc).__name__}: {first_line}") from None
        if not (inspect.isclass(obj) and issubclass(obj, Exception)):
            raise ConfigError(f"{entry}: not an Exception subclass")
        found.append(obj)
    return tuple(found)


def classify(exc: BaseException, permanent: PermanentTypes = ()) -> policy.HandlerResult:
    """Map a handler exception to a policy outcome; ``permanent`` types (subclasses too) are PERMANENT.

    The worker's own types decide first: a ``RetryLater`` stays a retry even when ``permanent`` names one of
    its bases (``Exception``, say).
    """
    if isinstance(exc, PermanentError):
        return policy.HandlerResult.PERMANENT
    if isinstance(exc, SchemaError):
        return policy.HandlerResult.SCHEMA
    if isinstance(exc, DecodeError):
        return policy.HandlerResult.DECODE
    if isinstance(exc, RetryLater):
        return policy.HandlerResult.RETRY_LATER
    if permanent and isinstance(exc, permanent):
        return policy.HandlerResult.PERMANENT
    return policy.HandlerResult.ERROR


def log_failure(
    message: Message,
    log_bodies: bool,
    outcome: policy.HandlerResult,
    error: BaseException | None,
    action: str,
    **extra: Any,
) -> None:
    fields: dict[str, Any] = {
        "event": "handler_failed",
        "message_id": message.id,
        "outcome": outcome.value,
        "error_type": type(error).__name__ if error is not None else outcome.value,
        "action": action,
        "receive_count": message.receive_count,
        **extra,
    }
    if log_bodies and error is not None:
        fields["error"] = str(error)
    level = logging.INFO if outcome is policy.HandlerResult.RETRY_LATER else logging.WARNING
    log.log(level, "handler failed", extra=fields)


def describe_failure(outcome: policy.HandlerResult, error: BaseException | None, timeout: float) -> Failure:
    """The error type and message a dead-letter or destination record gets for this invocation."""
    if outcome is policy.HandlerResult.TIMEOUT:
        return Failure("Timeout", f"handler exceeded its {timeout:g}s timeout")
    if error is None:
        return Failure(outcome.value, "")
    return Failure(type(error).__name__, str(error), error)
