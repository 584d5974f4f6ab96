"""A clock that moves only when the test says so (for the emulator's and the token cache's
``clock``): expiry is tested by moving it, never by sleeping."""

from __future__ import annotations

import time


class ManualClock:
    """Seconds (``now``, from the wall clock at creation unless given) that :meth:`advance`
    moves; calling the clock reads it."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds
