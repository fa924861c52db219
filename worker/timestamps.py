"""Times as records write them (pure): UTC ISO-8601 with a ``Z``, and back."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(value: datetime | None, timespec: str = "auto") -> str | None:
    """``value`` in UTC as ISO-8601 ending in ``Z`` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(value: object) -> datetime | None:
    """An ISO-8601 time back to an aware datetime (UTC when it has no offset); None when unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
