"""Network faults between the client and an emulator process, through a real TCP proxy.

The proxy refuses, resets mid-call, partitions (holds every byte of open connections and
stalls new ones) and drops idle connections. Every call must succeed within its deadline or
raise the documented error by then (a wide margin: deadline + 0.7 s); nothing hangs;
``aclose()`` returns within 1 s; no file descriptor or asyncio task is left behind (checked
against a snapshot taken before the proxy and the client existed; warnings, ResourceWarning
included, are errors). The emulator rotates a refresh token on every acquire, 250 ms at the
provider, so calls are really in flight when the faults strike. docs/failure-modes.md 2, 4, 7, 8.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agentspace_grpc import (
    AccessToken,
    Cancelled,
    DataConnectorClient,
    DeadlineExceeded,
    RetryPolicy,
    Unavailable,
)
from tests._emulator_helpers import (
    CONNECTOR,
    EmulatorProcess,
    connect_user,
    emulator_stats,
    provider_stats,
    start_emulator,
    until_counted,
    userinfo,
)
from tests._raw import TcpProxy
from tests._reliability import (
    Outcome,
    Resources,
    assert_released,
    tally,
    timed,
    unexpected,
)

USERS = tuple(f"net{i}@example.com" for i in range(3))
LATENCY = 0.25  # the provider's answer time: each acquire is in flight at least this long
MARGIN = 0.7  # how late past its deadline a call may end (a correctness bound, not speed)
RETRY = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.2)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    root = tmp_path_factory.mktemp("network")
    server = asyncio.run(
        start_emulator(
            root / "data",
            "--no-expires-in",  # nothing cacheable: every acquire refreshes upstream
            "--fault-latency-ms",
            str(int(LATENCY * 1000)),
            log_dir=root,
        )
    )
    try:
        yield server
    finally:
        assert asyncio.run(server.stop()) == 0
    # Whatever the faults did to connections, the server never hit an internal error.
    log = server.stderr()
    assert "emulator ready" in log
    assert "internal error" not in log
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def tokens(emulator: EmulatorProcess) -> dict[str, str]:
    """Each user's end-user bearer token, after consent and store."""

    async def connect() -> dict[str, str]:
        return {user: await connect_user(emulator.http, user) for user in USERS}

    return asyncio.run(connect())


@pytest.fixture
async def baseline() -> Resources:
    return Resources.now()


@pytest.fixture
async def proxy(
    emulator: EmulatorProcess, transport: str, baseline: Resources
) -> AsyncIterator[TcpProxy]:
    port = emulator.grpc_port if transport == "grpc" else emulator.http_port
    async with TcpProxy(port) as running:
        yield running
    await assert_released(baseline)


def client_for(proxy: TcpProxy, transport: str, **kwargs: object) -> DataConnectorClient:
    return DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        endpoint=proxy.address,
        rest_endpoint=proxy.url,
        **kwargs,  # type: ignore[arg-type]
    )


async def acquire(
    client: DataConnectorClient, token: str, budget: float, tag: str = ""
) -> Outcome[AccessToken]:
    call = client.acquire_access_token(CONNECTOR, credentials=token, timeout=budget)
    return await timed(call, budget=budget, tag=tag)


def assert_on_time(outcomes: list[Outcome[AccessToken]]) -> None:
    late = [o for o in outcomes if o.budget is not None and o.elapsed > o.budget + MARGIN]
    assert not late, [(o.tag, o.kind(), round(o.elapsed, 3)) for o in late]


async def assert_owned(emulator: EmulatorProcess, outcome: Outcome[AccessToken], user: str) -> None:
    assert outcome.value is not None, outcome.error
    status, info = await userinfo(emulator.http, outcome.value.access_token)
    assert status == 200
    assert info["sub"] == user


async def close_promptly(client: DataConnectorClient) -> None:
    started = time.monotonic()
    await client.aclose()
    assert time.monotonic() - started < 1.0


async def test_refused_connections_fail_by_the_deadline_then_recover(
    emulator: EmulatorProcess, tokens: dict[str, str], proxy: TcpProxy, transport: str
) -> None:
    await proxy.refuse()
    client = client_for(proxy, transport, retry=RETRY)
    failed = await asyncio.gather(
        *(acquire(client, tokens[u], 0.8, u) for u in USERS)  # retried until the deadline
    )
    assert not unexpected(failed, (Unavailable, DeadlineExceeded)), tally(failed)
    assert all(not o.ok for o in failed)
    assert_on_time(failed)
    # The port comes back while a call is retrying: that call succeeds.
    asyncio.get_running_loop().call_later(0.4, lambda: asyncio.ensure_future(proxy.listen()))
    back = await acquire(client, tokens[USERS[0]], 8.0)
    assert_on_time([back])
    await assert_owned(emulator, back, USERS[0])
    await close_promptly(client)


async def test_a_reset_mid_call_is_unavailable_and_loses_no_token(
    emulator: EmulatorProcess, tokens: dict[str, str], proxy: TcpProxy, transport: str
) -> None:
    before = await provider_stats(emulator.http)
    own = await emulator_stats(emulator.http)
    client = client_for(proxy, transport, retry=RETRY)
    calls = [asyncio.ensure_future(acquire(client, tokens[u], 5.0, u)) for u in USERS]
    started = own.get("upstream_refreshes_started", 0) + len(USERS)
    await until_counted(
        lambda: emulator_stats(emulator.http), "upstream_refreshes_started", started
    )
    assert proxy.reset_all() > 0  # every call is at the provider now
    cut = await asyncio.gather(*calls)
    # An acquire may have rotated a refresh token before the connection broke, so the
    # client never resends it (failure mode 7): the documented error is Unavailable.
    assert not unexpected(cut, (Unavailable,)), tally(cut)
    assert not any(o.ok for o in cut), tally(cut)
    assert_on_time(cut)
    # The server finishes the rotations it started.
    committed = own.get("upstream_refreshes_committed", 0) + len(USERS)
    await until_counted(
        lambda: emulator_stats(emulator.http), "upstream_refreshes_committed", committed
    )
    during = await provider_stats(emulator.http)
    assert during["refresh_requests"] - before["refresh_requests"] == len(USERS)  # none resent
    # The server finished and committed those rotations: every user acquires again, on a
    # new connection, without re-consent; nothing was reused or revoked.
    again = await asyncio.gather(*(acquire(client, tokens[u], 5.0, u) for u in USERS))
    for user, outcome in zip(USERS, again, strict=True):
        await assert_owned(emulator, outcome, user)
    after = await provider_stats(emulator.http)
    assert after["invalid_grant"] == before["invalid_grant"]
    assert after["families_revoked"] == before["families_revoked"]
    await close_promptly(client)


async def test_a_partition_ends_calls_at_their_deadline_then_recovers(
    emulator: EmulatorProcess, tokens: dict[str, str], proxy: TcpProxy, transport: str
) -> None:
    client = client_for(proxy, transport, retry=RETRY)
    warm = await acquire(client, tokens[USERS[0]], 5.0)
    assert warm.ok, warm.error
    proxy.pause()  # open connections hold every byte ...
    proxy.mode = "stall"  # ... and new ones are accepted but never answered
    stuck = await asyncio.gather(*(acquire(client, tokens[u], 1.0, u) for u in USERS))
    assert not unexpected(stuck, (DeadlineExceeded,)), tally(stuck)
    assert all(not o.ok and o.elapsed >= 0.9 for o in stuck)
    assert_on_time(stuck)
    proxy.mode = "forward"
    proxy.resume()
    healed = await acquire(client, tokens[USERS[1]], 5.0)
    await assert_owned(emulator, healed, USERS[1])
    await close_promptly(client)


async def test_the_call_after_an_idle_drop_succeeds_first_time(
    emulator: EmulatorProcess, tokens: dict[str, str], transport: str, baseline: Resources
) -> None:
    port = emulator.grpc_port if transport == "grpc" else emulator.http_port
    async with TcpProxy(port, idle_timeout=0.8) as proxy:
        # No retries: the first attempt after the drop must work (failure mode 4).
        client = client_for(proxy, transport, retry=None)
        first = await acquire(client, tokens[USERS[0]], 5.0)
        assert first.ok, first.error
        await proxy.wait_for(lambda: proxy.dropped > 0)  # the proxy's idle timer fired
        await asyncio.sleep(0.3)  # and the client read the reset (gRPC's poller thread too)
        assert proxy.accepted == 1
        second = await acquire(client, tokens[USERS[0]], 5.0)
        await assert_owned(emulator, second, USERS[0])
        assert proxy.accepted == 2  # a new connection, made on demand
        await close_promptly(client)
    await assert_released(baseline)


async def test_aclose_during_a_partition_is_prompt_and_ends_every_call(
    emulator: EmulatorProcess, tokens: dict[str, str], proxy: TcpProxy, transport: str
) -> None:
    before = await provider_stats(emulator.http)
    own = await emulator_stats(emulator.http)
    client = client_for(proxy, transport, retry=RETRY)
    calls = [asyncio.ensure_future(acquire(client, tokens[u], 30.0, u)) for u in USERS]
    started = own.get("upstream_refreshes_started", 0) + len(USERS)
    await until_counted(
        lambda: emulator_stats(emulator.http), "upstream_refreshes_started", started
    )
    proxy.pause()  # the calls are in flight ...
    proxy.mode = "stall"
    answered = before["refreshes"] + len(USERS)
    await until_counted(lambda: provider_stats(emulator.http), "refreshes", answered)
    await close_promptly(client)  # ... and their answers held by the partition
    ended = await asyncio.wait_for(asyncio.gather(*calls), 1.0)
    assert not unexpected(ended, (Cancelled,)), tally(ended)
    assert all(not o.ok for o in ended)
    proxy.resume()


async def test_a_stalled_connection_attempt_ends_by_the_deadline(
    tokens: dict[str, str], proxy: TcpProxy, transport: str
) -> None:
    proxy.mode = "stall"  # accepts, reads, never answers (not even the HTTP/2 settings)
    client = client_for(proxy, transport, retry=RETRY)
    stuck = await acquire(client, tokens[USERS[0]], 1.0)
    assert isinstance(stuck.error, DeadlineExceeded), stuck.kind()
    assert_on_time([stuck])
    await close_promptly(client)
