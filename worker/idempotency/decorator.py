"""The ``@idempotent`` handler decorator: one run per key, the stored result for later deliveries of it."""

from __future__ import annotations

import base64
import functools
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, get_origin, get_type_hints, overload

import anyio
import anyio.from_thread
from pydantic import BaseModel

from worker.deadletter.record import original_message_id
from worker.engine.message import Message
from worker.errors import PermanentError, RetryLater
from worker.idempotency.store import Claimed, Completed, IdempotencyStore, InProgress, MemoryStore

log = logging.getLogger("worker.idempotency")

DEFAULT_TTL_SECONDS = 3600.0
#: How long a claim holds a key while its handler runs; must exceed the handler's timeout.
DEFAULT_IN_PROGRESS_SECONDS = 900.0
#: A bound on the store call that releases or completes a key after the handler (shielded from cancellation).
SETTLE_TIMEOUT_SECONDS = 10.0

KeySpec = str | Callable[[Message], str] | None
KeyFunction = Callable[[Message], str]


@dataclass(frozen=True, slots=True)
class Idempotent:
    """A configured ``@idempotent(...)``: apply it to a handler (``async def`` or plain ``def``)."""

    key: KeyFunction
    ttl_seconds: float
    store: IdempotencyStore | None
    in_progress_seconds: float
    namespace: str | None
    clock: Callable[[], float]

    @overload
    def __call__(self, fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Message], Awaitable[Any]]: ...
    @overload
    def __call__(self, fn: Callable[[Any], Any]) -> Callable[[Message], Any]: ...
    def __call__(self, fn: Callable[[Any], Any]) -> Callable[[Message], Any]:
        """The guarded handler: takes a Message (and validates the payload model ``fn`` declares, if any)."""
        if not callable(fn):
            raise TypeError(f"@idempotent(...) applies to a handler, got {type(fn).__name__}")
        instance: Any = fn
        target = fn if inspect.isroutine(fn) or inspect.isclass(fn) else instance.__call__
        guard = _Guard(
            fn=fn,
            key=self.key,
            model=_payload_model(target),
            namespace=self.namespace or _qualified_name(fn),
            store=self.store if self.store is not None else MemoryStore(),
            ttl_seconds=self.ttl_seconds,
            in_progress_seconds=self.in_progress_seconds,
            clock=self.clock,
        )
        wrapper: Callable[[Message], Any]
        if inspect.iscoroutinefunction(target):

            async def wrapper(message: Message) -> Any:
                return await guard.run_async(message)

        else:

            def wrapper(message: Message) -> Any:
                return guard.run_sync(message)

        functools.update_wrapper(wrapper, fn, updated=())
        # The worker's loader reads the first parameter's type: it must pass the Message (the key comes from
        # it), whatever ``fn`` declares; the guard validates ``fn``'s model itself.
        shown: Any = wrapper
        shown.__annotations__ = {"message": Message, "return": Any}
        shown.__signature__ = inspect.Signature(
            [inspect.Parameter("message", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Message)],
            return_annotation=Any,
        )
        return wrapper


def idempotent(
    key: KeySpec = None,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    store: IdempotencyStore | None = None,
    in_progress_seconds: float | None = None,
    *,
    namespace: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Idempotent:
    """Run the decorated handler at most once per key within ``ttl_seconds``; later deliveries get its result.

    ``key``: None (the message's original id, kept through redrives), ``"payload:<field.path>"``,
    ``"attribute:<name>"`` or a function of the Message. ``store``: a MemoryStore of this handler when None.
    ``in_progress_seconds`` (default 900): how long a running delivery holds the key; make it exceed
    ``WORKER_TIMEOUT_SECONDS``. ``namespace``: the keys' prefix, the handler's ``module:qualname`` when None.
    ``clock``: epoch seconds (tests inject one). Always used with parentheses: ``@idempotent()``.
    """
    hold = DEFAULT_IN_PROGRESS_SECONDS if in_progress_seconds is None else in_progress_seconds
    for name, value in (("ttl_seconds", ttl_seconds), ("in_progress_seconds", hold)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"@idempotent {name} must be a positive number of seconds, got {value!r}")
    if namespace is not None and not namespace:
        raise ValueError("@idempotent namespace must not be empty")
    return Idempotent(
        key=key_function(key),
        ttl_seconds=float(ttl_seconds),
        store=store,
        in_progress_seconds=float(hold),
        namespace=namespace,
        clock=clock,
    )


def key_function(spec: KeySpec) -> KeyFunction:
    """The function computing a message's key from a ``key=`` spec; ValueError for a spec that is not one."""
    if spec is None:
        return original_message_id
    if callable(spec):
        if inspect.iscoroutinefunction(spec):
            raise TypeError(
                "@idempotent key must be a plain function of the Message (was @idempotent used without ()?)"
            )
        return _checked(spec)
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind == "payload" and rest and all(rest.split(".")):
            return functools.partial(payload_key, rest)
        if kind == "attribute" and rest:
            return functools.partial(attribute_key, rest)
    raise ValueError(
        "@idempotent key must be None, 'payload:<field.path>', 'attribute:<name>' or a function of the"
        f" Message, got {spec!r}"
    )


def payload_key(path: str, message: Message) -> str:
    """The value at dotted ``path`` of the JSON payload (list items by index) as text; else PermanentError."""
    value = message.json()  # not JSON: DecodeError, the message dead-letters as DecodeError
    parts = path.split(".")
    for depth, part in enumerate(parts, 1):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise PermanentError(
                f"idempotency key payload:{path}: the payload has no {'.'.join(parts[:depth])}"
            )
    if value is None or value == "":
        raise PermanentError(
            f"idempotency key payload:{path}: the field is {'null' if value is None else 'empty'}"
        )
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def attribute_key(name: str, message: Message) -> str:
    """Message attribute ``name``'s value (SNS ones included; Binary as base64); else PermanentError."""
    attribute = message.attributes.get(name)
    if attribute is None:
        raise PermanentError(f"idempotency key attribute:{name}: the message has no attribute {name!r}")
    value = attribute.value
    text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
    if not text:
        raise PermanentError(f"idempotency key attribute:{name}: the attribute is empty")
    return text


def _checked(fn: Callable[[Message], str]) -> KeyFunction:
    name = getattr(fn, "__qualname__", type(fn).__qualname__)

    def key(message: Message) -> str:
        value = fn(message)
        if not isinstance(value, str) or not value:
            got = "an empty str" if value == "" else type(value).__name__  # never the value: it may be data
            raise PermanentError(f"idempotency key function {name} returned {got}, not a non-empty str")
        return value

    return key


def encode_result(value: object) -> str | None:
    """The JSON text a result is stored as (pydantic models dumped first); None when it is not JSON-able."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            value = dump(mode="json")
        except Exception:
            return None
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _first_parameter_type(fn: Callable[..., Any]) -> Any:
    """The type ``fn``'s first parameter is annotated with, as the worker's loader reads it (None: none)."""
    try:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
    except Exception:
        return None
    return hints.get(params[0]) if params else None


def _payload_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model ``fn``'s first parameter is typed with; TypeError for a batch handler."""
    hint = _first_parameter_type(fn)
    if get_origin(hint) in {list, Sequence}:
        raise TypeError("@idempotent applies to handlers of one message, not to batch handlers")
    return hint if inspect.isclass(hint) and issubclass(hint, BaseModel) else None


def _qualified_name(fn: Callable[..., Any]) -> str:
    named = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(named, '__module__', '?')}:{named.__qualname__}"


@dataclass(frozen=True, slots=True)
class _Guard:
    """One decorated handler: claims its key, runs it or answers for it, completes or releases the key."""

    fn: Callable[[Any], Any]
    key: KeyFunction
    model: type[BaseModel] | None
    namespace: str
    store: IdempotencyStore
    ttl_seconds: float
    in_progress_seconds: float
    clock: Callable[[], float]

    def _prepare(self, message: Message) -> tuple[str, object]:
        argument: object = message.model(self.model) if self.model is not None else message
        return f"{self.namespace}|{self.key(message)}", argument

    async def run_async(self, message: Message) -> Any:
        key, argument = self._prepare(message)
        now = self.clock()
        answer = await self.store.claim(key, now, now + self.in_progress_seconds)
        if not isinstance(answer, Claimed):
            return self._answer(answer, now, message)
        try:
            result = await self.fn(argument)
        except BaseException:  # an error, a timeout, a cancellation: the next delivery runs it
            with anyio.CancelScope(shield=True):
                await self._release(key, answer.token, message)
            raise
        with anyio.CancelScope(shield=True):
            await self._complete(key, answer.token, result, message)
        return result

    def run_sync(self, message: Message) -> Any:
        """The plain-``def`` flavour, in the worker's thread; the store is called on the event loop."""
        key, argument = self._prepare(message)
        now = self.clock()
        answer = anyio.from_thread.run(self.store.claim, key, now, now + self.in_progress_seconds)
        if not isinstance(answer, Claimed):
            return self._answer(answer, now, message)
        try:
            result = self.fn(argument)
        except BaseException:
            self._from_thread(self._release, key, answer.token, message)
            raise
        # A thread the worker abandoned at its deadline gets here when it ends: the key was held until then.
        self._from_thread(self._complete, key, answer.token, result, message)
        return result

    def _answer(self, answer: Completed | InProgress, now: float, message: Message) -> Any:
        if isinstance(answer, Completed):
            log.info(
                "idempotent handler already completed this key: returning its stored result",
                extra={"event": "idempotent_replay", "handler": self.namespace, "message_id": message.id},
            )
            return None if answer.result is None else json.loads(answer.result)
        wait = max(1, math.ceil(answer.until - now) + 1)
        raise RetryLater(delay=wait, reason=f"idempotency key in progress in another delivery (for {wait}s)")

    async def _complete(self, key: str, token: str, result: object, message: Message) -> None:
        text = encode_result(result)
        if text is None and result is not None:
            log.warning(
                "idempotent handler returned a value that is not JSON: stored as None",
                extra={
                    "event": "idempotent_result_not_stored",
                    "handler": self.namespace,
                    "message_id": message.id,
                    "result_type": type(result).__name__,
                },
            )
        expires_at = self.clock() + self.ttl_seconds
        await self._settle("complete", message, self.store.complete, key, text, expires_at, token=token)

    async def _release(self, key: str, token: str, message: Message) -> None:
        await self._settle("release", message, self.store.release, key, token=token)

    async def _settle(
        self, what: str, message: Message, call: Callable[..., Awaitable[None]], *args: Any, token: str
    ) -> None:
        """A store call that follows the handler: bounded; a failure is logged (the claim then lapses)."""
        try:
            with anyio.fail_after(SETTLE_TIMEOUT_SECONDS):
                await call(*args, token=token)
        except Exception as exc:
            log.warning(
                f"idempotency store {what} failed: the key stays held until its claim lapses",
                extra={
                    "event": f"idempotency_{what}_failed",
                    "handler": self.namespace,
                    "message_id": message.id,
                    "error_type": type(exc).__name__,
                },
            )

    def _from_thread(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        try:
            anyio.from_thread.run(fn, *args)
        except RuntimeError as exc:  # the event loop is gone (a thread abandoned past the worker's stop)
            log.warning(
                "idempotency store unreachable from a handler thread: the key stays held until it lapses",
                extra={"event": "idempotency_settle_skipped", "handler": self.namespace, "error": str(exc)},
            )
