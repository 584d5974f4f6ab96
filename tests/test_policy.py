"""The decision after a failed attempt, and auto mode's fallback schedule: pure, on a fake clock.

No servers and no sleeping: each case is a call of :func:`decide` (or a move of
:class:`Fallback`) with the time passed in. The real-server tests keep the wiring.
"""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from agentspace_grpc import _errors as errors
from agentspace_grpc._policy import Action, Fallback, RetryPolicy, TransportMode, Wire, decide
from agentspace_grpc._wire import ROWS

ACQUIRE = ROWS["AcquireAccessToken"]  # changes server state
STORE = ROWS["AcquireAndStoreRefreshToken"]  # changes server state
CHECK = ROWS["CheckRefreshToken"]  # idempotent
POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=5.0, multiplier=2.0)
ROUTES: list[tuple[TransportMode, Wire]] = [
    ("grpc", "grpc"),
    ("rest", "rest"),
    ("auto", "grpc"),
    ("auto", "rest"),
]
PLENTY = 30.0  # seconds left: any backoff of POLICY fits
ALMOST_NONE = 0.005  # less than the 10 ms an attempt needs

# Every error class: (falls back from gRPC in auto mode, retried for a non-idempotent RPC,
# retried for an idempotent one).
EXPECTED: dict[type[errors.DataConnectorError], tuple[bool, bool, bool]] = {
    errors.Cancelled: (False, False, False),
    errors.Unknown: (False, False, False),
    errors.InvalidArgument: (False, False, False),
    errors.DeadlineExceeded: (False, False, False),
    errors.NotFound: (False, False, False),
    errors.AuthorizationRequired: (False, False, False),
    errors.AlreadyExists: (False, False, False),
    errors.PermissionDenied: (False, False, False),
    errors.ResourceExhausted: (False, False, False),
    errors.FailedPrecondition: (False, False, False),
    errors.Aborted: (False, False, False),
    errors.OutOfRange: (False, False, False),
    errors.Unimplemented: (True, False, False),
    errors.Internal: (False, False, False),
    errors.UndecodableAnswer: (True, False, False),
    errors.Unavailable: (False, True, True),  # the service said so: it did not act
    errors.ConnectFailed: (True, True, True),  # the request never left
    errors.ConnectionBroken: (False, False, True),  # the request may have been acted on
    errors.DataLoss: (False, False, False),
    errors.Unauthenticated: (False, False, False),  # but refreshed first if that can help
}


def error(
    cls: type[errors.DataConnectorError], retry_delay: float | None = None
) -> errors.DataConnectorError:
    details = ()
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay * 1e9))
        details = (error_details_pb2.RetryInfo(retry_delay=delay),)
    if cls is errors.AuthorizationRequired:
        return cls("no grant", resource="c", details=details)
    return cls("failed", details=details)


def test_every_error_class_is_in_the_table() -> None:
    classes = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.DataConnectorError)
    }
    assert classes - {errors.DataConnectorError} == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_the_action_for_each_error_row_route_time_left_and_refresh(
    cls: type[errors.DataConnectorError],
) -> None:
    falls_back, retried, retried_if_idempotent = EXPECTED[cls]
    cases = itertools.product((ACQUIRE, STORE, CHECK), ROUTES, (PLENTY, ALMOST_NONE), (False, True))
    for row, (mode, wire), time_left, can_refresh in cases:
        action = decide(
            error(cls),
            row=row,
            attempt=2,
            time_left=time_left,
            mode=mode,
            wire=wire,
            can_refresh=can_refresh,
            retry=POLICY,
            draw=0.5,
        )
        case = f"{row.name} over {wire}, {mode} mode, {time_left} s left, {can_refresh=}"
        if falls_back and (mode, wire) == ("auto", "grpc"):
            assert action.kind == "fall back", case
            assert action.incompatible is (cls is errors.UndecodableAnswer), case
            assert action.reason.startswith(("gRPC cannot reach", "a gRPC answer cannot")), case
        elif cls is errors.Unauthenticated and can_refresh:
            assert action == Action("refresh"), case
        elif (retried_if_idempotent if row.idempotent else retried) and time_left == PLENTY:
            assert action == Action("retry", delay=0.5 * 0.2), case  # half of the 2nd bound
        else:
            assert action == Action("raise"), case


def decide_unavailable(
    *,
    attempt: int = 1,
    time_left: float = PLENTY,
    retry: RetryPolicy | None = POLICY,
    draw: float = 1.0,
    retry_delay: float | None = None,
) -> Action:
    return decide(
        error(errors.Unavailable, retry_delay),
        row=ACQUIRE,
        attempt=attempt,
        time_left=time_left,
        mode="grpc",
        wire="grpc",
        can_refresh=True,
        retry=retry,
        draw=draw,
    )


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (30, 5.0)],
)
def test_the_backoff_bound_grows_to_its_maximum(attempt: int, delay: float) -> None:
    policy = RetryPolicy(max_attempts=100)
    full = decide_unavailable(attempt=attempt, retry=policy)
    half = decide_unavailable(attempt=attempt, retry=policy, draw=0.5)
    assert (full.kind, half.kind) == ("retry", "retry")
    assert (full.delay, half.delay) == (pytest.approx(delay), pytest.approx(delay / 2))


def test_attempts_end_at_max_attempts_and_without_a_policy() -> None:
    assert decide_unavailable(attempt=4).kind == "retry"
    assert decide_unavailable(attempt=5) == Action("raise")
    assert decide_unavailable(retry=RetryPolicy(max_attempts=1)) == Action("raise")
    assert decide_unavailable(retry=None) == Action("raise")


def test_the_servers_retry_delay_is_a_floor() -> None:
    assert decide_unavailable(retry_delay=0.4, draw=0.0) == Action("retry", delay=0.4)
    assert decide_unavailable(retry_delay=0.01, draw=1.0) == Action("retry", delay=0.1)


@pytest.mark.parametrize(
    ("retry_delay", "time_left", "kind"),
    [
        (30.0, 2.0, "raise"),  # a wait past the deadline: the service's error, at once
        (0.992, 1.0, "raise"),  # ends 8 ms before the deadline: no room for an attempt
        (0.98, 1.0, "retry"),
        (None, 0.1 + 0.0101, "retry"),
        (None, 0.1 + 0.0099, "raise"),
    ],
)
def test_no_retry_starts_without_time_for_an_attempt(
    retry_delay: float | None, time_left: float, kind: str
) -> None:
    assert decide_unavailable(retry_delay=retry_delay, time_left=time_left).kind == kind


def test_a_refresh_comes_before_a_retry_and_only_while_it_can_help() -> None:
    for can_refresh, kind in ((True, "refresh"), (False, "raise")):
        action = decide(
            error(errors.Unauthenticated),
            row=CHECK,
            attempt=1,
            time_left=PLENTY,
            mode="auto",
            wire="grpc",
            can_refresh=can_refresh,
            retry=POLICY,
            draw=0.5,
        )
        assert action.kind == kind


# ---- auto mode's fallback schedule ---------------------------------------------------------


def test_rest_periods_double_up_to_ten_minutes_and_reset_when_grpc_answers() -> None:
    fallback = Fallback("auto")
    now = 1000.0
    periods = []
    for _ in range(7):
        period = fallback.fall_back(now)
        assert period is not None
        periods.append(period)
        assert fallback.wire() == "rest"
        assert now + period - 0.001 < fallback.rest_until  # REST until the period ends
        now = fallback.rest_until  # then gRPC is probed (and fails again)
    assert periods == [30, 60, 120, 240, 480, 600, 600]
    assert fallback.count == 7
    fallback.recovered()
    assert (fallback.wire(), fallback.rest_until) == ("grpc", 0.0)
    assert fallback.fall_back(now) == 30


def test_a_fallback_during_a_rest_period_changes_nothing() -> None:
    fallback = Fallback("auto")
    assert fallback.fall_back(0.0) == 30
    assert fallback.fall_back(29.9) is None  # a concurrent call failed over gRPC too
    assert (fallback.rest_until, fallback.count, fallback.period) == (30.0, 1, 60)
    assert fallback.fall_back(30.0) == 60  # the probe at the end failed


def test_unusable_grpc_answers_move_to_rest_for_the_longest_period() -> None:
    fallback = Fallback("auto")
    assert fallback.fall_back(5.0, incompatible=True) == 600
    assert fallback.rest_until == 605.0
    assert fallback.fall_back(605.0) == 60  # the doubling goes on from where it was


@pytest.mark.parametrize(
    ("mode", "fell_back", "wire"),
    [
        ("grpc", False, "grpc"),
        ("rest", False, "rest"),
        ("auto", False, "grpc"),
        ("auto", True, "rest"),
    ],
)
def test_the_current_wire(mode: TransportMode, fell_back: bool, wire: Wire) -> None:
    fallback = Fallback(mode)
    if fell_back:
        fallback.fall_back(0.0)
    assert fallback.wire() == wire
