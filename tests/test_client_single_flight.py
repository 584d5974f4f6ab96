"""Single-flight: identical concurrent acquires share one RPC; waiters keep their own fate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from agentspace_grpc import (
    AccessToken,
    AuthorizationRequired,
    DataConnectorClient,
    DeadlineExceeded,
)
from agentspace_grpc import _proto as p
from tests._servers import CONNECTOR, RpcFault, Seen, Servers

PACKAGE_DIR = str(Path(__import__("agentspace_grpc").__file__).parent)


class Gate:
    """Holds every AcquireAccessToken until released; answers per caller identity."""

    def __init__(self, servers: Servers) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.arrivals: asyncio.Queue[Seen] = asyncio.Queue()  # each call, as it comes in
        self.fault: RpcFault | None = None
        servers.service.on("AcquireAccessToken", self.handle)

    async def handle(self, seen: Seen) -> p.AcquireAccessTokenResponse:
        self.entered.set()
        self.arrivals.put_nowait(seen)
        await self.open.wait()
        if self.fault is not None:
            raise self.fault
        request = seen.request
        return p.AcquireAccessTokenResponse(
            access_token=f"{seen.identity}|{request.scope}|{request.action}|{id(seen)}",
            refresh_token_info=p.RefreshTokenInfo(name=request.name, scopes=["s"]),
        )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def own_pending_tasks() -> list[asyncio.Task[object]]:
    """Tasks still running code of the client package (none should be left behind)."""
    current = asyncio.current_task()
    left = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename.startswith(PACKAGE_DIR):
            left.append(task)
    return left


async def test_identical_concurrent_acquires_share_one_rpc(
    servers: Servers, transport: str
) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        calls = [
            asyncio.ensure_future(client.acquire_access_token(CONNECTOR, scope="s", action="a"))
            for _ in range(50)
        ]
        await gate.entered.wait()
        await settle()
        gate.open.set()
        tokens = await asyncio.gather(*calls)
    assert len(servers.service.seen) == 1
    assert len({t.access_token for t in tokens}) == 1
    assert tokens[0].access_token.startswith("alice|s|a|")


async def test_different_identities_never_share(servers: Servers, transport: str) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="service-account", **servers.client_kwargs(transport)
    ) as client:
        calls = {
            user: [
                asyncio.ensure_future(
                    client.acquire_access_token(CONNECTOR, credentials=f"{user}-token")
                )
                for _ in range(20)
            ]
            for user in ("alice", "bob")
        }
        await gate.entered.wait()
        await settle()
        gate.open.set()
        results = {user: await asyncio.gather(*futures) for user, futures in calls.items()}
    assert sorted(s.identity or "" for s in servers.service.seen) == ["alice-token", "bob-token"]
    for user, tokens in results.items():
        assert all(t.access_token.startswith(f"{user}-token|") for t in tokens)


async def test_different_scope_or_action_do_not_share(servers: Servers, transport: str) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        variants = [{}, {"scope": "x"}, {"action": "y"}, {"scope": "x", "action": "y"}]
        calls = [
            asyncio.ensure_future(client.acquire_access_token(CONNECTOR, **kw))  # type: ignore[arg-type]
            for kw in variants
            for _ in range(3)
        ]
        await gate.entered.wait()
        await settle()
        gate.open.set()
        await asyncio.gather(*calls)
    assert len(servers.service.seen) == 4


async def test_each_waiter_stops_at_its_own_deadline(servers: Servers, transport: str) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        patient = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await gate.entered.wait()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.acquire_access_token(CONNECTOR, timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 1.5
        gate.open.set()
        token = await patient
    assert token.access_token.startswith("alice|")
    assert len(servers.service.seen) == 1
    assert servers.service.cancelled == 0


async def test_a_joining_waiters_cancellation_never_cancels_the_shared_rpc(
    servers: Servers, transport: str
) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        first = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await gate.entered.wait()
        others = [asyncio.ensure_future(client.acquire_access_token(CONNECTOR)) for _ in range(5)]
        await settle()
        others[0].cancel()  # a waiter that joined leaves
        with pytest.raises(asyncio.CancelledError):
            await others[0]
        await settle()
        gate.open.set()
        tokens = await asyncio.gather(first, *others[1:])
    assert len({t.access_token for t in tokens}) == 1
    assert len(servers.service.seen) == 1
    assert servers.service.cancelled == 0


async def test_when_the_starting_caller_leaves_the_others_share_a_new_call(
    servers: Servers, transport: str
) -> None:
    """The first caller runs the shared call in its own task (single-flight costs no task);
    if it is cancelled, the call goes with it, and the waiters share one new call instead of
    seeing the cancellation."""
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        first = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await gate.arrivals.get()
        others = [asyncio.ensure_future(client.acquire_access_token(CONNECTOR)) for _ in range(5)]
        await settle()
        first.cancel()  # the caller that started the call leaves
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(gate.arrivals.get(), 10)  # the new call, one for all five
        gate.open.set()
        tokens = await asyncio.gather(*others)
    assert len({t.access_token for t in tokens}) == 1
    assert len(servers.service.seen) == 2
    assert own_pending_tasks() == []


async def test_the_rpc_is_cancelled_when_every_waiter_left(
    servers: Servers, transport: str
) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        waiters = [asyncio.ensure_future(client.acquire_access_token(CONNECTOR)) for _ in range(3)]
        await gate.entered.wait()
        for waiter in waiters:
            waiter.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert own_pending_tasks() == []
        for _ in range(100):  # the server notices the cancellation
            if servers.service.cancelled:
                break
            await asyncio.sleep(0.01)
    assert servers.service.cancelled == 1
    assert len(servers.service.seen) == 1


async def test_cancelling_the_caller_cancels_the_rpc_and_leaves_no_task(
    servers: Servers, transport: str
) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        call = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await gate.entered.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert own_pending_tasks() == []  # right away, not eventually
        for _ in range(100):
            if servers.service.cancelled:
                break
            await asyncio.sleep(0.01)
    assert servers.service.cancelled == 1


async def test_a_shared_error_reaches_every_waiter(servers: Servers, transport: str) -> None:
    gate = Gate(servers)
    gate.fault = RpcFault(grpc.StatusCode.NOT_FOUND, "nothing stored")
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        calls = [asyncio.ensure_future(client.acquire_access_token(CONNECTOR)) for _ in range(5)]
        await gate.entered.wait()
        await settle()
        gate.open.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, AuthorizationRequired) for r in results)
    assert len(servers.service.seen) == 1


async def test_single_flight_can_be_disabled(servers: Servers, transport: str) -> None:
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", single_flight=False, **servers.client_kwargs(transport)
    ) as client:
        calls = [asyncio.ensure_future(client.acquire_access_token(CONNECTOR)) for _ in range(5)]
        await gate.entered.wait()
        await settle()
        gate.open.set()
        await asyncio.gather(*calls)
    assert len(servers.service.seen) == 5


async def test_single_flight_is_not_a_cache(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        first = await client.acquire_access_token(CONNECTOR)
        second = await client.acquire_access_token(CONNECTOR)
    assert first.access_token != second.access_token
    assert len(servers.service.seen) == 2


# ---- each waiter keeps its own deadline --------------------------------------------------------


@pytest.mark.parametrize("order", ["short-first", "long-first"])
async def test_a_waiter_never_gets_another_waiters_deadline(
    servers: Servers, transport: str, order: str
) -> None:
    """A 0.3 s caller and three 5-7 s callers share an acquire the server holds: only the short
    one fails. When it started the call, the three share one new call when it runs out."""
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:

        def acquire(timeout: float) -> asyncio.Future[AccessToken]:
            return asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=timeout))

        if order == "short-first":
            short = acquire(0.3)
            await gate.arrivals.get()
            longs = [acquire(timeout) for timeout in (5, 6, 7)]
        else:
            longs = [acquire(timeout) for timeout in (5, 6, 7)]
            await gate.arrivals.get()
            short = acquire(0.3)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await short
        assert time.monotonic() - started < 1.5
        gate.open.set()
        tokens = await asyncio.gather(*longs)
    assert len({t.access_token for t in tokens}) == 1
    assert len(servers.service.seen) == (2 if order == "short-first" else 1)


async def test_the_new_call_runs_with_the_later_waiters_deadline(
    servers: Servers, transport: str
) -> None:
    """The call the later waiter gets stops at its own deadline, not before."""
    gate = Gate(servers)  # never opens
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        short = asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=0.3))
        await gate.arrivals.get()
        long_started = time.monotonic()
        long = asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=1.0))
        with pytest.raises(DeadlineExceeded):
            await short
        with pytest.raises(DeadlineExceeded):
            await long
        assert 0.9 <= time.monotonic() - long_started < 2.5
    assert len(servers.service.seen) == 2


async def test_the_call_made_for_later_waiters_is_cancelled_when_they_leave(
    servers: Servers, transport: str
) -> None:
    gate = Gate(servers)  # never opens
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        short = asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=0.3))
        await gate.arrivals.get()
        long = asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=30))
        with pytest.raises(DeadlineExceeded):
            await short
        await asyncio.wait_for(gate.arrivals.get(), 10)  # the long waiter's own call
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        assert own_pending_tasks() == []  # the shared task stopped with its last waiter


async def test_callers_with_equal_timeouts_started_apart_share_one_rpc(
    servers: Servers, transport: str
) -> None:
    """Equal timeouts, deadlines a millisecond apart: still one RPC, counted at the server."""
    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        calls = []
        for _ in range(50):
            calls.append(asyncio.ensure_future(client.acquire_access_token(CONNECTOR, timeout=5)))
            await asyncio.sleep(0.001)  # spacing the callers, not waiting for a state
        await gate.entered.wait()
        gate.open.set()
        tokens = await asyncio.gather(*calls)
    assert len(servers.service.seen) == 1
    assert len({t.access_token for t in tokens}) == 1
