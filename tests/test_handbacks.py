"""The hand-back ledger: receives given back unprocessed, counted per message id and bounded."""

from __future__ import annotations

from worker.engine.handbacks import HandBacks


def test_counts_per_message_and_forgets() -> None:
    """Each hand-back of a message adds one; forget() drops the message; others are untouched."""
    ledger = HandBacks()
    ledger.record("a")
    ledger.record("a")
    ledger.record("b")
    assert (ledger.count("a"), ledger.count("b"), ledger.count("c")) == (2, 1, 0)
    ledger.forget("a")
    ledger.forget("never-seen")
    assert (ledger.count("a"), ledger.count("b"), len(ledger)) == (0, 1, 1)


def test_bounded_forgets_the_least_recently_handed_back() -> None:
    """Past its limit the ledger drops the message handed back longest ago, never the one just recorded."""
    ledger = HandBacks(limit=3)
    for message_id in ("a", "b", "c"):
        ledger.record(message_id)
    ledger.record("a")  # a is now the most recent
    ledger.record("d")  # over the limit: b (oldest) goes
    assert len(ledger) == 3
    assert (ledger.count("a"), ledger.count("b"), ledger.count("c"), ledger.count("d")) == (2, 0, 1, 1)
