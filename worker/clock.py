"""The event loop's monotonic clock, read without anyio's backend lookup (read several times per message)."""

from __future__ import annotations

from asyncio import get_running_loop


def now() -> float:
    """What ``anyio.current_time()`` returns on asyncio, the worker's only backend: the running loop's time.

    anyio finds the backend on every call (about a microsecond); this is the same clock, so deadlines taken
    here and cancel scopes' deadlines compare exactly, with uvloop too.
    """
    return get_running_loop().time()
