"""Rotation races and isolation, through the client, against the built-in provider's strict
single-use rotating refresh tokens (docs/failure-modes.md 15, 16, 18, 19, 20).

- 1000 concurrent acquires for one user with an expired access token, half over gRPC to one
  emulator process and half over REST to another on the same data directory, client-side
  single-flight off: one upstream refresh, zero ``invalid_grant``, one token, the user's.
  (tests/test_emulator_process.py::test_pitfall_15_two_processes_1000_acquires_one_refresh
  proves the same with raw gRPC stubs on both processes.)
- Replays: the store is rolled back to a copy taken one rotation earlier (the emulator then
  presents the immediately previous refresh token): harmless inside the grace window. Rolled
  back two rotations (an older token): the provider revokes the family, and the emulator
  reports that the user must re-authorize (FAILED_PRECONDITION, REFRESH_TOKEN_REVOKED) on
  both wires, until the user consents again.
- Users A and B interleaved under concurrent rotations (nothing cacheable: every acquire
  rotates), over both wires and two processes, one client per wire shared by both users:
  every token belongs to its caller, as the provider's /provider/userinfo says.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from agentspace_grpc import DataConnectorClient, FailedPrecondition
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import (
    CONNECTOR,
    connect_user,
    emulator_stats,
    mint_identity,
    provider_stats,
    start_emulator,
    userinfo,
)
from tests._reliability import Figures

ALICE = "alice@example.com"
BOB = "bob@example.com"


async def owner(http: str, access_token: str) -> str | None:
    status, info = await userinfo(http, access_token)
    return info.get("sub") if status == 200 else None


async def test_1000_acquires_across_two_processes_and_both_wires_refresh_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # Consent where access tokens live 1 s, let that token expire, then serve with the default
    # lifetime: the one refresh under test yields a token that outlives the run, however slow
    # the machine (with 1-s tokens throughout, a slow run legitimately refreshes twice).
    consenting = await start_emulator(data, "--access-token-lifetime", "1", log_dir=tmp_path)
    try:
        token = await connect_user(consenting.http, ALICE)
    finally:
        assert await consenting.stop() == 0
    await asyncio.sleep(1.1)  # the access token from the consent expires
    first, second = await asyncio.gather(
        start_emulator(data, log_dir=tmp_path),
        start_emulator(data, log_dir=tmp_path),
    )
    try:
        before = await provider_stats(first.http)
        async with (
            DataConnectorClient(
                transport="grpc", endpoint=first.grpc, credentials=token, single_flight=False
            ) as over_grpc,
            DataConnectorClient(
                transport="rest", rest_endpoint=second.http, credentials=token, single_flight=False
            ) as over_rest,
        ):
            answers = await asyncio.gather(
                *(
                    (over_grpc if i % 2 else over_rest).acquire_access_token(CONNECTOR, timeout=30)
                    for i in range(1000)
                )
            )
        after = await provider_stats(second.http)
        tokens = {answer.access_token for answer in answers}
        assert len(tokens) == 1
        assert await owner(first.http, tokens.pop()) == ALICE
        assert after["refresh_requests"] - before["refresh_requests"] == 1
        assert after["refreshes"] - before["refreshes"] == 1
        assert after["invalid_grant"] == 0
        assert after["families_revoked"] == 0
        counters = await emulator_stats(first.http)
        Figures(
            "1000 acquires, two processes, both wires",
            {
                "upstream_refreshes": after["refreshes"] - before["refreshes"],
                "invalid_grant": after["invalid_grant"],
                "emulator_counters": counters,
            },
        ).show()
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0


def snapshot_store(data: Path, into: Path) -> None:
    """Copy the emulator's store (the emulator is stopped, so the files are checkpointed)."""
    into.mkdir()
    for path in data.glob("emulator.sqlite3*"):
        shutil.copy2(path, into / path.name)


def restore_store(copy: Path, data: Path) -> None:
    """Roll the store back to ``copy`` (a restored backup): the provider's state stays."""
    for path in data.glob("emulator.sqlite3*"):
        path.unlink()
    for path in copy.iterdir():
        shutil.copy2(path, data / path.name)


async def rotate(data: Path, config: dict[str, object]) -> str:
    """One acquire (nothing is cacheable, so it rotates the refresh token); the token."""
    async with Emulator(data_dir=data, config=config) as emu:
        async with emu.client(credentials=emu.user_token(ALICE)) as client:
            token = await client.acquire_access_token(CONNECTOR)
        assert await owner(emu.http_url, token.access_token) == ALICE
        return token.access_token


async def test_replays_the_previous_token_is_harmless_an_older_one_revokes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config: dict[str, object] = {"provider": {"send_expires_in": False, "grace_seconds": 60}}
    async with Emulator(data_dir=data, config=config) as emu:
        redirect = await emu.consent(ALICE)
        async with emu.client(credentials=emu.user_token(ALICE)) as client:
            await client.store_refresh_token(CONNECTOR, redirect)  # the store holds R1
    snapshot_store(data, tmp_path / "holds-r1")
    await rotate(data, config)  # R1 -> R2
    snapshot_store(data, tmp_path / "holds-r2")
    await rotate(data, config)  # R2 -> R3
    restore_store(tmp_path / "holds-r2", data)
    await rotate(data, config)  # R2 again: the immediately previous token, inside the window
    async with Emulator(data_dir=data, config=config) as emu:
        stats = await emu.provider_stats()
        assert stats["grace_accepts"] == 1
        assert stats["families_revoked"] == 0
        assert stats["invalid_grant"] == 0
    restore_store(tmp_path / "holds-r1", data)  # R1: two rotations old
    async with Emulator(data_dir=data, config=config) as emu:
        for transport in ("grpc", "rest"):
            async with emu.client(transport=transport, credentials=emu.user_token(ALICE)) as c:
                try:
                    await c.acquire_access_token(CONNECTOR)
                except FailedPrecondition as exc:
                    error = exc
                else:
                    raise AssertionError("an older refresh token was accepted")
            assert error.reason == "REFRESH_TOKEN_REVOKED"
            assert error.metadata["user"] == ALICE
            assert "authorize again" in error.message
        stats = await emu.provider_stats()
        assert stats["families_revoked"] == 1
        assert stats["invalid_grant"] == 1  # the reuse; the second wire read the revoked grant
        # Consenting again repairs it.
        redirect = await emu.consent(ALICE)
        async with emu.client(credentials=emu.user_token(ALICE)) as client:
            await client.store_refresh_token(CONNECTOR, redirect)
            fresh = await client.acquire_access_token(CONNECTOR)
        assert await owner(emu.http_url, fresh.access_token) == ALICE


async def test_users_interleaved_under_concurrent_rotations_get_their_own_tokens(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first, second = await asyncio.gather(
        start_emulator(data, "--no-expires-in", log_dir=tmp_path),
        start_emulator(data, "--no-expires-in", log_dir=tmp_path),
    )
    try:
        tokens = {user: await connect_user(first.http, user) for user in (ALICE, BOB)}
        # Also as google-auth credentials (refreshed against the emulator's token endpoint).
        google_auth = {
            user: (await mint_identity(first.http, user)).credentials() for user in (ALICE, BOB)
        }
        async with (
            DataConnectorClient(transport="grpc", endpoint=first.grpc) as over_grpc,
            DataConnectorClient(transport="rest", rest_endpoint=second.http) as over_rest,
        ):

            async def one(index: int) -> tuple[str, str]:
                user = (ALICE, BOB)[index % 2]
                client = (over_grpc, over_rest)[(index // 2) % 2]
                credentials = (tokens, google_auth)[(index // 4) % 2][user]
                answer = await client.acquire_access_token(
                    CONNECTOR, credentials=credentials, timeout=30
                )
                return user, answer.access_token

            results = []
            for wave in range(25):  # waves of concurrent calls: rotations between and during
                results += await asyncio.gather(*(one(wave + i) for i in range(8)))
        owners = await asyncio.gather(*(owner(first.http, token) for _, token in results))
        wrong = [
            (user, found) for (user, _), found in zip(results, owners, strict=True) if user != found
        ]
        assert not wrong, wrong
        stats = await provider_stats(first.http)
        assert stats["refreshes"] >= 2 * 25  # each wave rotated both users' tokens
        assert stats["invalid_grant"] == 0
        assert stats["families_revoked"] == 0
        Figures(
            "isolation",
            {"calls": len(results), "distinct_tokens": len({t for _, t in results}), **stats},
        ).show()
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0
