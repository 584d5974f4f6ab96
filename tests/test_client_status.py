"""``client.connection_status`` and ``agentspace-grpc status`` against the emulator, one state
each: connected, never consented, a scope missing for an action, a revoked grant, the third
party down. No token ever appears in a status or in the command's output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentspace_grpc import (
    ConnectionStatus,
    DataConnectorClient,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    UsageError,
)
from agentspace_grpc._credentials import CredentialsLike
from agentspace_grpc.emulator import Emulator
from tests._servers import CONNECTOR, RpcFault, Servers, error_info

ALICE = "alice@example.com"  # connected
CAROL = "carol@example.com"  # never consents

# The provider answers every refresh with invalid_grant (a revocation), or with 503.
REVOKED = {"provider": {"faults": {"invalid_grant_rate": 1.0}}}
PROVIDER_DOWN = {"provider": {"faults": {"rate_5xx": 1.0, "retry_after": -1}}}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as running:
        await connect(running, ALICE)
        yield running


async def connect(emulator: Emulator, email: str) -> None:
    async with emulator.client(credentials=emulator.user_token(email)) as client:
        await client.store_refresh_token(emulator.connector, await emulator.consent(email))


def assert_no_token(status: ConnectionStatus, token: str) -> None:
    assert token not in repr(status)
    assert token not in str(status)
    assert all(token not in str(value) for value in vars_of(status).values())


def vars_of(status: ConnectionStatus) -> dict[str, Any]:
    return {name: getattr(status, name) for name in status.__slots__}


async def test_connected_never_consented_and_scopes_missing(
    emulator: Emulator, transport: str
) -> None:
    async with emulator.client(transport=transport) as client:
        alice = emulator.user_token(ALICE)
        token = await client.acquire_access_token(emulator.connector, credentials=alice)
        status = await client.connection_status(emulator.connector, credentials=alice)
        assert status == ConnectionStatus("connected", scopes=("read", "write"))
        assert_no_token(status, token.access_token)

        status = await client.connection_status(
            emulator.connector, credentials=emulator.user_token(CAROL)
        )
        assert status.state == "not_connected"
        assert status.reason == "REFRESH_TOKEN_NOT_FOUND"
        assert status.authorization_uri is None

        status = await client.connection_status(
            emulator.connector, action="admin", credentials=alice
        )
        assert status.state == "reauthorization_required"
        assert status.reason == "SCOPES_MISSING"
        assert status.missing_scopes == ("admin",)
        assert_no_token(status, token.access_token)


@pytest.mark.parametrize(
    ("config", "state", "reason"),
    [
        (REVOKED, "reauthorization_required", "REFRESH_TOKEN_REVOKED"),
        (PROVIDER_DOWN, "unavailable", "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_revoked_grant_and_provider_down(
    config: dict[str, Any], state: str, reason: str
) -> None:
    async with Emulator(config=config) as emulator:
        await connect(emulator, ALICE)
        async with emulator.client(credentials=emulator.user_token(ALICE)) as client:
            # A scope of its own: the access token stored at consent does not answer it, so
            # the emulator refreshes upstream.
            status = await client.connection_status(emulator.connector, scope="read")
        assert status == ConnectionStatus(state, reason=reason)  # type: ignore[arg-type]


async def test_consent_uri_is_asked_only_when_consent_is_needed(emulator: Emulator) -> None:
    asked: list[tuple[str, CredentialsLike]] = []

    async def consent_uri(resource: str, credentials: CredentialsLike) -> str:
        asked.append((resource, credentials))
        return f"https://consent.example/start?for={len(asked)}"

    carol = emulator.user_token(CAROL)
    async with emulator.client(credentials=carol) as client:
        status = await client.connection_status(emulator.connector, consent_uri=consent_uri)
        assert status.state == "not_connected"
        assert status.authorization_uri == "https://consent.example/start?for=1"
        # The credentials in effect are passed on: here the client's own.
        assert asked == [(emulator.connector, carol)]

        alice = emulator.user_token(ALICE)
        status = await client.connection_status(
            emulator.connector, action="admin", credentials=alice, consent_uri=consent_uri
        )
        assert status.authorization_uri == "https://consent.example/start?for=2"
        assert asked[1] == (emulator.connector, alice)

        status = await client.connection_status(
            emulator.connector, credentials=alice, consent_uri=consent_uri
        )
        assert status.state == "connected"
        assert status.authorization_uri is None
        assert len(asked) == 2

        with pytest.raises(UsageError, match="consent_uri"):
            await client.connection_status(emulator.connector, consent_uri="https://x")  # type: ignore[arg-type]


async def test_errors_about_the_caller_are_raised_not_states(emulator: Emulator) -> None:
    async with emulator.client() as client:
        with pytest.raises(Unauthenticated):
            await client.connection_status(emulator.connector, credentials="not-a-token")
        with pytest.raises(InvalidArgument):
            await client.connection_status(
                emulator.connector, action="nope", credentials=emulator.user_token(ALICE)
            )


async def test_status_never_calls_check_refresh_token(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        status = await client.connection_status(CONNECTOR, scope="s")
    assert status == ConnectionStatus("connected", scopes=("s",))
    assert [seen.method for seen in servers.service.seen] == ["AcquireAccessToken"]


async def test_reauthorization_only_when_the_service_says_why(servers: Servers) -> None:
    servers.service.fail_next(
        RpcFault(grpc.StatusCode.FAILED_PRECONDITION, "no reason given"),
        RpcFault(
            grpc.StatusCode.FAILED_PRECONDITION,
            "revoked",
            error_info("REFRESH_TOKEN_REVOKED", connector=CONNECTOR),
        ),
    )
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("rest")) as client:
        with pytest.raises(FailedPrecondition):
            await client.connection_status(CONNECTOR)
        status = await client.connection_status(CONNECTOR)
    assert status == ConnectionStatus("reauthorization_required", reason="REFRESH_TOKEN_REVOKED")


# ---- agentspace-grpc status ------------------------------------------------------------------


async def status_command(emulator: Emulator, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSPACE_", "GOOGLE_"))}
    env["AGENTSPACE_EMULATOR_HOST"] = emulator.grpc_target
    env["AGENTSPACE_EMULATOR_REST"] = emulator.http_url
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "agentspace_grpc.cli", "status", emulator.connector, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_status_command_exits_0_3_or_5_and_never_prints_a_token(
    emulator: Emulator,
) -> None:
    async with emulator.client(credentials=emulator.user_token(ALICE)) as client:
        token = (await client.acquire_access_token(emulator.connector)).access_token

    code, out, err = await status_command(emulator, "--emulator-user", ALICE)
    assert code == 0, err
    assert "state      connected" in out
    assert "scopes     read write" in out
    assert token not in out + err

    code, out, err = await status_command(emulator, "--emulator-user", CAROL, "--json")
    assert code == 3, err
    assert json.loads(out) == {
        "resource": emulator.connector,
        "connector": emulator.connector,
        "state": "not_connected",
        "scopes": [],
        "missing_scopes": [],
        "reason": "REFRESH_TOKEN_NOT_FOUND",
        "authorization_uri": None,
    }

    code, out, err = await status_command(emulator, "--emulator-user", ALICE, "--action", "admin")
    assert code == 3, err
    assert "state      reauthorization_required" in out
    assert "missing    admin" in out
    assert "agentspace-grpc store" in err
    assert token not in out + err


async def test_the_status_command_exits_5_when_the_provider_is_down() -> None:
    async with Emulator(config=PROVIDER_DOWN) as emulator:
        await connect(emulator, ALICE)
        code, out, err = await status_command(
            emulator, "--emulator-user", ALICE, "--scope", "read", "--json"
        )
    assert code == 5, err
    assert json.loads(out)["state"] == "unavailable"
    assert json.loads(out)["reason"] == "UPSTREAM_UNAVAILABLE"


async def test_an_authorizations_status_carries_the_services_consent_uri(
    emulator: Emulator, transport: str
) -> None:
    from tests._emulator_helpers import follow_like_a_browser

    async with emulator.client(transport=transport) as client:
        carol = emulator.user_token(CAROL)
        status = await client.connection_status(emulator.authorization, credentials=carol)
        assert status.state == "not_connected"
        assert status.authorization_uri is not None
        assert status.authorization_uri.startswith(emulator.http_url)
        with pytest.raises(UsageError, match="no scope or action"):
            await client.connection_status(emulator.authorization, scope="x", credentials=carol)
        redirect = (await follow_like_a_browser(status.authorization_uri))[-1]
        await client.store_user_authorization(emulator.authorization, redirect, credentials=carol)
        status = await client.connection_status(emulator.authorization, credentials=carol)
        assert status.state == "connected"
        assert status.authorization_uri is None
