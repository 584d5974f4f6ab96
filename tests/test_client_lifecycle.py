"""Lifecycle: loops, closing with calls in flight, cancellation, no leaks."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc

import pytest

from agentspace_grpc import Cancelled, DataConnectorClient
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy
from tests._servers import CONNECTOR, Seen, Servers, ServersThread


def stall_acquire(servers: Servers) -> asyncio.Event:
    entered = asyncio.Event()

    async def stall(seen: Seen) -> p.AcquireAccessTokenResponse:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    servers.service.on("AcquireAccessToken", stall)
    return entered


def test_pitfall_1_a_client_made_outside_a_loop_works_in_two_asyncio_runs(transport: str) -> None:
    with ServersThread() as servers:
        client = DataConnectorClient(credentials="alice", **servers.client_kwargs(transport))

        async def acquire(action: str) -> str:
            token = await client.acquire_access_token(CONNECTOR, action=action)
            return token.access_token

        first = asyncio.run(acquire("one"))  # the loop ends without aclose()
        second = asyncio.run(acquire("two"))
        asyncio.run(client.aclose())
        gc.collect()  # any unclosed channel or session would warn here (warnings are errors)
    assert first == "tp:alice:1"
    assert second == "tp:alice:2"
    assert [s.wire for s in servers.service.seen] == [transport, transport]


def test_pitfall_1_a_closed_client_says_so_clearly(transport: str) -> None:
    with ServersThread() as servers:
        client = DataConnectorClient(credentials="alice", **servers.client_kwargs(transport))

        async def use_and_close() -> None:
            async with client:
                await client.acquire_access_token(CONNECTOR)

        asyncio.run(use_and_close())
        with pytest.raises(RuntimeError, match="closed"):
            asyncio.run(client.acquire_access_token(CONNECTOR))


@pytest.mark.parametrize("single_flight", [True, False])
async def test_pitfall_2_aclose_with_a_call_in_flight_is_prompt(
    servers: Servers, transport: str, single_flight: bool
) -> None:
    entered = stall_acquire(servers)
    client = DataConnectorClient(
        credentials="alice", single_flight=single_flight, **servers.client_kwargs(transport)
    )
    call = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
    await entered.wait()
    started = time.monotonic()
    await client.aclose()
    assert time.monotonic() - started < 1.0
    with pytest.raises(Cancelled, match="closed"):
        await call
    gc.collect()


async def test_pitfall_2_aclose_while_connecting_to_an_unresponsive_peer_is_prompt(
    servers: Servers, transport: str
) -> None:
    async with TcpProxy(servers.grpc_port) as proxy:
        proxy.mode = "stall"
        client = DataConnectorClient(
            transport=transport,  # type: ignore[arg-type]
            endpoint=proxy.address,
            rest_endpoint=proxy.url,
            credentials="alice",
        )
        call = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await proxy.wait_for(lambda: proxy.accepted > 0)  # connected; the peer never answers
        started = time.monotonic()
        await client.aclose()
        assert time.monotonic() - started < 1.0
        with pytest.raises(Cancelled):
            await call
    gc.collect()


async def test_aclose_is_idempotent_and_a_closed_client_refuses_calls(
    servers: Servers, transport: str
) -> None:
    client = DataConnectorClient(credentials="alice", **servers.client_kwargs(transport))
    await client.acquire_access_token(CONNECTOR)
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.acquire_access_token(CONNECTOR)
    with pytest.raises(RuntimeError, match="closed"):
        await client.store_refresh_token(CONNECTOR, "https://r/?code=1")


async def test_aclose_of_an_unused_client_is_fine() -> None:
    client = DataConnectorClient(credentials="alice")
    await client.aclose()


async def test_cancelling_an_unshared_call_cancels_the_rpc(
    servers: Servers, transport: str
) -> None:
    entered = stall_acquire(servers)
    async with DataConnectorClient(
        credentials="alice", single_flight=False, **servers.client_kwargs(transport)
    ) as client:
        call = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await entered.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(servers.service.wait_cancelled(), 10)
    assert servers.service.cancelled == 1


@pytest.mark.parametrize("single_flight", [True, False])
async def test_pitfall_3_cancelled_calls_leave_memory_flat(
    servers: Servers, transport: str, single_flight: bool
) -> None:
    # Scaled down from 50k calls (the load issue runs the full size): 3,000 calls, 30% of
    # them cancelled mid-flight; Python memory after the warm-up batches stays flat.
    async def slow(seen: Seen) -> p.AcquireAccessTokenResponse:
        await asyncio.sleep(0.002)
        return p.AcquireAccessTokenResponse(access_token="t")

    servers.service.on("AcquireAccessToken", slow)
    rng = random.Random(7)
    async with DataConnectorClient(
        credentials="alice", single_flight=single_flight, **servers.client_kwargs(transport)
    ) as client:

        async def batch(number: int) -> None:
            calls = [
                asyncio.ensure_future(
                    client.acquire_access_token(CONNECTOR, action=f"{number}-{i % 20}")
                )
                for i in range(200)
            ]
            await asyncio.sleep(0.001)
            for call in calls:
                if rng.random() < 0.3:
                    call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            servers.service.seen.clear()

        tracemalloc.start()
        try:
            for number in range(5):
                await batch(number)
            gc.collect()
            baseline = tracemalloc.get_traced_memory()[0]
            for number in range(5, 15):
                await batch(number)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
    assert grown < 512 * 1024, f"grew by {grown} bytes"
