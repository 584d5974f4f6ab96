"""The emulator's clock: every expiry it issues, stores or checks is read from one.

A clock is a callable answering seconds since the epoch, as :func:`time.time` does (the
default). Wall-clock time because expiries are stored and signed into tokens that outlive the
process; tests pass one they move forward instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

Clock: TypeAlias = Callable[[], float]
