"""Loading the user's handler (``pkg.module:callable``) and calling it, async or in a thread."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import anyio
import anyio.to_thread
from pydantic import BaseModel

from worker.engine.message import Message
from worker.errors import ConfigError

Invoke = Callable[[Message], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class LoadedHandler:
    """A handler ready to call: ``invoke(message)`` awaits it whatever its flavour."""

    path: str
    invoke: Invoke
    is_async: bool
    model: type[BaseModel] | None


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


def _model_parameter(fn: Callable[..., Any]) -> type[BaseModel] | None:
    try:
        hints = get_type_hints(fn)
    except Exception:
        return None
    params = list(inspect.signature(fn).parameters)
    if not params:
        return None
    hint = hints.get(params[0])
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


def load_handler(
    path: str, *, thread_limiter: anyio.CapacityLimiter, variable: str = "WORKER_HANDLER"
) -> LoadedHandler:
    """Resolve the handler; a first parameter typed with a pydantic model receives the validated payload."""
    fn = import_object(path, variable)
    if not callable(fn):
        raise ConfigError(f"{variable}: {path!r} is not callable")
    target = fn.__call__ if not inspect.isroutine(fn) and not inspect.isclass(fn) else fn
    is_async = inspect.iscoroutinefunction(target)
    model = _model_parameter(target)

    def argument(message: Message) -> object:
        return message.model(model) if model is not None else message

    if is_async:

        async def invoke(message: Message) -> object:
            return await fn(argument(message))

    else:

        async def invoke(message: Message) -> object:
            arg = argument(message)
            return await anyio.to_thread.run_sync(fn, arg, abandon_on_cancel=True, limiter=thread_limiter)

    return LoadedHandler(path=path, invoke=invoke, is_async=is_async, model=model)
