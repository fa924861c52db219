"""Loading the user's handler (``pkg.module:callable``) and calling it: async or threaded, one or a batch."""

from __future__ import annotations

import collections.abc
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_args, get_origin, get_type_hints

import anyio
import anyio.to_thread
from pydantic import BaseModel

from worker.engine.message import Message
from worker.engine.threads import AbandonedThreads
from worker.errors import ConfigError

Invoke = Callable[[Message], Awaitable[object]]


#: A batch handler's call: the messages of one receive, in receive order.
InvokeBatch = Callable[[list[Message]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class LoadedHandler:
    """A handler ready to call: ``invoke(message)`` awaits it whatever its flavour.

    A batch handler (first parameter typed ``list[Message]`` or ``Sequence[Message]``) has ``invoke_batch``
    instead; its ``invoke`` calls it with one message.
    """

    path: str
    invoke: Invoke
    invoke_batch: InvokeBatch | None = None

    @property
    def batch(self) -> bool:
        """True for a handler that takes a whole receive."""
        return self.invoke_batch is not None


@dataclass(frozen=True, slots=True)
class UserCallable:
    """A user's callable imported from ``pkg.module:name``: awaited when async, run in a thread otherwise."""

    fn: Callable[..., Any]
    #: The function whose signature counts (``__call__`` for a callable instance).
    target: Callable[..., Any]
    is_async: bool

    async def call(
        self, argument: object, limiter: anyio.CapacityLimiter, abandoned: AbandonedThreads | None = None
    ) -> object:
        """Call with one argument; a plain function runs in a worker thread (abandoned if cancelled).

        With ``abandoned``, a thread left running by a cancellation is counted there until it returns.
        """
        if self.is_async:
            return await self.fn(argument)
        if abandoned is None:
            result = await anyio.to_thread.run_sync(
                self.fn, argument, abandon_on_cancel=True, limiter=limiter
            )
        else:
            watched = abandoned.watch(self.fn)
            try:
                result = await anyio.to_thread.run_sync(
                    watched, argument, abandon_on_cancel=True, limiter=limiter
                )
            except anyio.get_cancelled_exc_class():
                abandoned.abandon(watched)
                raise
        if inspect.isawaitable(result):  # a plain def that returned a coroutine
            return await result
        return result


def import_callable(path: str, variable: str) -> UserCallable:
    """Import ``pkg.module:callable`` and tell whether it is async; a ConfigError names ``variable``."""
    fn = import_object(path, variable)
    if not callable(fn):
        raise ConfigError(f"{variable}: {path!r} is not callable")
    target = fn if inspect.isroutine(fn) or inspect.isclass(fn) else fn.__call__
    return UserCallable(fn=fn, target=target, is_async=inspect.iscoroutinefunction(target))


def import_object(path: str, variable: str) -> Any:
    """Import ``pkg.module:attr``; a ConfigError names ``variable`` when it fails."""
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"{variable}: must look like pkg.module:callable, got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{variable}: cannot import module {module_name!r}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{variable}: module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _first_parameter_hint(fn: Callable[..., Any]) -> Any:
    try:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
    except Exception:
        return None
    return hints.get(params[0]) if params else None


def _model_parameter(hint: Any) -> type[BaseModel] | None:
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


def _is_batch(hint: Any) -> bool:
    """``list[Message]`` or ``Sequence[Message]`` (any of the abstract sequence spellings)."""
    origin = get_origin(hint)
    if origin not in (list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection):
        return False
    return get_args(hint) == (Message,)


def load_handler(
    path: str,
    *,
    thread_limiter: anyio.CapacityLimiter,
    variable: str = "WORKER_HANDLER",
    abandoned: AbandonedThreads | None = None,
) -> LoadedHandler:
    """Resolve the handler; a first parameter typed with a pydantic model receives the validated payload.

    A plain ``def`` handler's threads abandoned at their deadline are counted in ``abandoned``.
    """
    user = import_callable(path, variable)
    hint = _first_parameter_hint(user.target)
    if _is_batch(hint):

        async def invoke_batch(messages: list[Message]) -> object:
            return await user.call(messages, thread_limiter, abandoned)

        async def invoke_one(message: Message) -> object:
            return await invoke_batch([message])

        return LoadedHandler(path=path, invoke=invoke_one, invoke_batch=invoke_batch)
    model = _model_parameter(hint)

    async def invoke(message: Message) -> object:
        argument = message.model(model) if model is not None else message
        return await user.call(argument, thread_limiter, abandoned)

    return LoadedHandler(path=path, invoke=invoke)
