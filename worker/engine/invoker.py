"""One handler call: through the middleware, under the per-message deadline, timed and classified."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio

from worker import clock
from worker.engine import policy
from worker.engine.failure import PermanentTypes, classify
from worker.engine.message import Message
from worker.engine.middleware import Invocation, Middleware, enter_all, exit_all

if TYPE_CHECKING:
    from worker.telemetry.metrics import Metrics

#: A handler call ready to run, and how one ended: outcome, return value, exception.
Call = Callable[[], Awaitable[object]]
Invoked = tuple[policy.HandlerResult, object, BaseException | None]


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Invoker:
    """Runs handler calls for one queue; ``template`` gives every Invocation its queue and handler."""

    def __init__(
        self,
        template: Invocation,
        *,
        timeout: float,
        permanent: PermanentTypes,
        middleware: Sequence[Middleware],
        durations: _Observer,
        timeouts: _Counter,
    ) -> None:
        self.template = template
        self.timeout = timeout
        self.permanent = permanent
        self.middleware = tuple(middleware)
        self.durations = durations
        self.timeouts = timeouts

    async def invoke(self, messages: tuple[Message, ...], call: Call) -> Invoked:
        """Run ``call()`` inside the middleware (none: directly), under the deadline: how it ended."""
        if not self.middleware:
            return await self._timed(call)
        invocation = dataclasses.replace(self.template, messages=messages, state={})
        stack = AsyncExitStack()
        try:
            invoked = await self._timed(call, partial(enter_all, self.middleware, invocation, stack))
            outcome, invocation.result, invocation.error = invoked
            invocation.outcome = outcome.value
        finally:
            await exit_all(stack, invocation)
        return invoked

    async def _timed(self, call: Call, enter: Callable[[], Awaitable[None]] | None = None) -> Invoked:
        """Run ``enter()`` (the middleware entries) then ``call()`` under the handler's deadline."""
        started = time.perf_counter()
        try:
            with anyio.CancelScope(deadline=clock.now() + self.timeout) as scope:
                if enter is not None:
                    await enter()
                response = await call()
        except Exception as exc:
            self.durations.observe(time.perf_counter() - started)
            return classify(exc, self.permanent), None, exc
        self.durations.observe(time.perf_counter() - started)
        if scope.cancelled_caught:
            self.timeouts.inc()
            return policy.HandlerResult.TIMEOUT, None, None
        return policy.HandlerResult.SUCCESS, response, None


@dataclass(frozen=True, slots=True)
class VersionRun:
    """One handler version's metric children and invoker (two with a canary: baseline and candidate)."""

    path: str
    version: str
    processed: Mapping[str, _Counter]
    invoker: Invoker

    @classmethod
    def create(
        cls,
        metrics: Metrics,
        queue: str,
        path: str,
        version: str,
        timeout: float,
        permanent: PermanentTypes,
        middleware: Sequence[Middleware],
    ) -> VersionRun:
        """Label children for (queue, path, version) and an invoker counting into them."""
        labels = (queue, path, version)
        invoker = Invoker(
            Invocation((), queue, path, version),
            timeout=timeout,
            permanent=permanent,
            middleware=middleware,
            durations=metrics.handler_duration.labels(*labels),
            timeouts=metrics.handler_timeouts.labels(*labels),
        )
        names = ("succeeded", "retried", "dead_lettered")
        return cls(path, version, {n: metrics.processed.labels(*labels, n) for n in names}, invoker)
