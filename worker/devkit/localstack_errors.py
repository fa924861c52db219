"""The embedded LocalStack's error type and the log tail its messages quote."""

from __future__ import annotations

import os
from pathlib import Path

from worker.errors import WorkerError

_LOG_TAIL_BYTES = 4000


class LocalStackError(WorkerError):
    """The embedded LocalStack could not be installed, started or reached."""


def _tail(path: Path, limit: int = _LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unavailable: {exc})"
    return ("..." if size > limit else "") + text
