"""The client's authorization methods end to end against the real emulator, over gRPC, REST and
auto: the consent URI a browser follows, store, acquire, the service's cache, users kept apart,
a revoked grant, and the errors that are not a consent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    InvalidArgument,
    NotFound,
    UsageError,
)
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import follow_like_a_browser, provider_stats, userinfo

ALICE = "alice@example.com"
BOB = "bob@example.com"
UNKNOWN = "projects/demo/locations/global/authorizations/nope"


@pytest.fixture(params=["grpc", "rest", "auto"])
def transport(request: pytest.FixtureRequest) -> str:
    """Both wires and auto (which picks gRPC against the emulator)."""
    return str(request.param)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as running:
        yield running


def wire(transport: str) -> str:
    return "grpc" if transport == "auto" else transport


async def consent_needed(client: DataConnectorClient, emu: Emulator, user: str) -> str:
    """Acquires as ``user``, which must answer with a consent; its authorization URI."""
    with pytest.raises(AuthorizationRequired) as caught:
        await client.acquire_user_authorization(
            emu.authorization, credentials=emu.user_credentials(user)
        )
    uri = caught.value.authorization_uri
    assert uri is not None
    assert uri.startswith(f"{emu.http_url}/emulator/v1/consent?state=")
    assert caught.value.resource == emu.authorization
    return uri


async def test_consent_store_acquire_and_a_cache_hit(emu: Emulator, transport: str) -> None:
    alice = emu.user_credentials(ALICE)
    async with emu.client(transport=transport) as client:
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_user_authorization(emu.authorization, credentials=alice)
        required = caught.value
        assert (required.resource, required.transport) == (emu.authorization, wire(transport))
        assert required.http_status == (200 if transport == "rest" else None)
        assert required.authorization_uri is not None

        # The URI opens in a browser with no Google credentials, and ends at the redirect URI.
        redirect = (await follow_like_a_browser(required.authorization_uri))[-1]
        stored = await client.store_user_authorization(
            emu.authorization, redirect, credentials=alice
        )
        assert stored is None
        token = await client.acquire_user_authorization(emu.authorization, credentials=alice)
        assert (token.resource, token.transport) == (emu.authorization, wire(transport))
        assert token.scopes == ("read", "write")
        status, info = await userinfo(emu.http_url, token.access_token)
        assert (status, info["sub"]) == (200, ALICE)

        before = (await provider_stats(emu.http_url), await emu.stats())
        again = await client.acquire_user_authorization(emu.authorization, credentials=alice)
        after = (await provider_stats(emu.http_url), await emu.stats())
        assert again.access_token == token.access_token
        assert after[0]["refresh_requests"] == before[0]["refresh_requests"]
        assert after[1].get("upstream_refreshes_committed", 0) == before[1].get(
            "upstream_refreshes_committed", 0
        )


async def test_another_user_never_gets_it(emu: Emulator, transport: str) -> None:
    async with emu.client(transport=transport) as client:
        alices_uri = await consent_needed(client, emu, ALICE)
        redirect = (await follow_like_a_browser(alices_uri))[-1]
        bob = emu.user_credentials(BOB)
        # Bob cannot file Alice's consent under his name, and has none of his own.
        with pytest.raises(InvalidArgument, match=f"started by {ALICE}, but the caller is {BOB}"):
            await client.store_user_authorization(emu.authorization, redirect, credentials=bob)
        bobs_uri = await consent_needed(client, emu, BOB)
        assert bobs_uri != alices_uri
        alice = emu.user_credentials(ALICE)
        await client.store_user_authorization(emu.authorization, redirect, credentials=alice)
        alices = await client.acquire_user_authorization(emu.authorization, credentials=alice)
        assert await consent_needed(client, emu, BOB)
        redirect = (await follow_like_a_browser(bobs_uri))[-1]
        await client.store_user_authorization(emu.authorization, redirect, credentials=bob)
        bobs = await client.acquire_user_authorization(emu.authorization, credentials=bob)
    assert bobs.access_token != alices.access_token
    assert (await userinfo(emu.http_url, bobs.access_token))[1]["sub"] == BOB
    assert (await userinfo(emu.http_url, alices.access_token))[1]["sub"] == ALICE


async def test_a_revoked_grant_asks_for_consent_again(tmp_path: Path, transport: str) -> None:
    """Tokens without ``expires_in`` are never cached, so every acquire refreshes upstream; a
    second emulator on the same data directory has the provider answer invalid_grant."""
    no_cache = {"provider": {"send_expires_in": False}}
    async with Emulator(data_dir=tmp_path, config=no_cache) as emu:
        alice = emu.user_credentials(ALICE)
        async with emu.client(transport=transport) as client:
            uri = await consent_needed(client, emu, ALICE)
            redirect = (await follow_like_a_browser(uri))[-1]
            await client.store_user_authorization(emu.authorization, redirect, credentials=alice)
            await client.acquire_user_authorization(emu.authorization, credentials=alice)
    revoking = {"provider": {"send_expires_in": False, "faults": {"invalid_grant_rate": 1.0}}}
    async with Emulator(data_dir=tmp_path, config=revoking) as emu:
        alice = emu.user_credentials(ALICE)
        async with emu.client(transport=transport) as client:
            uri = await consent_needed(client, emu, ALICE)
            assert (await emu.stats())["grants_revoked"] == 1
            # Consent again (the fault touches refreshes only): a token again.
            redirect = (await follow_like_a_browser(uri))[-1]
            await client.store_user_authorization(emu.authorization, redirect, credentials=alice)
    async with Emulator(data_dir=tmp_path, config=no_cache) as emu:
        async with emu.client(transport=transport) as client:
            token = await client.acquire_user_authorization(
                emu.authorization, credentials=emu.user_credentials(ALICE)
            )
        assert (await userinfo(emu.http_url, token.access_token))[1]["sub"] == ALICE


async def test_an_unknown_authorization_is_not_found_not_a_consent(
    emu: Emulator, transport: str
) -> None:
    alice = emu.user_credentials(ALICE)
    async with emu.client(transport=transport) as client:
        with pytest.raises(NotFound) as caught:
            await client.acquire_user_authorization(UNKNOWN, credentials=alice)
        assert not isinstance(caught.value, AuthorizationRequired)
        assert caught.value.reason == "AUTHORIZATION_NOT_FOUND"
        assert f"authorization {UNKNOWN} does not exist" in str(caught.value)
        redirect = await emu.consent(ALICE, emu.authorization)
        with pytest.raises(NotFound) as caught:
            await client.store_user_authorization(UNKNOWN, redirect, credentials=alice)
        assert not isinstance(caught.value, AuthorizationRequired)


async def test_a_name_of_the_other_kind_is_a_usage_error(emu: Emulator, transport: str) -> None:
    alice = emu.user_credentials(ALICE)
    redirect = await emu.consent(ALICE, emu.authorization)
    async with emu.client(transport=transport) as client:
        with pytest.raises(UsageError, match=r"call acquire_access_token\(\)"):
            await client.acquire_user_authorization(emu.connector, credentials=alice)
        with pytest.raises(UsageError, match=r"call store_refresh_token\(\)"):
            await client.store_user_authorization(emu.connector, redirect, credentials=alice)
        with pytest.raises(UsageError, match=r"call acquire_user_authorization\(\)"):
            await client.acquire_access_token(emu.authorization, credentials=alice)
        with pytest.raises(UsageError, match=r"call store_user_authorization\(\)"):
            await client.store_refresh_token(emu.authorization, redirect, credentials=alice)
