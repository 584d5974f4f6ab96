"""The client end to end against the real emulator, on both wires."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentspace_grpc import AuthorizationRequired, DataConnectorClient, Unauthenticated
from agentspace_grpc.emulator import Emulator
from tests._servers import AioUserCredentials

ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as running:
        yield running


async def test_authorize_store_and_acquire(emulator: Emulator, transport: str) -> None:
    client: DataConnectorClient = emulator.client(transport=transport)
    async with client:
        alice = emulator.user_credentials(ALICE)
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_access_token(emulator.connector, credentials=alice)
        assert caught.value.connector == emulator.connector
        assert caught.value.principal == ALICE
        assert ALICE in str(caught.value)

        redirect = await emulator.consent(ALICE)
        await client.store_refresh_token(emulator.connector, redirect, credentials=alice)
        token = await client.acquire_access_token(emulator.connector, credentials=alice)
        assert token.access_token
        assert token.connector == emulator.connector
        again = await client.acquire_access_token(emulator.connector, credentials=alice)
        assert again.access_token

        # Another user of the same client has stored nothing.
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_access_token(
                emulator.connector, credentials=emulator.user_credentials(BOB)
            )
        assert caught.value.principal == BOB


async def test_a_missing_identity_is_unauthenticated(emulator: Emulator, transport: str) -> None:
    client: DataConnectorClient = emulator.client(transport=transport, credentials="not-a-token")
    async with client:
        with pytest.raises(Unauthenticated):
            await client.acquire_access_token(emulator.connector)


async def test_auto_mode_uses_grpc_against_the_emulator(emulator: Emulator) -> None:
    client: DataConnectorClient = emulator.client()
    async with client:
        alice = emulator.user_token(ALICE)
        redirect = await emulator.consent(ALICE)
        await client.store_refresh_token(emulator.connector, redirect, credentials=alice)
        token = await client.acquire_access_token(emulator.connector, credentials=alice)
    assert token.access_token


async def test_client_options_and_aio_credentials_end_to_end(
    emulator: Emulator, transport: str
) -> None:
    alice = emulator.user_credentials(ALICE)
    aio_alice = AioUserCredentials(
        emulator.token_uri,
        alice.refresh_token,
        client_id=alice.client_id,
        client_secret=alice.client_secret,
    )
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        rest_endpoint=emulator.http_url,
        client_options={
            "api_endpoint": emulator.grpc_target,
            "quota_project_id": "billing",
            "universe_domain": "googleapis.com",
        },
    ) as client:
        redirect = await emulator.consent(ALICE)
        await client.store_refresh_token(emulator.connector, redirect, credentials=aio_alice)
        token = await client.acquire_access_token(emulator.connector, credentials=aio_alice)
    assert token.access_token
    assert token.transport == transport
    assert len(aio_alice.threads) == 1  # refreshed once, against the emulator's token endpoint
