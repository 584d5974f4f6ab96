"""Recovery: the emulator process restarted (SIGTERM) or killed (SIGKILL) under load, and
killed by its crash point between a rotation and its commit.

The emulator sits behind two TCP proxies (gRPC and HTTP) whose addresses never change: on a
restart they refuse connections while the process is down (as the real port would) and
forward to the new process once it is up on the same data directory. Workers on both wires
keep acquiring for every user, with short (0.3 s) and long (8 s) deadlines.

What must hold:
- every call ends by its deadline (+0.7 s, a wide margin);
- failures are only UNAVAILABLE or DEADLINE_EXCEEDED, never anything else;
- every call that started after the old process was gone and whose deadline reaches
  ``RECOVERY`` seconds past the restart succeeds (the client retries refused connections;
  gRPC's own reconnect backoff, 1 s growing by 1.6x, is what RECOVERY leaves room for), and
  so does every call started after that;
- afterwards every user acquires without re-consent, every token belongs to its caller, and
  the provider saw no reuse: zero ``invalid_grant``, zero families revoked. A rotation lost
  to a kill shows up as a grace-window acceptance instead (docs/failure-modes.md 17, 19).

Calls in flight at the moment of a stop may fail with UNAVAILABLE: an acquire whose
connection broke after it was sent is not resent, because the server may have rotated a
refresh token for it (docs/failure-modes.md 7).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

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
    provider_stats,
    start_emulator,
    userinfo,
)
from tests._raw import TcpProxy
from tests._reliability import Figures, Outcome, tally, timed, unexpected

USERS = tuple(f"load{i}@example.com" for i in range(4))
BUDGETS = (0.3, 8.0, 8.0)
MARGIN = 0.7
RECOVERY = 3.0
SETTLE = 0.1
RETRY = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.25)
TRANSPORTS = ("grpc", "rest")


@dataclass
class Backend:
    """An emulator process on ``data`` behind a gRPC proxy and an HTTP proxy."""

    data: Path
    log_dir: Path
    flags: tuple[str, ...]
    grpc_proxy: TcpProxy = field(default_factory=lambda: TcpProxy(0))
    http_proxy: TcpProxy = field(default_factory=lambda: TcpProxy(0))
    process: EmulatorProcess | None = None
    restarts: list[tuple[float, float, float]] = field(default_factory=list)

    async def start(self) -> None:
        self.process = await start_emulator(self.data, *self.flags, log_dir=self.log_dir)
        self.grpc_proxy.target_port = int(self.process.grpc.rsplit(":", 1)[1])
        self.http_proxy.target_port = int(self.process.http.rsplit(":", 1)[1])
        await asyncio.gather(self.grpc_proxy.listen(), self.http_proxy.listen())

    async def restart(self, signum: int) -> None:
        """Stop the process with ``signum`` and start another on the same directory."""
        assert self.process is not None
        stopping = time.monotonic()
        await asyncio.gather(self.grpc_proxy.refuse(), self.http_proxy.refuse())
        code = await self.process.stop(signum)
        assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
        gone = time.monotonic()
        await self.start()
        self.restarts.append((stopping, gone, time.monotonic()))

    def client(self, transport: str) -> DataConnectorClient:
        return DataConnectorClient(
            transport=transport,  # type: ignore[arg-type]
            endpoint=self.grpc_proxy.address,
            rest_endpoint=self.http_proxy.url,
            retry=RETRY,
        )

    async def close(self) -> None:
        await asyncio.gather(self.grpc_proxy.aclose(), self.http_proxy.aclose())
        if self.process is not None:
            await self.process.stop(signal.SIGTERM)


@pytest.fixture
async def backend(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    running = Backend(tmp_path / "data", tmp_path, tuple(request.param))
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def connect_all(backend: Backend) -> dict[str, str]:
    assert backend.process is not None
    return {user: await connect_user(backend.process.http, user) for user in USERS}


async def load(
    backend: Backend, tokens: dict[str, str], stop: asyncio.Event
) -> list[Outcome[AccessToken]]:
    """One worker per (wire, user), acquiring back to back until ``stop``."""
    outcomes: list[Outcome[AccessToken]] = []

    async def worker(client: DataConnectorClient, tag: str, token: str) -> None:
        turn = 0
        while not stop.is_set():
            budget = BUDGETS[turn % len(BUDGETS)]
            turn += 1
            call = client.acquire_access_token(CONNECTOR, credentials=token, timeout=budget)
            outcomes.append(await timed(call, budget=budget, tag=tag))
            await asyncio.sleep(0.01)

    clients = {transport: backend.client(transport) for transport in TRANSPORTS}
    try:
        await asyncio.gather(
            *(
                worker(clients[transport], f"{transport}:{user}", tokens[user])
                for transport in TRANSPORTS
                for user in USERS
            )
        )
    finally:
        for client in clients.values():
            await client.aclose()
    return outcomes


def is_owed(backend: Backend, outcome: Outcome[AccessToken]) -> bool:
    """Whether a call had to succeed: it started once the process was gone (SETTLE later: a
    call made just after the death may still be written to a connection that the death broke
    before the event loop saw it), its deadline reaches RECOVERY past the restart and no
    later stop cut it; or it started RECOVERY after the last restart."""
    assert outcome.budget is not None
    end = outcome.started + outcome.budget
    for index, (_, gone, back) in enumerate(backend.restarts):
        later = backend.restarts[index + 1 :]
        if (
            outcome.started >= gone + SETTLE
            and end >= back + RECOVERY
            and not any(
                stopping < end and outcome.started < dead + SETTLE for stopping, dead, _ in later
            )
        ):
            return True
    return outcome.started >= backend.restarts[-1][2] + RECOVERY


def cancelled_by_grpc_shutdown(backend: Backend, outcome: Outcome[AccessToken]) -> bool:
    """A gRPC call that the old process's grpc server cancelled as it shut down.

    grpc.aio's server stops taking calls when ``stop(grace)`` starts, and grpc core then
    cancels the calls that had arrived but were not taken yet: the client gets status
    CANCELLED with the message "CANCELLED" (a plain grpc.aio server does it too, with or
    without a proxy). Only such calls, only on gRPC and only during a graceful stop, are
    let through; see RELIABILITY.md, "Known gaps".
    """
    error = outcome.error
    return (
        isinstance(error, Cancelled)
        and error.transport == "grpc"
        and error.message == "CANCELLED"
        and any(stopping <= outcome.ended <= gone for stopping, gone, _ in backend.restarts)
    )


def check_outcomes(
    backend: Backend, outcomes: list[Outcome[AccessToken]], *, graceful: bool = False
) -> dict[str, int]:
    """The rules of the module docstring; returns how many calls had to succeed."""
    shutdown_cancelled = [
        o for o in outcomes if graceful and cancelled_by_grpc_shutdown(backend, o)
    ]
    others = [o for o in outcomes if o not in shutdown_cancelled]
    assert not unexpected(others, (Unavailable, DeadlineExceeded)), tally(outcomes)
    late = [o for o in outcomes if o.budget is not None and o.elapsed > o.budget + MARGIN]
    assert not late, [(o.tag, o.kind(), round(o.elapsed, 2)) for o in late]
    owed = [o for o in outcomes if is_owed(backend, o)]
    first = backend.restarts[0][0]
    failed = [
        (o.tag, o.kind(), str(o.error), round(o.started - first, 2), round(o.elapsed, 3))
        for o in owed
        if not o.ok
    ]
    assert not failed, failed
    in_flight = [
        o for o in outcomes for stopping, _, _ in backend.restarts if o.started < stopping < o.ended
    ]
    return {
        "owed": len(owed),
        "in_flight_at_stop": len(in_flight),
        "cancelled_by_grpc_shutdown": len(shutdown_cancelled),
    }


async def check_users(backend: Backend, tokens: dict[str, str], before: dict[str, int]) -> None:
    """Every user acquires (no re-consent); tokens are theirs; nothing reused or revoked."""
    assert backend.process is not None
    for transport in TRANSPORTS:
        async with backend.client(transport) as client:
            for user, token in tokens.items():
                answer = await client.acquire_access_token(CONNECTOR, credentials=token, timeout=10)
                status, info = await userinfo(backend.process.http, answer.access_token)
                assert (status, info.get("sub")) == (200, user)
    after = await provider_stats(backend.process.http)
    assert after["invalid_grant"] == 0
    assert after["families_revoked"] == 0
    assert after["code_exchanges"] == before["code_exchanges"]  # nobody consented again


# ---- 3: restart under load -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", [("--no-expires-in", "--fault-latency-ms", "100")], indirect=True
)
async def test_restart_under_load(backend: Backend) -> None:
    """Every acquire rotates at a provider that takes 100 ms: calls are always in flight."""
    tokens = await connect_all(backend)
    before = await provider_stats(backend.http_proxy.url)
    stop = asyncio.Event()
    running = asyncio.ensure_future(load(backend, tokens, stop))
    await asyncio.sleep(1.0)
    await backend.restart(signal.SIGTERM)
    await asyncio.sleep(RECOVERY + 1.0)
    stop.set()
    outcomes = await running
    counts = check_outcomes(backend, outcomes, graceful=True)
    assert counts["owed"] >= 2 * len(USERS)
    assert counts["in_flight_at_stop"] >= 1
    await check_users(backend, tokens, before)
    stopping, _, back = backend.restarts[0]
    Figures(
        "restart under load (SIGTERM)",
        {
            "calls": len(outcomes),
            **tally(outcomes),
            **counts,
            "down_s": round(back - stopping, 2),
        },
    ).show()


# ---- 4: crashes --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_crash_point_between_rotation_and_commit(tmp_path: Path, transport: str) -> None:
    """The process SIGKILLs itself after the provider rotated a refresh token and before the
    store committed it; restarted within the grace window on the same directory, every user
    acquires without re-consent and no family is revoked."""
    data = tmp_path / "data"
    flags = ("--access-token-lifetime", "1")
    crashing = await start_emulator(
        data,
        *flags,
        env={"AGENTSPACE_EMULATOR_CRASH_AT": "after-upstream-refresh"},
        log_dir=tmp_path,
    )
    tokens = {user: await connect_user(crashing.http, user) for user in USERS}
    before = await provider_stats(crashing.http)
    await asyncio.sleep(1.1)  # every access token from the consents expires
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        endpoint=crashing.grpc,
        rest_endpoint=crashing.http,
        retry=RETRY,
    ) as client:
        cut = await asyncio.gather(
            *(
                timed(
                    client.acquire_access_token(CONNECTOR, credentials=token, timeout=2.0),
                    budget=2.0,
                    tag=user,
                )
                for user, token in tokens.items()
            )
        )
    assert await crashing.wait() == -signal.SIGKILL
    assert "crash point after-upstream-refresh" in crashing.stderr()
    assert not unexpected(cut, (Unavailable, DeadlineExceeded)), tally(cut)
    assert not any(o.ok for o in cut)
    restarted = await start_emulator(data, *flags, log_dir=tmp_path)
    try:
        async with DataConnectorClient(
            transport=transport,  # type: ignore[arg-type]
            endpoint=restarted.grpc,
            rest_endpoint=restarted.http,
        ) as client:
            for user, token in tokens.items():
                answer = await client.acquire_access_token(CONNECTOR, credentials=token)
                status, info = await userinfo(restarted.http, answer.access_token)
                assert (status, info.get("sub")) == (200, user)
        after = await provider_stats(restarted.http)
    finally:
        assert await restarted.stop() == 0
    assert after["grace_accepts"] >= 1  # the lost rotation, recovered by the grace window
    assert after["invalid_grant"] == 0
    assert after["families_revoked"] == 0
    assert after["code_exchanges"] == before["code_exchanges"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [("--no-expires-in",)], indirect=True)
async def test_kill_9_at_random_moments_under_load(backend: Backend) -> None:
    """Every acquire rotates (nothing cacheable), so kills land between rotations and
    commits; three kills at seeded random moments, each followed by a restart."""
    moments = random.Random(20261129)
    tokens = await connect_all(backend)
    before = await provider_stats(backend.http_proxy.url)
    stop = asyncio.Event()
    running = asyncio.ensure_future(load(backend, tokens, stop))
    kills = []
    for _ in range(3):
        kills.append(round(moments.uniform(0.2, 0.9), 3))
        await asyncio.sleep(kills[-1])
        await backend.restart(signal.SIGKILL)
    await asyncio.sleep(RECOVERY + 1.0)
    stop.set()
    outcomes = await running
    counts = check_outcomes(backend, outcomes)
    await check_users(backend, tokens, before)
    stats = await provider_stats(backend.http_proxy.url)
    Figures(
        "kill -9 under load",
        {
            "kills_after_s": kills,
            "calls": len(outcomes),
            **tally(outcomes),
            **counts,
            "rotations": stats["refreshes"],
            "grace_accepts": stats["grace_accepts"],
        },
    ).show()
