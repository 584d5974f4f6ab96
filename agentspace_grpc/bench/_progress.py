"""A one-line progress bar on stderr (plain lines every 10% when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts steps towards ``total`` and redraws the bar with the current label."""

    def __init__(self, total: int, *, stream: TextIO | None = None, width: int = 28) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._start = time.monotonic()
        self._last_decile = -1

    def step(self, label: str, count: int = 1) -> None:
        """Mark ``count`` steps done; ``label`` says what runs next."""
        self.done = min(self.total, self.done + count)
        self.show(label)

    def show(self, label: str) -> None:
        """Redraw without advancing."""
        fraction = self.done / self.total
        elapsed = time.monotonic() - self._start
        if self._tty:
            filled = round(fraction * self._width)
            bar = "#" * filled + "-" * (self._width - filled)
            line = f"\r[{bar}] {fraction:4.0%} {elapsed:5.1f}s {label}"
            self._stream.write(f"{line[:110]:<110}")
            self._stream.flush()
            return
        decile = int(fraction * 10)
        if decile != self._last_decile:
            self._last_decile = decile
            self._stream.write(f"bench: {fraction:4.0%} after {elapsed:.1f}s: {label}\n")
            self._stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
