"""Secrets never leak: canary values through every path, failures included.

Seeded canaries: the third party's access and refresh tokens and authorization codes (a
canary OAuth provider whose every value starts with ``CANARY-``), the connector's client
secret (two connectors: one live, one whose token endpoint is down), the end users' identity
tokens (the emulator's access and refresh tokens, and the ones google-auth refreshes), and
made-up bearer tokens that the emulator rejects.

Every path runs on both wires with the root logger and every library (grpc, aiohttp,
google.auth, urllib3, asyncio) at DEBUG: store, acquire with rotation, scopes missing, an
unknown action, a user who never consented, a rejected identity, a reused authorization code,
a revoked grant, an unreachable third party, credentials that cannot refresh, the deprecated
check, a refused connection, a deadline, a client closed mid-call, and raw REST requests that
carry a secret in a bad field. Searched: every log record (formatted, with tracebacks and
its attributes), ``repr``/``str`` of the public objects, exception messages and formatted
tracebacks (chained causes included), REST error bodies, the emulator process's stdout and
stderr (at DEBUG), and the raw bytes of every file in the data directory, while running and
after stop. docs/failure-modes.md 14, 21, 22.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google.oauth2.credentials
import pytest

from agentspace_grpc import (
    AuthorizationRequired,
    Cancelled,
    DataConnectorClient,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import (
    CanaryProvider,
    consent_over_http,
    mint,
    mint_identity,
    rest,
    start_emulator,
)
from tests._raw import TcpProxy, closed_port
from tests._reliability import (
    LogCapture,
    debug_logging,
    exception_texts,
    files_bytes,
    find_secrets,
    write_config,
)

LIVE = "projects/canary/locations/global/collections/c/dataConnector"
DEAD = "projects/dead/locations/global/collections/c/dataConnector"
DEAD_SECRET = "CANARY-DEAD-SECRET-5f0c2a"
BOGUS_TOKEN = "CANARY-BOGUS-BEARER-8d1e7b"
BAD_IDENTITY_REFRESH = "CANARY-BAD-IDENTITY-REFRESH-3a9c"
IDENTITY_CLIENT_ID = "agentspace-grpc-emulator"


@dataclass
class Run:
    """Where the emulator is, and what a path run collected."""

    grpc: str
    http: str
    canary: CanaryProvider
    secrets: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def expect(self, error: BaseException, kind: type[BaseException]) -> None:
        assert isinstance(error, kind), repr(error)
        self.errors.append(error)

    def all_secrets(self) -> list[str]:
        canary = self.canary
        return [
            *self.secrets,
            *canary.issued_access,
            *canary.issued_refresh,
            canary.client_secret,
            DEAD_SECRET,
            BOGUS_TOKEN,
            BAD_IDENTITY_REFRESH,
            "CANARY-",  # every value the canary provider issues starts with it
        ]

    def leaks(self, capture: LogCapture) -> list[str]:
        texts = list(self.texts) + capture.texts
        for error in self.errors:
            texts += exception_texts(error)
        return find_secrets(texts, self.all_secrets())


def connectors(canary: CanaryProvider) -> list[dict[str, Any]]:
    live = canary.connector_config(LIVE)
    dead = canary.connector_config(DEAD, client_secret=DEAD_SECRET)
    dead["token_url"] = f"http://127.0.0.1:{closed_port()}/token"
    dead["timeout_seconds"] = 2
    return [live, dead]


async def identity(run: Run, email: str) -> google.oauth2.credentials.Credentials:
    """The user's google-auth credentials; the identity tokens become canaries."""
    minted = await mint_identity(run.http, email)
    run.secrets += [minted.access_token, minted.refresh_token]
    return minted.credentials()


async def consent(run: Run, email: str, connector: str) -> str:
    token = await mint(run.http, email)
    run.secrets.append(token)
    redirect = await consent_over_http(run.http, token, connector)
    run.secrets += parse_qs(urlsplit(redirect).query).get("code", [])
    return redirect


async def failing(run: Run, call: Any, kind: type[BaseException]) -> None:
    try:
        await call
    except Exception as exc:
        run.expect(exc, kind)
    else:
        raise AssertionError(f"expected {kind.__name__}")


async def every_path(run: Run, transport: str) -> None:
    """Every client path on one wire, failures included; collects texts and errors."""
    alice, bob = f"alice-{transport}@example.com", f"bob-{transport}@example.com"
    credentials = await identity(run, alice)
    quick = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        endpoint=run.grpc,
        rest_endpoint=run.http,
        credentials=credentials,
        retry=quick,
    ) as client:
        run.texts += [repr(client), str(client), repr(quick)]
        extra = await client.store_refresh_token(LIVE, await consent(run, alice, LIVE))
        run.texts.append(repr(extra))
        run.secrets.append(credentials.token)  # refreshed by google-auth for the store
        for _ in range(2):  # the canary sends no expires_in: each acquire rotates
            token = await client.acquire_access_token(LIVE)
            assert token.access_token.startswith("CANARY-AT-")
            run.texts += [repr(token), str(token), repr(token.scopes), token.connector]
        with pytest.warns(DeprecationWarning, match="deprecated"):
            await client.check_refresh_token(LIVE)
        await failing(run, client.acquire_access_token(LIVE, action="nope"), InvalidArgument)
        await failing(run, client.acquire_access_token(LIVE, scope="admin"), FailedPrecondition)
        bob_credentials = await identity(run, bob)
        await failing(
            run,
            client.acquire_access_token(LIVE, credentials=bob_credentials),
            AuthorizationRequired,
        )
        run.secrets.append(bob_credentials.token)
        await failing(
            run, client.acquire_access_token(LIVE, credentials=BOGUS_TOKEN), Unauthenticated
        )
        reused = await consent(run, alice, LIVE)
        await client.store_refresh_token(LIVE, reused)
        await failing(run, client.store_refresh_token(LIVE, reused), InvalidArgument)
        run.canary.current.clear()  # the third party forgets every grant: revoked
        await failing(run, client.acquire_access_token(LIVE, scope="read"), FailedPrecondition)
        assert run.errors[-1].reason == "REFRESH_TOKEN_REVOKED"  # type: ignore[attr-defined]
        dead = await consent(run, alice, DEAD)
        await failing(run, client.store_refresh_token(DEAD, dead, timeout=10), Unavailable)
        broken = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=BAD_IDENTITY_REFRESH,
            token_uri=credentials.token_uri,
            client_id=IDENTITY_CLIENT_ID,
            client_secret="public-client-no-secret",
        )
        await failing(run, client.acquire_access_token(LIVE, credentials=broken), Unauthenticated)
    await wire_failures(run, transport, credentials)
    await raw_rest(run, credentials.token)


async def wire_failures(
    run: Run, transport: str, credentials: google.oauth2.credentials.Credentials
) -> None:
    """Refused, stalled and closed-mid-call, with the user's token in the headers."""
    kwargs: dict[str, Any] = {"transport": transport, "credentials": credentials}
    async with DataConnectorClient(
        endpoint=f"127.0.0.1:{closed_port()}", retry=None, **kwargs
    ) as client:
        await failing(run, client.acquire_access_token(LIVE), Unavailable)
    port = int((run.grpc if transport == "grpc" else run.http).rsplit(":", 1)[1])
    async with TcpProxy(port) as proxy:
        proxy.mode = "stall"
        endpoint = {"endpoint": proxy.address, "rest_endpoint": proxy.url}
        async with DataConnectorClient(**endpoint, **kwargs) as client:
            await failing(run, client.acquire_access_token(LIVE, timeout=0.5), DeadlineExceeded)
            call = asyncio.ensure_future(client.acquire_access_token(LIVE))
            await asyncio.sleep(0.2)
            await client.aclose()
            await failing(run, call, Cancelled)


async def raw_rest(run: Run, user_token: str | None) -> None:
    """Bad requests carrying a secret in a field: the error bodies must not echo it."""
    assert user_token is not None
    path = f"/v1alpha/{LIVE}:acquireAccessToken"
    for body in (
        {"bogusField": run.canary.client_secret},
        {"scope": [user_token]},
        {"action": {"token": user_token}},
    ):
        status, answer = await rest(run.http, "POST", path, user_token, body)
        assert status == 400, answer
        run.texts.append(json.dumps(answer))
    status, answer = await rest(run.http, "POST", path, BOGUS_TOKEN, {})
    assert status == 401
    run.texts.append(json.dumps(answer))


@pytest.fixture
async def canary() -> AsyncIterator[CanaryProvider]:
    provider = CanaryProvider(expires_in=0)  # nothing cacheable: every acquire rotates
    async with provider.serve():
        yield provider


async def test_no_secret_anywhere_with_the_emulator_in_process(
    canary: CanaryProvider, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with debug_logging() as capture, warnings.catch_warnings():
        warnings.simplefilter("error")
        async with Emulator(data_dir=data, config={"connectors": connectors(canary)}) as emu:
            run = Run(emu.grpc_target, emu.http_url, canary)
            run.texts += [repr(emu), str(emu)]
            for transport in ("grpc", "rest"):
                await every_path(run, transport)
            running = files_bytes(data)
        stopped = files_bytes(data)
    assert len(canary.issued_refresh) >= 6  # the paths really rotated tokens
    assert len(run.errors) == 2 * 11  # every failure path ran, on each wire
    assert "agentspace_grpc.emulator" in capture.names  # the server's own logs were seen
    assert any(name.startswith("google") or name.startswith("urllib3") for name in capture.names)
    assert any(name.startswith("grpc") for name in capture.names)
    assert not run.leaks(capture)
    assert not find_secrets([*running, *stopped], run.all_secrets())


async def test_no_secret_anywhere_with_the_emulator_process(
    canary: CanaryProvider, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "emulator.toml", connectors=connectors(canary))
    emulator = await start_emulator(
        data, "--config", str(config), "--log-level", "DEBUG", log_dir=tmp_path
    )
    try:
        with debug_logging() as capture:
            run = Run(emulator.grpc, emulator.http, canary)
            run.texts.append(json.dumps(emulator.ready))
            for transport in ("grpc", "rest"):
                await every_path(run, transport)
            running = files_bytes(data)
    finally:
        assert await emulator.stop() == 0
    stderr = emulator.stderr()
    assert "DEBUG" in stderr
    assert "stored a refresh token" in stderr
    assert "revoked" in stderr  # the failure paths were logged ...
    assert not find_secrets([stderr], run.all_secrets())  # ... without a secret
    assert emulator.stdout_after_ready == b""  # stdout: the ready line only
    assert not run.leaks(capture)
    assert not find_secrets([*running, *files_bytes(data)], run.all_secrets())
