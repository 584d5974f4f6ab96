"""Transport safety and authentication retries (docs/failure-modes.md 6, 11, 13).

Transport safety: plaintext to a non-loopback host is refused without ``insecure=True``,
before any socket or DNS call (look-alikes of loopback names included); a remote endpoint is
spoken to in TLS only, on both wires, and only ``insecure=True`` puts plaintext on the wire
(what reaches a sniffing proxy is recorded byte for byte); calls without identity are
UNAUTHENTICATED, and identity reaches the emulator over plaintext loopback gRPC.

Auth retry, against the emulator: a token that the service rejects (one issued by another
emulator, still valid in google-auth's eyes, as with clock skew or early revocation) costs
exactly one refresh and one retry; when the refreshed token is rejected too the error is
raised (no loop); a refresh that hangs still ends at the call's deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import google.oauth2.credentials
import grpc
import pytest

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    DeadlineExceeded,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    UsageError,
)
from agentspace_grpc import _proto as p
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import CONNECTOR, channel_to, rest, userinfo
from tests._raw import TcpProxy

ALICE = "alice@example.com"
SECRET = "CANARY-transport-safety-token"
REMOTE = "svc.agentspace.invalid"
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "grpc_proxy",
    "AGENTSPACE_EMULATOR_HOST",
    "AGENTSPACE_EMULATOR_REST",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


# ---- 8: transport safety -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:8080",
        "http://svc.internal",
        "http://[2001:db8::1]:80",
        "http://127.0.0.1.nip.io:8080",  # look-alikes of loopback are remote
        "http://localhost.evil.example",
        "http://0.0.0.0:8080",
    ],
)
def test_plaintext_to_a_remote_host_is_refused_before_any_io(
    url: str, clean_env: pytest.MonkeyPatch
) -> None:
    io: list[str] = []

    def record(name: str) -> Any:
        def called(*args: object, **kwargs: object) -> Any:
            io.append(name)
            raise AssertionError(f"{name} called before the endpoint was checked")

        return called

    clean_env.setattr(socket, "getaddrinfo", record("getaddrinfo"))
    clean_env.setattr(socket, "create_connection", record("create_connection"))
    clean_env.setattr(socket.socket, "connect", record("connect"))
    with pytest.raises(UsageError, match="insecure=True") as caught:
        DataConnectorClient(rest_endpoint=url, credentials=SECRET)
    assert url in str(caught.value)
    assert SECRET not in str(caught.value)
    DataConnectorClient(rest_endpoint=url, credentials=SECRET, insecure=True)  # the way out
    assert io == []


class SniffingProxy:
    """An HTTP proxy that records the first bytes a client sends through it, then hangs up:
    after a CONNECT, the first bytes inside the tunnel; for a plain proxied request, its head."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SniffingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if head.startswith(b"CONNECT "):
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                first = await asyncio.wait_for(reader.read(4096), 5)
                self.seen.append(("tunnel", first))
            else:
                self.seen.append(("plain", head))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.transport.abort()


@pytest.mark.parametrize("insecure", [False, True])
async def test_a_remote_endpoint_gets_tls_unless_insecure_is_set(
    transport: str, insecure: bool, clean_env: pytest.MonkeyPatch
) -> None:
    async with SniffingProxy() as proxy:
        clean_env.setenv("HTTPS_PROXY", proxy.url)
        clean_env.setenv("HTTP_PROXY", proxy.url)
        async with DataConnectorClient(
            transport=transport,  # type: ignore[arg-type]
            endpoint=f"{REMOTE}:8443",
            credentials=SECRET,
            insecure=insecure,
            retry=None,
        ) as client:
            started = time.monotonic()
            with pytest.raises((Unavailable, DeadlineExceeded)):
                await client.acquire_access_token(CONNECTOR, timeout=3)
            assert time.monotonic() - started < 3.7
    assert proxy.seen, "nothing reached the proxy"
    for kind, first in proxy.seen:
        if not insecure:
            assert kind == "tunnel"
            assert first[:2] == b"\x16\x03", first[:40]  # a TLS handshake record
            assert SECRET.encode() not in first
            assert b"authorization" not in first.lower()
        elif transport == "grpc":
            assert (kind, first[:14]) == ("tunnel", b"PRI * HTTP/2.0")  # cleartext HTTP/2
        else:
            assert kind == "plain"
            assert first.startswith(f"POST http://{REMOTE}:8443/v1alpha/".encode())


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "main") as running:
        redirect = await running.consent(ALICE)
        async with running.client(credentials=running.user_credentials(ALICE)) as client:
            await client.store_refresh_token(CONNECTOR, redirect)
        yield running


async def test_calls_without_identity_are_unauthenticated(
    emu: Emulator, transport: str, clean_env: pytest.MonkeyPatch
) -> None:
    # With the emulator variables and no credentials, the client sends no identity (it does
    # not look for Application Default Credentials), and the service refuses.
    clean_env.setenv("AGENTSPACE_EMULATOR_HOST", emu.grpc_target)
    clean_env.setenv("AGENTSPACE_EMULATOR_REST", emu.http_url)
    async with DataConnectorClient(transport=transport) as client:  # type: ignore[arg-type]
        with pytest.raises(Unauthenticated, match="no end-user credentials"):
            await client.acquire_access_token(CONNECTOR)
    async with channel_to(emu.grpc_target) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AcquireAccessToken(p.AcquireAccessTokenRequest(name=CONNECTOR))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, body = await rest(
        emu.http_url, "POST", f"/v1alpha/{CONNECTOR}:acquireAccessToken", None
    )
    assert (status, body["error"]["status"]) == (401, "UNAUTHENTICATED")
    # With credentials, identity reaches the service over plaintext loopback, gRPC included
    # (grpc drops call credentials on insecure channels: failure mode 6).
    async with emu.client(transport=transport, credentials=emu.user_credentials(ALICE)) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert (await userinfo(emu.http_url, token.access_token))[1]["sub"] == ALICE


async def test_a_token_stored_under_the_wrong_identity_is_named(
    emu: Emulator, transport: str
) -> None:
    """What users do today: store with the agent's own identity instead of the end user's,
    then read 404 as "not connected". The store is refused naming both principals, and the
    acquire says who has not authorized which connector (docs/failure-modes.md, "what users
    of this API do today")."""
    bob = "bob@example.com"
    redirect = await emu.consent(bob)
    async with emu.client(transport=transport) as client:
        with pytest.raises(InvalidArgument) as wrong:
            await client.store_refresh_token(CONNECTOR, redirect, credentials=emu.user_token(ALICE))
        assert bob in wrong.value.message
        assert ALICE in wrong.value.message
        with pytest.raises(AuthorizationRequired) as missing:
            await client.acquire_access_token(CONNECTOR, credentials=emu.user_token(bob))
    assert missing.value.principal == bob
    assert missing.value.connector == CONNECTOR
    assert bob in str(missing.value)
    assert "store_refresh_token" in str(missing.value)


# ---- 9: auth retry -----------------------------------------------------------------------------


class CountingCredentials(google.oauth2.credentials.Credentials):  # type: ignore[misc]
    """User credentials that count their refreshes."""

    refreshes = 0

    def refresh(self, request: google.auth.transport.requests.Request) -> None:
        self.refreshes += 1
        super().refresh(request)


def skewed(
    token: str,
    refresh_from: google.oauth2.credentials.Credentials,
    token_uri: str | None = None,
) -> CountingCredentials:
    """Credentials holding ``token``, valid for an hour in google-auth's eyes, that refresh
    like ``refresh_from`` (at ``token_uri`` if given)."""
    credentials = CountingCredentials(
        token=token,
        refresh_token=refresh_from.refresh_token,
        token_uri=token_uri or refresh_from.token_uri,
        client_id=refresh_from.client_id,
        client_secret=refresh_from.client_secret,
    )
    credentials.expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + (
        datetime.timedelta(hours=1)
    )
    return credentials


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[Emulator]:
    """Another emulator (another key): the tokens it issues are foreign to ``emu``."""
    async with Emulator(data_dir=tmp_path / "other") as running:
        yield running


async def test_a_rejected_token_gets_one_refresh_and_one_retry(
    emu: Emulator, other: Emulator, transport: str
) -> None:
    credentials = skewed(other.user_token(ALICE), refresh_from=emu.user_credentials(ALICE))
    async with emu.client(transport=transport, credentials=credentials) as client:
        token = await client.acquire_access_token(CONNECTOR)
        assert credentials.refreshes == 1
        again = await client.acquire_access_token(CONNECTOR)  # the refreshed token is kept
    assert credentials.refreshes == 1
    assert token.access_token == again.access_token
    assert (await userinfo(emu.http_url, token.access_token))[1]["sub"] == ALICE


async def test_a_second_rejection_is_raised_after_one_refresh(
    emu: Emulator, other: Emulator, transport: str
) -> None:
    # The refresh happens at the other emulator: the new token is foreign too.
    credentials = skewed(other.user_token(ALICE), refresh_from=other.user_credentials(ALICE))
    async with emu.client(transport=transport, credentials=credentials) as client:
        started = time.monotonic()
        with pytest.raises(Unauthenticated, match="not issued by this emulator"):
            await client.acquire_access_token(CONNECTOR, timeout=10)
        assert time.monotonic() - started < 5
    assert credentials.refreshes == 1


async def test_the_deadline_holds_while_a_refresh_after_a_rejection_hangs(
    emu: Emulator, other: Emulator, transport: str
) -> None:
    async with TcpProxy(int(emu.http_url.rsplit(":", 1)[1])) as stalled:
        stalled.mode = "stall"  # the token endpoint accepts and never answers
        credentials = skewed(
            other.user_token(ALICE),
            refresh_from=emu.user_credentials(ALICE),
            token_uri=f"{stalled.url}/oauth2/token",
        )
        async with emu.client(transport=transport, credentials=credentials) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="refresh"):
                await client.acquire_access_token(CONNECTOR, timeout=1.0)
            elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 1.7
        assert credentials.refreshes == 1
    # Closing the proxy reset the refresh's connection: its thread is done (no leak).
