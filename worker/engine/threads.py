"""Threads of timed-out sync handlers that still run: counted until they return, bounded, receiving paused.

Python cannot kill a thread: a plain ``def`` handler past its deadline is abandoned and runs on. Each such
thread is counted from its abandonment until it returns (observed from the thread itself, so a thread
that raises is uncounted too). Up to ``limit`` run beside the concurrency limit; while ``limit`` of them
run, the pollers receive nothing (readiness says why) and resume when threads return. With a limit of 0
every abandoned thread takes one of the concurrency slots instead, until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("worker.threads")


class _State(enum.Enum):
    QUEUED = "queued"  # handed to a worker thread, not started yet
    RUNNING = "running"  # started, its caller still waits for it
    GIVEN_UP = "given_up"  # its caller went away before it started: it will not run
    ABANDONED = "abandoned"  # started, its caller went away: counted until it returns
    RETURNED = "returned"


class WatchedCall:
    """A callable run in a worker thread whose start and end the owner observes (under its lock)."""

    __slots__ = ("_fn", "_loop", "_owner", "state")

    def __init__(self, owner: AbandonedThreads, fn: Callable[..., Any]) -> None:
        self._owner = owner
        self._fn = fn
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = _State.QUEUED

    def __call__(self, *args: Any) -> Any:
        """Run in the worker thread: skipped when its caller already gave up, uncounted when it ends."""
        if not self._owner._started(self):
            return None  # nobody waits for it any more: do not start the handler at all
        try:
            return self._fn(*args)
        finally:
            self._owner._returned(self)


class AbandonedThreads:
    """How many abandoned handler threads have not returned yet (thread-safe), against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._count = 0
        #: Called in the event loop after an abandoned thread returned (the pollers' wake-up).
        self._listeners: list[Callable[[], None]] = []
        self._paused_logged = False

    @property
    def count(self) -> int:
        """Abandoned threads still running."""
        return self._count

    @property
    def paused(self) -> bool:
        """Receiving stops while ``limit`` (> 0) abandoned threads run."""
        return 0 < self.limit <= self._count

    @property
    def slots_taken(self) -> int:
        """Concurrency slots held by abandoned threads: those past the limit (all of them at limit 0)."""
        return max(0, self._count - self.limit)

    def pause_reason(self) -> str | None:
        """Why the worker does not receive (the /readyz reason), or None while it may."""
        count = self._count
        if 0 < self.limit <= count:
            return f"{count} abandoned handler threads (limit {self.limit}): not receiving"
        return None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` in the event loop whenever an abandoned thread has returned."""
        self._listeners.append(listener)

    def watch(self, fn: Callable[..., Any]) -> WatchedCall:
        """Wrap ``fn`` for ``anyio.to_thread.run_sync``; ``abandon()`` it when its caller is cancelled."""
        return WatchedCall(self, fn)

    def abandon(self, call: WatchedCall) -> bool:
        """Its caller stopped waiting (in the event loop): count it if it runs; True when it was counted."""
        with self._lock:
            if call.state is _State.QUEUED:
                call.state = _State.GIVEN_UP
                return False
            if call.state is not _State.RUNNING:
                return False  # it has returned already
            call.state = _State.ABANDONED
            call._loop = _running_loop()
            self._count += 1
            paused = self.paused
        if paused and not self._paused_logged:
            self._paused_logged = True
            log.warning(
                "receiving paused: too many abandoned handler threads",
                extra={"event": "receive_paused", "abandoned_threads": self._count, "limit": self.limit},
            )
        return True

    def _started(self, call: WatchedCall) -> bool:
        with self._lock:
            if call.state is _State.GIVEN_UP:
                return False
            call.state = _State.RUNNING
            return True

    def _returned(self, call: WatchedCall) -> None:
        """In the worker thread, once the handler returned or raised."""
        with self._lock:
            counted = call.state is _State.ABANDONED
            call.state = _State.RETURNED
            if counted:
                self._count -= 1
        if counted and call._loop is not None:
            with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is left to wake
                call._loop.call_soon_threadsafe(self._changed)

    def _changed(self) -> None:
        """In the event loop, after an abandoned thread returned: wake the pollers, log a resume."""
        if self._paused_logged and not self.paused:
            self._paused_logged = False
            log.info(
                "receiving resumed: abandoned handler threads returned",
                extra={"event": "receive_resumed", "abandoned_threads": self._count, "limit": self.limit},
            )
        for listener in self._listeners:
            listener()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # aiobotocore ties the worker to asyncio. Waking it from a thread must never block that thread:
    # anyio.from_thread.run_sync waits for the loop and would hang a thread returning during loop close.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
