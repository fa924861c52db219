"""Progress of a redrive: a bar on a terminal (counts, rate, ETA), log lines otherwise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from worker.telemetry.liveline import LiveLine

log = logging.getLogger("worker.redrive")

BAR_WIDTH = 24


@dataclass(slots=True)
class Tally:
    """Counts by result (``moved`` is "would move" in a dry run)."""

    moved: int = 0
    skipped: int = 0
    held: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        """Messages that got a result."""
        return self.moved + self.skipped + self.held + self.failed


def format_clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_duration(seconds: float) -> str:
    """``12.3 s`` under a minute, else ``h:mm:ss``."""
    return f"{max(0.0, seconds):.1f} s" if seconds < 60 else format_clock(seconds)


def format_bar(tally: Tally, total: int | None, elapsed: float, *, dry_run: bool = False) -> str:
    """One progress line: bar (when the total is known), counts, rate of moves, ETA."""
    rate = tally.moved / elapsed if elapsed > 0 else 0.0
    verb = "would move" if dry_run else "moved"
    counts = (
        f"{verb} {tally.moved}  skipped {tally.skipped}  held {tally.held}  failed {tally.failed}  "
        f"{rate:.1f} msg/s"
    )
    if not total:
        return counts
    fraction = min(1.0, tally.done / total)
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    throughput = tally.done / elapsed if elapsed > 0 else 0.0
    eta = format_clock((total - tally.done) / throughput) if throughput > 0 and tally.done < total else "-"
    return f"[{bar}] {tally.done}/{total}  {counts}  ETA {eta}"


class Progress:
    """Shows ``Tally`` updates: a redrawn bar on a terminal, else a log line every ``interval`` seconds."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        total: int | None = None,
        dry_run: bool = False,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.total = total
        self.dry_run = dry_run
        self._clock = clock
        self.started = clock()
        self._line = LiveLine(stream, tty=tty, interval=interval, clock=clock)
        self._tally = Tally()

    def elapsed(self) -> float:
        """Seconds since the progress started."""
        return self._clock() - self.started

    def update(self, tally: Tally, *, force: bool = False) -> None:
        """Show the new counts (throttled: 10/s on a terminal, every ``interval`` s in logs)."""
        self._tally = tally
        if not self._line.due(force=force):
            return
        if self.tty:
            self._line.draw(format_bar(tally, self.total, self.elapsed(), dry_run=self.dry_run))
        else:
            rate = tally.moved / self.elapsed() if self.elapsed() > 0 else 0.0
            log.info(
                "redrive progress",
                extra={
                    "event": "redrive_progress",
                    "moved": tally.moved,
                    "skipped": tally.skipped,
                    "held": tally.held,
                    "failed": tally.failed,
                    "total": self.total,
                    "rate": round(rate, 1),
                    "dry_run": self.dry_run,
                },
            )

    def note(self, text: str, **extra: object) -> None:
        """A per-message event (failed, held): a line above the bar, or a warning log line."""
        if self.tty:
            self._line.above(text)
            if self._line.drawn:
                self.update(self._tally, force=True)
        else:
            log.warning(text, extra={"event": "redrive_message", **extra})

    def finish(self) -> None:
        """Final redraw and a newline on a terminal."""
        self.update(self._tally, force=True)
        self._line.finish()
