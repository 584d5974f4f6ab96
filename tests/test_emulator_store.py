"""The emulator's store and provider: encryption at rest, restarts, one refresh at a time,
races, grace windows (docs/failure-modes.md 16, 18, 19, 21)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import grpc
import pytest

from agentspace_grpc import _proto
from agentspace_grpc.emulator import Emulator
from agentspace_grpc.emulator._crypto import DecryptionError, Keyring
from agentspace_grpc.emulator._db import Database
from tests._clock import ManualClock
from tests._emulator_helpers import (
    CONNECTOR,
    CanaryProvider,
    bearer,
    channel_to,
    grpc_acquire,
    grpc_fail,
    provider_stats,
    until_counted,
    userinfo,
)

CANARY = "projects/canary/locations/global/collections/c/dataConnector"
REDIRECT = "https://vertexaisearch.cloud.google.com/oauth-redirect"
ALICE = "alice@example.com"
BOB = "bob@example.com"


async def store(emu: Emulator, email: str, connector: str = CONNECTOR, **kw: Any) -> None:
    redirect = await emu.consent(email, connector=connector, **kw)
    async with channel_to(emu.grpc_target) as stub:
        await stub.AcquireAndStoreRefreshToken(
            _proto.AcquireAndStoreRefreshTokenRequest(name=connector, full_redirect_uri=redirect),
            metadata=bearer(emu.user_token(email)),
        )


async def acquire(emu: Emulator, email: str, connector: str = CONNECTOR, scope: str = "") -> str:
    async with channel_to(emu.grpc_target) as stub:
        answer = await grpc_acquire(stub, emu.user_token(email), name=connector, scope=scope)
    return str(answer.access_token)


async def stats(emu: Emulator) -> dict[str, int]:
    return await emu.stats()


# ---- encryption at rest ----------------------------------------------------------------------


def test_two_encryptions_of_the_same_token_differ_and_are_bound_to_their_row() -> None:
    keys = Keyring([secrets.token_bytes(32)])
    one = keys.encrypt("CANARY-RT-1", purpose="refresh_token", connector="c", user="a")
    two = keys.encrypt("CANARY-RT-1", purpose="refresh_token", connector="c", user="a")
    assert one != two
    assert one[5:17] != two[5:17]  # the nonces differ
    assert b"CANARY" not in one
    assert keys.decrypt(one, purpose="refresh_token", connector="c", user="a") == "CANARY-RT-1"
    for other in ({"connector": "c", "user": "b"}, {"connector": "d", "user": "a"}):
        with pytest.raises(DecryptionError) as caught:
            keys.decrypt(one, purpose="refresh_token", **other)
        assert "CANARY" not in str(caught.value)
    with pytest.raises(DecryptionError):
        keys.decrypt(one, purpose="access_token", connector="c", user="a")


def _files_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


async def test_pitfall_21_the_raw_database_files_hold_no_token(tmp_path: Path) -> None:
    canary = CanaryProvider(expires_in=0)  # nothing cacheable: every acquire rotates
    async with canary.serve():
        config = {"connectors": [canary.connector_config(CANARY)]}
        async with Emulator(data_dir=tmp_path, config=config) as emu:
            seen = []
            for user in (ALICE, BOB):
                await store(emu, user, CANARY)
                for _ in range(3):
                    seen.append(await acquire(emu, user, CANARY))
                await store(emu, user)  # and the built-in provider's default connector
                seen.append(await acquire(emu, user))
                seen.append(await acquire(emu, user, scope="read"))
            # while running (WAL files included) ...
            running = _files_bytes(tmp_path)
        closed = _files_bytes(tmp_path)  # ... and after the checkpoint at close
    assert len(canary.issued_refresh) == 8
    secrets_written = [*canary.issued_refresh, *canary.issued_access, *seen, canary.client_secret]
    for blob in (running, closed):
        for value in secrets_written:
            assert value.encode() not in blob
        assert b"CANARY-" not in blob


async def test_pitfall_21_a_key_rotation_keeps_old_rows_readable(tmp_path: Path) -> None:
    old, new = base64.b64encode(secrets.token_bytes(32)), base64.b64encode(secrets.token_bytes(32))
    key_file = tmp_path / "keys"
    key_file.touch(mode=0o600)  # a key file must be private
    key_file.write_bytes(old + b"\n")
    data = tmp_path / "data"
    async with Emulator(data_dir=data, key_file=key_file) as emu:
        await store(emu, ALICE)
        first = await acquire(emu, ALICE)
    key_file.write_bytes(new + b"\n" + old + b"\n")  # new key first, old one kept to decrypt
    async with Emulator(data_dir=data, key_file=key_file) as emu:
        assert await acquire(emu, ALICE) == first  # the cached token, decrypted with the old key
        await acquire(emu, ALICE, scope="read")  # a refresh re-encrypts with the new key
    key_file.write_bytes(new + b"\n")
    async with Emulator(data_dir=data, key_file=key_file) as emu:
        rotated = await acquire(emu, ALICE, scope="read")
        assert (await userinfo(emu.http_url, rotated))[1]["sub"] == ALICE


# ---- restart ---------------------------------------------------------------------------------


async def test_a_restart_keeps_every_stored_token(tmp_path: Path) -> None:
    canary = CanaryProvider()
    async with canary.serve():
        config = {"connectors": [canary.connector_config(CANARY)]}
        before: dict[tuple[str, str], str] = {}
        async with Emulator(data_dir=tmp_path, config=config) as emu:
            for user in (ALICE, BOB):
                for connector in (CONNECTOR, CANARY):
                    await store(emu, user, connector)
                    before[user, connector] = await acquire(emu, user, connector)
        async with Emulator(data_dir=tmp_path, config=config) as emu:
            async with channel_to(emu.grpc_target) as stub:
                for user, connector in before:
                    checked = await stub.CheckRefreshToken(
                        _proto.CheckRefreshTokenRequest(name=connector),
                        metadata=bearer(emu.user_token(user)),
                    )
                    assert checked.refresh_token_info.name == connector
            for (user, connector), token in before.items():
                assert await acquire(emu, user, connector) == token  # the cached access token
            for user in (ALICE, BOB):  # the refresh tokens survived too: refresh with them
                fresh = await acquire(emu, user, scope="read")
                assert (await userinfo(emu.http_url, fresh))[1]["sub"] == user
            assert len(canary.issued_refresh) == 2
            canary_fresh = await acquire(emu, ALICE, CANARY, scope="read")
            assert canary_fresh in canary.issued_access


# ---- one refresh at a time -----------------------------------------------------------------------


async def test_1000_concurrent_acquires_with_an_expired_token_refresh_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    config = {"provider": {"access_token_lifetime": 60}}
    async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
        await store(emu, ALICE)
    clock.advance(60)  # the cached access token has expired
    async with Emulator(data_dir=tmp_path, clock=clock) as emu:
        token = emu.user_token(ALICE)
        async with channel_to(emu.grpc_target) as stub:
            answers = await asyncio.gather(*(grpc_acquire(stub, token) for _ in range(1000)))
        assert len({a.access_token for a in answers}) == 1
        counts = await emu.provider_stats()
        assert counts["refreshes"] == 1
        assert counts["refresh_requests"] == 1
        assert counts["invalid_grant"] == 0
        assert (await userinfo(emu.http_url, answers[0].access_token))[1]["sub"] == ALICE


async def test_pitfall_16_waiters_reread_the_store_after_the_lease(tmp_path: Path) -> None:
    """Two emulators on one directory (two lease holders, no shared memory); the provider
    rejects any reuse of a rotated-out refresh token, so only re-reading passes."""
    canary, clock = CanaryProvider(), ManualClock()
    async with canary.serve():
        config = {"connectors": [canary.connector_config(CANARY)]}
        async with (
            Emulator(data_dir=tmp_path, config=config, clock=clock) as first,
            Emulator(data_dir=tmp_path, config=config, clock=clock) as second,
        ):
            await store(first, ALICE, CANARY)
            clock.advance(3600)  # the cached access token expired: the next acquire refreshes
            canary.answering.clear()
            one = asyncio.create_task(acquire(first, ALICE, CANARY))
            await canary.wait_for_refreshes(1)  # `first` holds the lease, waiting on the provider
            two = asyncio.create_task(acquire(second, ALICE, CANARY))
            await until_counted(second.stats, "lease_waits", 1)  # `second` waits for the lease
            canary.answering.set()
            assert await one == await two
            assert canary.refreshes == 1
            # Both keep working afterwards: nobody presented the rotated-out token.
            clock.advance(3600)
            for emu in (second, first):
                assert await acquire(emu, ALICE, CANARY) in canary.issued_access
            assert canary.refreshes == 2
            assert canary.invalid_grants == 0


async def test_pitfall_18_invalid_grant_after_a_lost_race_serves_the_newer_token(
    tmp_path: Path,
) -> None:
    """The provider rejects the token a refresh used while a newer grant was committed
    meanwhile: the emulator serves the newer one and revokes nothing."""
    canary, clock = CanaryProvider(), ManualClock()
    async with canary.serve():
        config = {"connectors": [canary.connector_config(CANARY)]}
        async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
            await store(emu, ALICE, CANARY)
            clock.advance(3600)  # the cached access token expired: the next acquire refreshes
            canary.answering.clear()
            canary.reject_refreshes = True
            racing = asyncio.create_task(acquire(emu, ALICE, CANARY))
            await canary.wait_for_refreshes(1)  # the refresh is at the provider
            await store(emu, ALICE, CANARY)  # a newer grant lands first
            newer = canary.issued_access[-1]
            canary.answering.set()
            assert await racing == newer
            assert canary.invalid_grants == 1
            own = await emu.stats()
            assert own["invalid_grant_races"] == 1
            assert "grants_revoked" not in own
            async with channel_to(emu.grpc_target) as stub:
                checked = await stub.CheckRefreshToken(
                    _proto.CheckRefreshTokenRequest(name=CANARY),
                    metadata=bearer(emu.user_token(ALICE)),
                )
            assert list(checked.refresh_token_info.scopes) == ["read"]


async def test_a_refresh_that_loses_to_a_new_consent_serves_the_new_grant(
    tmp_path: Path,
) -> None:
    """The refresh succeeds at the provider, but a newer grant was stored meanwhile: its
    commit is refused, and the caller gets the newer grant's token, not the old one's."""
    canary, clock = CanaryProvider(), ManualClock()
    async with canary.serve():
        config = {"connectors": [canary.connector_config(CANARY)]}
        async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
            await store(emu, ALICE, CANARY)
            clock.advance(3600)  # the cached access token expired: the next acquire refreshes
            canary.answering.clear()
            racing = asyncio.create_task(acquire(emu, ALICE, CANARY))
            await canary.wait_for_refreshes(1)  # the refresh is at the provider
            await store(emu, ALICE, CANARY)  # a newer grant lands first
            newer = canary.issued_access[-1]
            canary.answering.set()
            assert await racing == newer
            assert await acquire(emu, ALICE, CANARY) == newer


async def test_invalid_grant_without_a_race_is_a_revocation(tmp_path: Path) -> None:
    faults = {"invalid_grant_rate": 1.0}
    async with Emulator(data_dir=tmp_path, config={"provider": {"faults": faults}}) as emu:
        await store(emu, ALICE)
        async with channel_to(emu.grpc_target) as stub:
            token = emu.user_token(ALICE)
            failure = await grpc_fail(grpc_acquire(stub, token, scope="read"))
            assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
            info = failure.error_info()
            assert info is not None
            assert info.reason == "REFRESH_TOKEN_REVOKED"
            failure = await grpc_fail(
                stub.CheckRefreshToken(
                    _proto.CheckRefreshTokenRequest(name=CONNECTOR), metadata=bearer(token)
                )
            )
            assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        await store(emu, ALICE)  # consenting again repairs it
        assert await acquire(emu, ALICE)


@pytest.mark.parametrize("kind", ["rate_429", "rate_5xx"])
async def test_upstream_failures_are_unavailable_with_retry_info(tmp_path: Path, kind: str) -> None:
    faults = {kind: 1.0, "retry_after": 7}
    async with Emulator(data_dir=tmp_path, config={"provider": {"faults": faults}}) as emu:
        await store(emu, ALICE)
        async with channel_to(emu.grpc_target) as stub:
            for _ in range(2):  # the lease is released after a failure: no hang the second time
                failure = await grpc_fail(grpc_acquire(stub, emu.user_token(ALICE), scope="read"))
                assert failure.code == grpc.StatusCode.UNAVAILABLE
                info = failure.error_info()
                assert info is not None
                assert info.reason == "UPSTREAM_UNAVAILABLE"
                retry = failure.retry_info()
                assert retry is not None
                assert retry.retry_delay.seconds == 7
            # The cached token of the default scope is still served.
            assert await grpc_acquire(stub, emu.user_token(ALICE))


# ---- the provider's grace window -------------------------------------------------------------


GRACE_CLIENT = {
    "name": "projects/grace/locations/global/collections/c/dataConnector",
    "client_id": "grace-client",
    "client_secret": "grace-secret",
    "default_scopes": ["read"],
    "pkce": False,  # the test redeems the code itself, without the emulator's verifier
}


async def _token(session: aiohttp.ClientSession, http: str, **form: str) -> tuple[int, Any]:
    form |= {"client_id": "grace-client", "client_secret": "grace-secret"}
    async with session.post(f"{http}/provider/token", data=form) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("grace", [60, 0])
async def test_pitfall_19_previous_token_within_grace_is_harmless_older_revokes(
    tmp_path: Path, grace: int
) -> None:
    config = {"connectors": [GRACE_CLIENT], "provider": {"grace_seconds": grace}}
    async with Emulator(data_dir=tmp_path, config=config) as emu, aiohttp.ClientSession() as s:
        http = emu.http_url
        redirect = await emu.consent(ALICE, GRACE_CLIENT["name"])
        code = parse_qs(urlsplit(redirect).query)["code"][0]
        status, body = await _token(
            s, http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT
        )
        assert status == 200, body
        r1 = body["refresh_token"]
        status, body = await _token(s, http, grant_type="refresh_token", refresh_token=r1)
        r2 = body["refresh_token"]
        status, body = await _token(s, http, grant_type="refresh_token", refresh_token=r2)
        r3, a3 = body["refresh_token"], body["access_token"]
        status, body = await _token(s, http, grant_type="refresh_token", refresh_token=r2)
        if grace:
            assert status == 200, body  # the immediately previous token, inside the window
            assert (await userinfo(http, a3))[0] == 200
            status, body = await _token(s, http, grant_type="refresh_token", refresh_token=r1)
        assert status == 400
        assert body["error"] == "invalid_grant"
        # Reuse revoked the whole family: the newest tokens are dead too.
        status, body = await _token(s, http, grant_type="refresh_token", refresh_token=r3)
        assert body["error"] == "invalid_grant"
        assert (await userinfo(http, a3))[0] == 401
        counts = await provider_stats(http)
        assert counts["families_revoked"] == 1
        assert counts["grace_accepts"] == (1 if grace else 0)


def test_the_provider_answer_never_shows_in_a_repr() -> None:
    """What the upstream exchange returns may be logged by mistake; its repr hides the tokens,
    the extra fields of the answer included (they hold the whole document)."""
    from agentspace_grpc.emulator._upstream import TokenAnswer

    document = {
        "access_token": "AT-CANARY",
        "refresh_token": "RT-CANARY",
        "id_token": "ID-CANARY",
        "account_id": "acct-1",
    }
    answer = TokenAnswer(
        access_token="AT-CANARY",
        refresh_token="RT-CANARY",
        expires_in=60.0,
        scopes=("read",),
        extra=document,
    )
    assert "CANARY" not in repr(answer)
    assert "CANARY" not in str(answer)


def test_processes_opening_a_fresh_data_directory_together_all_succeed(tmp_path: Path) -> None:
    """Switching a new database to WAL fails at once, not after the busy timeout, while
    another connection holds the file; emulators started together on one new directory must
    wait their turn instead (about one round in ten failed before)."""
    migrations = [["CREATE TABLE t (x INTEGER)"]]
    openers = 8
    for round_ in range(60):
        path = tmp_path / f"round-{round_}.db"
        barrier = threading.Barrier(openers)
        errors: list[BaseException] = []

        def open_and_close(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            database = Database(path, migrations, "test")
            barrier.wait()
            try:
                asyncio.run(_open_and_close(database))
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(openers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"round {round_}: {errors[:2]}"


async def _open_and_close(database: Database) -> None:
    await database.open()
    await database.close()
