"""The error tree: one base, a few kinds a handler or an operator can act on."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""


class PermanentError(WorkerError):
    """Raised by a handler: this message can never succeed; dead-letter it now, no retries."""


class RetryLater(WorkerError):  # noqa: N818 - part of the public handler API, named for what it asks
    """Raised by a handler: retry this message after ``delay`` seconds (it counts as an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError("RetryLater delay must be >= 0")
        self.delay = delay
        self.reason = reason
        super().__init__(reason or (f"retry later in {delay}s" if delay is not None else "retry later"))


class DependencyDown(WorkerError):  # noqa: N818 - part of the public handler API, named for what it says
    """Raised by a handler: ``dependency`` (an API, a database) is down. A transient failure, retried like any
    other, that counts against that dependency's circuit breaker instead of the default one (``handler``)."""

    def __init__(self, dependency: str, reason: str = "") -> None:
        if not isinstance(dependency, str) or not dependency:
            raise ValueError("DependencyDown needs the dependency's name (a non-empty string)")
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency} is down: {reason}" if reason else f"{dependency} is down")


class DecodeError(WorkerError):
    """A message body or envelope could not be decoded; keeps the raw data and the cause."""

    def __init__(self, message: str, data: str | bytes = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.cause = cause


class SchemaError(DecodeError):
    """A payload decoded but did not validate against the handler's declared model."""


class ConfigError(WorkerError):
    """A setting is missing or wrong; the message names the variable."""


def first_of(group: BaseExceptionGroup[BaseException], *kinds: type[BaseException]) -> BaseException | None:
    """The first exception of one of ``kinds`` inside a (nested) task-group failure, or None."""
    leaf: BaseException | None = group.subgroup(kinds)
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
