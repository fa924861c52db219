"""Idempotency stores: the claim protocol, its three answers, and the in-process MemoryStore.

A store keeps one entry per key: in progress (a delivery is running the handler; its claim lapses at
``expires_at``) or completed (the handler's result, kept until ``expires_at``). An entry whose
``expires_at`` has passed counts as absent. Times are epoch seconds, passed in by the caller (one clock).
Results travel as JSON text, or None for a result that was not stored.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import dataclass
from typing import Protocol

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller owns the key now: run the handler, then ``complete`` or ``release`` with ``token``."""

    token: str


@dataclass(frozen=True, slots=True)
class Completed:
    """The key was completed within its TTL: ``result`` is the stored JSON text (None: not stored)."""

    result: str | None


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another delivery holds the key; its claim lapses at ``until`` (epoch seconds)."""

    until: float


ClaimResult = Claimed | Completed | InProgress


class IdempotencyStore(Protocol):
    """Where idempotency keys live; every method is atomic for one key across everyone sharing the store."""

    async def claim(self, key: str, now: float, in_progress_until: float) -> ClaimResult:
        """Take ``key`` unless a live entry holds it (that entry's answer, then)."""
        ...

    async def complete(self, key: str, result: str | None, expires_at: float, *, token: str) -> None:
        """Record ``key`` completed with ``result`` until ``expires_at`` if claim ``token`` still holds it."""
        ...

    async def release(self, key: str, *, token: str) -> None:
        """Forget ``key`` if the claim ``token`` still holds it (the next delivery runs the handler)."""
        ...


def new_token() -> str:
    """A claim's owner token: random, so a claim taken over once it lapsed is safe from its first owner."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Entry:
    status: str
    expires_at: float
    token: str
    result: str | None = None


class MemoryStore:
    """Keys in this process only (one worker replica): bounded, expired entries pruned as claims come.

    At ``max_entries`` the oldest written entry is dropped to make room (a dropped key can run again).
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("MemoryStore max_entries must be >= 1")
        self.max_entries = max_entries
        #: Entries in the order they were last written (dicts keep insertion order).
        self._entries: dict[str, _Entry] = {}
        #: (expires_at, key) per write, oldest expiry first; stale pairs are skipped when popped.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: str, now: float, in_progress_until: float) -> ClaimResult:
        """Take ``key`` unless a live entry holds it."""
        self._prune(now)
        entry = self._entries.get(key)
        if entry is not None and not entry.expires_at < now:
            if entry.status == COMPLETED:
                return Completed(entry.result)
            return InProgress(entry.expires_at)
        token = new_token()
        self._write(key, _Entry(IN_PROGRESS, in_progress_until, token))
        return Claimed(token)

    async def complete(self, key: str, result: str | None, expires_at: float, *, token: str) -> None:
        """Record the result if ``token`` still holds the key."""
        entry = self._entries.get(key)
        if entry is not None and entry.token == token:
            self._write(key, _Entry(COMPLETED, expires_at, token, result))

    async def release(self, key: str, *, token: str) -> None:
        """Forget the key if ``token`` still holds it."""
        entry = self._entries.get(key)
        if entry is not None and entry.token == token:
            del self._entries[key]

    def _write(self, key: str, entry: _Entry) -> None:
        self._entries.pop(key, None)  # re-inserted last: the dict's order is the order of writes
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry
        heapq.heappush(self._expiries, (entry.expires_at, key))
        if len(self._expiries) > 2 * self.max_entries + 16:  # pairs of overwritten or dropped entries
            self._expiries = [(e.expires_at, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiries)

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                del self._entries[key]
