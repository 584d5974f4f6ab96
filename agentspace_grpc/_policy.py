"""What a call does after a failed attempt, decided without I/O: retry, fall back, refresh, raise.

:func:`decide` is a pure function of the error and of what the call loop knows (the attempt,
the RPC, the time left, the mode and wire, whether a credentials refresh can still help);
:class:`Fallback` is ``auto`` mode's wire schedule, read and moved with the time passed in.
The call loop in ``_client`` only carries the action out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal

from agentspace_grpc._errors import (
    ConnectFailed,
    ConnectionBroken,
    DataConnectorError,
    Transport,
    Unauthenticated,
    Unavailable,
    UndecodableAnswer,
    Unimplemented,
    UsageError,
)
from agentspace_grpc._wire import Row

__all__ = [
    "DEFAULT_TIMEOUT",
    "MIN_ATTEMPT_SECONDS",
    "Action",
    "Fallback",
    "RetryPolicy",
    "deadline_after",
    "decide",
]

TransportMode = Literal["grpc", "rest", "auto"]
Wire = Transport  # the wire a call went over

#: Seconds a call may take, all attempts included, when ``timeout`` is not given.
DEFAULT_TIMEOUT: Final = 60.0
#: A retry is not started with less time than this left: it could only end in
#: DEADLINE_EXCEEDED and hide the error that caused it.
MIN_ATTEMPT_SECONDS: Final = 0.01
# After falling back to REST in auto mode, gRPC is tried again after this long (doubling).
REPROBE_FIRST: Final = 30.0
REPROBE_MAX: Final = 600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of UNAVAILABLE answers and connection failures, within the call's deadline.

    The wait before retry *n* (1-based) is drawn uniformly from ``[0, min(max_backoff,
    initial_backoff * multiplier ** (n - 1))]`` ("full jitter"), and is at least the server's
    ``RetryInfo`` delay when it sends one. No retry starts with less than 10 ms of the
    deadline left after the wait: the last error is raised instead. AcquireAccessToken and
    AcquireAndStoreRefreshToken change server state, so they are retried only when the
    request demonstrably did not reach the service (connection refused, TLS failure) or the
    service answered UNAVAILABLE; a connection that breaks after the request was sent is
    retried for CheckRefreshToken only.

    Attributes:
        max_attempts: Attempts in all, the first one included (1 disables retries).
        initial_backoff: Upper bound of the first wait, in seconds.
        max_backoff: Upper bound of any wait, in seconds.
        multiplier: Growth of the bound per retry.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise UsageError("RetryPolicy.max_attempts must be an integer")
        if self.max_attempts < 1:
            raise UsageError("RetryPolicy.max_attempts must be at least 1")
        for field in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"RetryPolicy.{field} must be a number")
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"RetryPolicy.{field} must be a finite number >= 0")
        if self.multiplier < 1:
            raise UsageError("RetryPolicy.multiplier must be at least 1")

    def backoff(self, retry: int, draw: float | None = None) -> float:
        """A jittered wait before retry number ``retry`` (1 for the first retry).

        ``draw`` in ``[0, 1)`` replaces the random draw (for a decision that must be pure).
        """
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return bound * (random.random() if draw is None else draw)


def deadline_after(now: float, timeout: float | None) -> float:
    """The deadline of a call started at ``now`` with ``timeout`` seconds (None: the default)."""
    if timeout is None:
        return now + DEFAULT_TIMEOUT
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise UsageError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return now + timeout


@dataclass(frozen=True, slots=True)
class Action:
    """What the call loop does next: ``kind`` and, for a retry, the wait before it."""

    kind: Literal["raise", "retry", "fall back", "refresh"]
    delay: float = 0.0
    reason: str = ""  # why REST is used instead of gRPC (a log line)
    incompatible: bool = False  # gRPC answered, but its answers cannot be used


RAISE: Final = Action("raise")
REFRESH: Final = Action("refresh")


def decide(
    error: DataConnectorError,
    *,
    row: Row,
    attempt: int,
    time_left: float,
    mode: TransportMode,
    wire: Wire,
    can_refresh: bool,
    retry: RetryPolicy | None,
    draw: float,
) -> Action:
    """The action after attempt number ``attempt`` (1-based) of ``row`` failed with ``error``.

    Args:
        time_left: Seconds until the call's deadline, now.
        mode: The client's transport mode; ``wire`` the one the attempt used.
        can_refresh: The credentials can be refreshed, and were not yet in this call.
        draw: A number in ``[0, 1)`` for the backoff's jitter.
    """
    if mode == "auto" and wire == "grpc":
        if isinstance(error, ConnectFailed | Unimplemented):
            return Action("fall back", reason=f"gRPC cannot reach the service ({error})")
        if isinstance(error, UndecodableAnswer):
            reason = (
                f"a gRPC answer cannot be used ({error.message}; the inferred field numbers "
                "may not match the service)"
            )
            return Action("fall back", reason=reason, incompatible=True)
    if isinstance(error, Unauthenticated) and can_refresh:
        return REFRESH
    if retry is None or attempt >= retry.max_attempts or not retryable(error, row):
        return RAISE
    delay = retry.backoff(attempt, draw)
    if error.retry_delay is not None:
        delay = max(delay, error.retry_delay)
    if delay + MIN_ATTEMPT_SECONDS >= time_left:
        return RAISE  # the service's own error says more than a deadline cut short
    return Action("retry", delay=delay)


def retryable(error: DataConnectorError, row: Row) -> bool:
    """Whether another attempt may follow ``error``; a broken connection may have delivered
    the request (and the service may have rotated a refresh token): idempotent RPCs only."""
    if isinstance(error, ConnectionBroken):
        return row.idempotent
    return isinstance(error, Unavailable)


@dataclass(slots=True)
class Fallback:
    """The wire of a client: its mode's, or in ``auto`` mode gRPC until it cannot reach the
    service, then REST for a period (doubling up to 10 minutes; the longest at once when gRPC's
    answers cannot be used), after which gRPC is probed again; an answer over gRPC ends it.

    Attributes:
        mode: The client's transport mode.
        rest_until: The end of the REST period (0: none since gRPC last answered).
        period: The length of the next REST period.
        count: REST periods so far (a loop probes gRPC on a new connection once after each).

    An attempt in ``auto`` mode goes over REST while the time is before ``rest_until``.
    """

    mode: TransportMode
    rest_until: float = 0.0
    period: float = REPROBE_FIRST
    count: int = 0

    def wire(self) -> Wire:
        """The wire the client's calls go over now (in ``auto`` mode, the one that answered
        last, or REST since a fallback until gRPC answers again)."""
        if self.mode == "grpc":
            return "grpc"
        return "rest" if self.mode == "rest" or self.rest_until else "grpc"

    def fall_back(self, now: float, *, incompatible: bool = False) -> float | None:
        """Start a REST period at ``now``: its length, or None if one is running already."""
        if now < self.rest_until:
            return None  # a concurrent call did it already
        length = REPROBE_MAX if incompatible else self.period
        self.rest_until = now + length
        self.count += 1
        self.period = min(self.period * 2, REPROBE_MAX)
        return length

    def recovered(self) -> None:
        """gRPC answered: calls stay on it, and the next period is the first length again."""
        self.rest_until = 0.0
        self.period = REPROBE_FIRST
