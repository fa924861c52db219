"""A resilient asyncio SQS/SNS worker: timeouts, staged retries, dead-lettering, destinations, metrics."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from worker._version import __version__ as __version__

if TYPE_CHECKING:  # the public names, for type checkers; at run time they load on first use (__getattr__)
    from worker.deadletter.record import FailureRecord as FailureRecord
    from worker.deadletter.record import read_failure as read_failure
    from worker.deadletter.record import restore_attributes as restore_attributes
    from worker.destinations.record import DestinationRecord as DestinationRecord
    from worker.engine.batch import BatchResult as BatchResult
    from worker.engine.message import Message as Message
    from worker.engine.message import MessageAttribute as MessageAttribute
    from worker.engine.message import SnsInfo as SnsInfo
    from worker.engine.middleware import Invocation as Invocation
    from worker.engine.outcome import Outcome as Outcome
    from worker.engine.policy import Condition as Condition
    from worker.errors import ConfigError as ConfigError
    from worker.errors import DecodeError as DecodeError
    from worker.errors import DependencyDown as DependencyDown
    from worker.errors import PermanentError as PermanentError
    from worker.errors import RetryLater as RetryLater
    from worker.errors import SchemaError as SchemaError
    from worker.errors import WorkerError as WorkerError
    from worker.idempotency import idempotent as idempotent

__all__ = [  # noqa: RUF022 - grouped by purpose, as the docs present them
    # handler API
    "Message",
    "MessageAttribute",
    "SnsInfo",
    "BatchResult",
    "Invocation",
    "idempotent",
    # errors
    "ConfigError",
    "DecodeError",
    "DependencyDown",
    "PermanentError",
    "RetryLater",
    "SchemaError",
    "WorkerError",
    # outcomes and hooks
    "Condition",
    "DestinationRecord",
    "Outcome",  # kept for compatibility: what run_worker(sink=...) receives; hooks get DestinationRecord
    # dead-letter records (worker dlq / redrive read them; so can a secondary consumer)
    "FailureRecord",
    "read_failure",
    "restore_attributes",
    # meta
    "__version__",
]

#: Where each public name lives: ``import worker`` (every command line starts there) loads none of them.
_EXPORTS = {
    "Message": "worker.engine.message",
    "MessageAttribute": "worker.engine.message",
    "SnsInfo": "worker.engine.message",
    "BatchResult": "worker.engine.batch",
    "Invocation": "worker.engine.middleware",
    "idempotent": "worker.idempotency",
    "ConfigError": "worker.errors",
    "DecodeError": "worker.errors",
    "DependencyDown": "worker.errors",
    "PermanentError": "worker.errors",
    "RetryLater": "worker.errors",
    "SchemaError": "worker.errors",
    "WorkerError": "worker.errors",
    "Condition": "worker.engine.policy",
    "DestinationRecord": "worker.destinations.record",
    "Outcome": "worker.engine.outcome",
    "FailureRecord": "worker.deadletter.record",
    "read_failure": "worker.deadletter.record",
    "restore_attributes": "worker.deadletter.record",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (then it is an ordinary attribute)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
