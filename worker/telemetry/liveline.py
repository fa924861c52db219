"""One live status line: redrawn in place on a terminal, emitted every few seconds otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class LiveLine:
    """Throttles updates (``redraw`` s on a terminal, ``interval`` s elsewhere) and draws on a terminal."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        interval: float = 5.0,
        redraw: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.redraw = redraw
        self._clock = clock
        self._last = float("-inf")
        self.drawn = False

    def due(self, *, force: bool = False) -> bool:
        """Whether an update should be shown now (always when forced); marks it shown."""
        now = self._clock()
        if not force and now - self._last < (self.redraw if self.tty else self.interval):
            return False
        self._last = now
        return True

    def draw(self, line: str) -> None:
        """Replace the line on the terminal."""
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self.drawn = True

    def above(self, text: str) -> None:
        """Print a line above the status line (which the caller then redraws)."""
        self.stream.write("\r\x1b[2K" + text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the drawn line with a newline."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
