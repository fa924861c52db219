"""Structured logging: one JSON object per line, never message bodies or credentials.

Every line logged while a message's span is current (its whole processing: docs/tracing.md) carries that
span's ``trace_id`` and ``span_id`` (:class:`TraceContextFilter`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: LogRecord attributes that are not user ``extra`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` (32 hex digits) and ``span_id`` (16) of the current span to each record, if any."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace  # when logging is configured, not when this module is imported

        self._current_span = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; annotates it inside a span."""
        context = self._current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One line: time, level, logger, message, then the extra fields."""
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the extra fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Time level logger: message key=value..."""
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{base} {extras}".rstrip()
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the ``worker`` loggers to stderr in the chosen format; quiet the AWS libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("worker").setLevel(level)
    for noisy in ("botocore", "aiobotocore", "urllib3", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
