"""Middleware: users' async context managers entered around every handler call, outermost first.

``WORKER_MIDDLEWARE=pkg.mod:factory,...`` names factories, each called once at start-up with no argument; a
factory returns the middleware, a callable that takes the :class:`Invocation` and returns an async context
manager. The body of the ``async with`` is the handler call: code before ``yield`` runs before it, code after
it sees ``invocation.outcome`` (and ``result`` or ``error``). A middleware observes; it cannot change an
outcome, but one that raises on entry stops the call: the handler does not run and the exception is the
attempt's failure (``PermanentError`` dead-letters, anything else is transient). An exception on exit is
logged and counted, and the outcome stands: the handler's work is done.

The handler's deadline (WORKER_TIMEOUT_SECONDS) covers the middleware entries and the handler; the exits
run afterwards, bounded by :data:`EXIT_SECONDS`. A middleware must not keep a task group or cancel scope open
across its ``yield`` (the deadline's scope is not nested inside it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field

import anyio

from worker.engine.handler import import_callable
from worker.engine.message import Message
from worker.errors import ConfigError

log = logging.getLogger("worker.middleware")

#: Seconds the middleware exits of one call may take together (after the handler's deadline).
EXIT_SECONDS = 10.0


@dataclass(slots=True)
class Invocation:
    """One handler call as middleware sees it; the worker fills ``outcome`` before the exits run.

    ``messages`` has one message for a per-message handler (also ``message``) and the whole batch for a
    batch handler (``message`` is then None). Read-only for middleware.
    """

    messages: tuple[Message, ...]
    queue: str
    handler: str
    handler_version: str
    #: "Success", "Error", "Timeout", "RetryLater", "PermanentError", "DecodeError", "SchemaError" once done.
    outcome: str | None = None
    result: object = None
    error: BaseException | None = None
    #: For the middleware's own use (a span, a start time...), shared by every middleware of this call.
    state: dict[str, object] = field(default_factory=dict)

    @property
    def message(self) -> Message | None:
        """The message of a per-message handler; None for a batch handler."""
        return self.messages[0] if len(self.messages) == 1 else None


Middleware = Callable[[Invocation], AbstractAsyncContextManager[object]]


def load_middleware(paths: Sequence[str], variable: str = "WORKER_MIDDLEWARE") -> tuple[Middleware, ...]:
    """Import each factory and call it; a ConfigError names ``variable`` and the entry that failed."""
    chain: list[Middleware] = []
    for path in paths:
        entry = f"{variable} entry {path!r}"
        factory = import_callable(path, entry)
        try:
            middleware = factory.fn()
        except Exception as exc:
            first_line = next(iter(str(exc).splitlines()), "")
            raise ConfigError(
                f"{entry}: calling the factory raised {type(exc).__name__}: {first_line}"
            ) from None
        if not callable(middleware):
            raise ConfigError(f"{entry}: the factory returned {type(middleware).__name__}, not a callable")
        chain.append(middleware)
    return tuple(chain)


async def enter_all(chain: Sequence[Middleware], invocation: Invocation, stack: AsyncExitStack) -> None:
    """Enter every middleware in order; the first that raises stops the rest (the handler does not run)."""
    for middleware in chain:
        await stack.enter_async_context(middleware(invocation))


async def exit_all(stack: AsyncExitStack, invocation: Invocation) -> None:
    """Run the exits, innermost first, within EXIT_SECONDS; a failing or late exit is logged, not raised."""
    with anyio.move_on_after(EXIT_SECONDS, shield=True) as scope:
        try:
            await stack.aclose()
        except Exception as exc:
            log.warning(
                "middleware failed on exit; the outcome stands",
                extra={
                    "event": "middleware_failed",
                    "error_type": type(exc).__name__,
                    "outcome": invocation.outcome,
                },
            )
    if scope.cancelled_caught:
        log.warning(
            "middleware exits overran their deadline",
            extra={"event": "middleware_failed", "error_type": "Timeout", "outcome": invocation.outcome},
        )
