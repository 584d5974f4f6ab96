"""Deadlines and retries: one deadline across attempts, only safe retries, idle drops."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from aiohttp import web

from agentspace_grpc import (
    DataConnectorClient,
    DataConnectorError,
    DeadlineExceeded,
    RetryPolicy,
    Unavailable,
)
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy, reset_connection
from tests._servers import CONNECTOR, RpcFault, Seen, Servers, retry_info

FAST = RetryPolicy(max_attempts=100, initial_backoff=0.02, max_backoff=0.1)


def unavailable(text: str = "try later") -> RpcFault:
    return RpcFault(grpc.StatusCode.UNAVAILABLE, text)


# ---- deadlines --------------------------------------------------------------------------


async def test_pitfall_8_deadline_against_a_stalled_server_ends_on_time(
    servers: Servers, transport: str
) -> None:
    async def stall(seen: Seen) -> p.AcquireAccessTokenResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    servers.service.on("AcquireAccessToken", stall)
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            await client.acquire_access_token(CONNECTOR, timeout=1.0)
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert caught.value.transport == transport
    assert len(servers.service.calls()) == 1  # DEADLINE_EXCEEDED is not retried


async def test_pitfall_8_deadline_against_a_stalled_connection_ends_on_time(
    servers: Servers, transport: str
) -> None:
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port) as proxy:
        proxy.mode = "stall"  # accepts, reads, never answers (not even the HTTP/2 handshake)
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=proxy.url,
            credentials="alice",
            retry=FAST,
        ) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.acquire_access_token(CONNECTOR, timeout=1.0)
            elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5


async def test_one_deadline_across_all_attempts(servers: Servers, transport: str) -> None:
    starts: list[float] = []

    async def always_unavailable(seen: Seen) -> p.AcquireAccessTokenResponse:
        starts.append(time.monotonic())
        raise unavailable()

    servers.service.on("AcquireAccessToken", always_unavailable)
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.acquire_access_token(CONNECTOR, timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.6
    assert len(starts) >= 3
    # No attempt began once the deadline had passed. The server notes an attempt when it
    # arrives, so one sent with a millisecond left can be noted just after the deadline:
    # allow 20 ms for that trip over loopback on a busy machine.
    assert max(starts) < started + 1.0 + 0.02


async def test_unavailable_from_the_service_is_retried(servers: Servers, transport: str) -> None:
    servers.service.fail_next(unavailable(), unavailable())
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert token.access_token == "tp:alice:3"
    assert len(servers.service.calls("AcquireAccessToken")) == 3


async def test_retry_info_is_honoured(servers: Servers, transport: str) -> None:
    servers.service.fail_next(
        RpcFault(grpc.StatusCode.UNAVAILABLE, "provider rate-limited", retry_info(0.4))
    )
    async with DataConnectorClient(
        credentials="alice",
        retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.001),
        **servers.client_kwargs(transport),
    ) as client:
        started = time.monotonic()
        await client.acquire_access_token(CONNECTOR)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.4
    assert len(servers.service.seen) == 2


async def test_other_errors_are_not_retried(servers: Servers, transport: str) -> None:
    """Which errors are retried is decide()'s table (test_policy.py); this is the wiring."""
    code = grpc.StatusCode.PERMISSION_DENIED
    servers.service.fail_next(RpcFault(code, "no"))
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
    assert caught.value.code == code
    assert len(servers.service.seen) == 1


async def test_max_attempts_bounds_the_retries(servers: Servers, transport: str) -> None:
    servers.service.fail_next(*(unavailable() for _ in range(10)))
    async with DataConnectorClient(
        credentials="alice",
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.01),
        **servers.client_kwargs(transport),
    ) as client:
        with pytest.raises(Unavailable):
            await client.acquire_access_token(CONNECTOR)
    assert len(servers.service.seen) == 3


async def test_connection_refused_is_retried_until_the_server_is_back(
    servers: Servers, transport: str
) -> None:
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port) as proxy:
        await proxy.refuse()
        asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(proxy.listen()))
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=proxy.url,
            credentials="alice",
            retry=RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2),
        ) as client:
            token = await client.acquire_access_token(CONNECTOR, timeout=8)
    assert token.access_token == "tp:alice:1"
    assert len(servers.service.seen) == 1


# ---- pitfall 7: never resend a call the server may have committed ------------------------


async def test_pitfall_7_a_dropped_answer_after_the_commit_is_not_retried(
    servers: Servers, transport: str
) -> None:
    commits: list[str] = []
    async with TcpProxy(servers.grpc_port) as proxy:

        async def commit_then_drop_grpc(seen: Seen) -> p.AcquireAccessTokenResponse:
            commits.append(seen.method)  # e.g. the refresh token was rotated and saved
            proxy.reset_all()  # ... and the answer is lost on the way back
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def commit_then_drop_rest(request: web.Request) -> web.StreamResponse | None:
            await request.read()
            commits.append("AcquireAccessToken")
            reset_connection(request)
            return web.Response()

        servers.service.on("AcquireAccessToken", commit_then_drop_grpc)
        servers.service.rest_hook = commit_then_drop_rest
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=servers.rest_url,
            credentials="alice",
            retry=FAST,
        ) as client:
            with pytest.raises(Unavailable):
                await client.acquire_access_token(CONNECTOR, timeout=5)
    assert commits == ["AcquireAccessToken"]


async def test_an_idempotent_call_is_retried_after_a_dropped_answer(
    servers: Servers, transport: str
) -> None:
    commits: list[str] = []
    async with TcpProxy(servers.grpc_port) as proxy:

        async def drop_first_grpc(seen: Seen) -> p.CheckRefreshTokenResponse:
            commits.append(seen.method)
            if len(commits) == 1:
                proxy.reset_all()
                await asyncio.Event().wait()
            return p.CheckRefreshTokenResponse(
                refresh_token_info=p.RefreshTokenInfo(name=CONNECTOR, scopes=["s"])
            )

        async def drop_first_rest(request: web.Request) -> web.StreamResponse | None:
            await request.read()
            if not commits:
                commits.append("CheckRefreshToken")
                reset_connection(request)
                return web.Response()
            return None

        servers.service.on("CheckRefreshToken", drop_first_grpc)
        servers.service.rest_hook = drop_first_rest
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=servers.rest_url,
            credentials="alice",
            retry=FAST,
        ) as client:
            with pytest.warns(DeprecationWarning, match="deprecated"):
                scopes = await client.check_refresh_token(CONNECTOR)
    assert scopes == ("s",)
    assert len(commits) == 2  # the first attempt reached the server, then a retry did
    assert len(servers.service.calls("CheckRefreshToken")) == (2 if transport == "grpc" else 1)


# ---- pitfall 4: idle connections ---------------------------------------------------------


async def test_pitfall_4_the_call_after_an_idle_drop_succeeds(
    servers: Servers, transport: str
) -> None:
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port, idle_timeout=0.3) as proxy:
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=proxy.url,
            credentials="alice",
            retry=None,  # the next call must succeed at its first attempt
        ) as client:
            await client.acquire_access_token(CONNECTOR)
            await proxy.wait_for(lambda: proxy.dropped > 0)  # the proxy's idle timer fired
            await asyncio.sleep(0.3)  # and the client read the reset (gRPC's poller thread too)
            token = await client.acquire_access_token(CONNECTOR, action="later")
        assert proxy.accepted == 2
    assert token.access_token == "tp:alice:2"
