"""Helpers for the emulator tests, one for each need: raw gRPC / REST calls; the emulator's own
endpoints over HTTP (mint, consent, stats); emulator subprocesses (:func:`start_emulator`); and a
small third-party OAuth provider whose tokens the tests know (to search for them in files and
logs).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import google.oauth2.credentials
import grpc
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from agentspace_grpc import _proto
from agentspace_grpc.emulator import _consent

CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"
AUTHORIZATION = "projects/demo/locations/global/authorizations/default_authorization"
REDIRECT = "https://vertexaisearch.cloud.google.com/oauth-redirect"
DETAILS_KEY = "grpc-status-details-bin"


# ---- raw gRPC ------------------------------------------------------------------------------


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    status: status_pb2.Status | None

    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        if self.status is None:
            return None
        for detail in self.status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
        return None

    def retry_info(self) -> error_details_pb2.RetryInfo | None:
        if self.status is None:
            return None
        for detail in self.status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info
        return None


def failure_of(exc: grpc.aio.AioRpcError) -> RpcFailure:
    status = None
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
    return RpcFailure(exc.code(), exc.details() or "", status)


async def grpc_acquire(
    stub: Any, token: str | None, name: str = CONNECTOR, scope: str = "", action: str = ""
) -> Any:
    request = _proto.AcquireAccessTokenRequest(name=name, scope=scope, action=action)
    return await stub.AcquireAccessToken(
        request, metadata=bearer(token) if token else None, timeout=30
    )


async def grpc_fail(call: Any) -> RpcFailure:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return failure_of(exc)
    raise AssertionError("the call succeeded")


@asynccontextmanager
async def channel_to(target: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield _proto.DataConnectorServiceStub(channel)


# ---- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What the emulator's mint endpoint answers for an end user (secrets all)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_uri: str
    client_id: str
    client_secret: str = field(repr=False)

    def credentials(self) -> google.oauth2.credentials.Credentials:
        """google-auth credentials with no token yet: refreshed (at the emulator's token
        endpoint) before the first call, so that exchange is exercised too."""
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=self.refresh_token,
            token_uri=self.token_uri,
            client_id=self.client_id,
            client_secret=self.client_secret,
        )


async def mint_identity(http: str, email: str) -> Identity:
    """``email``'s identity from the emulator's mint endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http}/emulator/v1/users/{email}/token") as response,
    ):
        assert response.status == 200, await response.text()
        minted = await response.json()
    return Identity(
        minted["access_token"],
        minted["refresh_token"],
        minted["token_uri"],
        minted["client_id"],
        minted["client_secret"],
    )


async def mint(http: str, email: str) -> str:
    """An end-user bearer token from the emulator's mint endpoint."""
    return (await mint_identity(http, email)).access_token


async def consent_location(http: str, token: str, **params: str) -> str:
    """Where the consent endpoint sends the user with bearer ``token`` (not followed): the
    third party's authorize URL. ``params``: connector, scope, instance_uri."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{http}/emulator/v1/consent",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 302, await response.text()
        return response.headers["Location"]


async def consent_over_http(
    http: str, token: str, connector: str = CONNECTOR, scopes: Sequence[str] = ()
) -> str:
    """The full redirect URI after consent, driven over HTTP like a browser would (the
    package's own helper, which the emulator's ``consent`` uses too)."""
    return await _consent.consent_over_http(http, token, "the test's user", connector, scopes)


async def follow_like_a_browser(uri: str, stop_at: str = REDIRECT) -> list[str]:
    """Opens ``uri`` as a browser does, with no credentials: plain GETs following redirects
    until one leads to ``stop_at`` (the redirect URI, on another site). Every URL visited."""
    visited = [uri]
    async with aiohttp.ClientSession() as session:
        while not visited[-1].startswith(f"{stop_at}?"):
            assert len(visited) < 10, visited
            async with session.get(visited[-1], allow_redirects=False) as response:
                assert response.status in (301, 302, 303, 307), await response.text()
                visited.append(response.headers["Location"])
    return visited


async def rest(
    http: str,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    raw_body: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{http}{path}", data=data, headers=headers) as response,
    ):
        text = await response.read()
        return response.status, json.loads(text) if text else None


async def store_over_rest(http: str, token: str, redirect: str, connector: str = CONNECTOR) -> Any:
    status, body = await rest(
        http,
        "POST",
        f"/v1alpha/{connector}:acquireAndStoreRefreshToken",
        token,
        {"fullRedirectUri": redirect},
    )
    assert status == 200, body
    return body


async def _counters(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return {str(k): int(v) for k, v in (await response.json()).items()}


async def provider_stats(http: str) -> dict[str, int]:
    """The built-in provider's counters (``GET /provider/stats``), shared by the processes."""
    return await _counters(f"{http}/provider/stats")


async def emulator_stats(http: str) -> dict[str, int]:
    """The emulator's own counters (``GET /emulator/v1/stats``), shared by its processes."""
    return await _counters(f"{http}/emulator/v1/stats")


async def until_counted(
    stats: Callable[[], Awaitable[Mapping[str, int]]], name: str, count: int
) -> None:
    """Until counter ``name`` of ``stats()`` (an emulator's or its provider's) reaches
    ``count``: read again every few milliseconds, for 10 s at most."""
    deadline = time.monotonic() + 10
    while (await stats()).get(name, 0) < count:
        assert time.monotonic() < deadline, f"{name} never reached {count}"
        await asyncio.sleep(0.005)


async def userinfo(http: str, access_token: str) -> tuple[int, Any]:
    """Calls the built-in provider's "API" with a third-party access token."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{http}/provider/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        ) as response,
    ):
        return response.status, await response.json()


async def connect_user(http: str, email: str, connector: str = CONNECTOR) -> str:
    """Mints ``email``'s identity, runs consent and stores the token; returns the bearer."""
    token = await mint(http, email)
    redirect = await consent_over_http(http, token, connector)
    await store_over_rest(http, token, redirect, connector)
    return token


# ---- emulator subprocesses -----------------------------------------------------------------


@dataclass
class EmulatorProcess:
    """An ``agentspace-grpc emulator`` process. A plain ``Popen``, waited for in a thread: it
    may outlive an event loop (a module-scoped fixture), and waiting never blocks one."""

    process: subprocess.Popen[bytes]
    ready: dict[str, str]
    stderr_path: Path
    #: What the process wrote on stdout after its ready line (read when it has exited).
    stdout_after_ready: bytes = b""

    @property
    def grpc(self) -> str:
        """``HOST:PORT`` of the gRPC front."""
        return self.ready["grpc"]

    @property
    def http(self) -> str:
        """Base URL of the HTTP front."""
        return self.ready["http"]

    @property
    def grpc_port(self) -> int:
        """The gRPC port."""
        return int(self.grpc.rsplit(":", 1)[1])

    @property
    def http_port(self) -> int:
        """The HTTP port."""
        return int(self.http.rsplit(":", 1)[1])

    async def wait(self) -> int:
        """The exit status, once the process has ended (20 s at most)."""
        code = await asyncio.to_thread(self.process.wait, 20)
        stdout = self.process.stdout
        if stdout is not None and not stdout.closed:
            self.stdout_after_ready = await asyncio.to_thread(stdout.read)
            stdout.close()
        return code

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the process and wait for its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return await self.wait()

    def stderr(self) -> str:
        """Everything the process logged."""
        return self.stderr_path.read_text()


def _spawn(
    data_dir: Path | None, args: Sequence[str], env: Mapping[str, str] | None, log_dir: Path
) -> EmulatorProcess:
    command = [sys.executable, "-m", "agentspace_grpc.cli", "emulator", *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSPACE_EMULATOR")}
    full_env.update(env or {})
    stderr_path = log_dir / f"emulator-{secrets.token_hex(3)}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=full_env)
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(30)
    line = process.stdout.readline() if ready else b""
    if not line:
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"the emulator did not start: {stderr_path.read_text()}")
    return EmulatorProcess(process, json.loads(line), stderr_path)


async def start_emulator(
    data_dir: Path | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path,
) -> EmulatorProcess:
    """``agentspace-grpc emulator`` as a subprocess (``args``: its flags), once it printed its
    ready line (30 s at most). From a synchronous fixture: ``asyncio.run(start_emulator(...))``.
    """
    return await asyncio.to_thread(_spawn, data_dir, args, env, log_dir)


# ---- a third-party provider whose tokens the test knows -------------------------------------


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class CanaryProvider:
    """A small strict OAuth provider (rotating refresh tokens) with recognisable tokens.

    A test holds refresh requests at the provider (``answering.clear()``, until it sets it
    again), waits for them to arrive (:meth:`wait_for_refreshes`) and may have them rejected
    (``reject_refreshes``): races are staged with events, not timed.
    """

    client_id: str = "canary-client"
    client_secret: str = field(default_factory=lambda: "CANARY-SECRET-" + secrets.token_hex(8))
    issued_refresh: list[str] = field(default_factory=list)
    issued_access: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    codes: dict[str, str] = field(default_factory=dict)
    url: str = ""
    expires_in: int = 3600
    answering: asyncio.Event = field(default_factory=_set_event)
    reject_refreshes: bool = False
    refreshes: int = 0  # refresh requests received
    invalid_grants: int = 0  # refresh requests answered invalid_grant
    _arrival: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_for_refreshes(self, count: int) -> None:
        """Until ``count`` refresh requests in all have arrived."""
        while self.refreshes < count:
            await self._arrival.wait()
            self._arrival = asyncio.Event()

    def connector_config(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "authorize_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "auth_method": "client_secret_post",
            "default_scopes": ["read"],
            **extra,
        }

    async def authorize(self, request: web.Request) -> web.Response:
        code = "CANARY-CODE-" + secrets.token_hex(8)
        self.codes[code] = request.query["login_hint"]
        query = urlencode({"code": code, "state": request.query["state"]})
        return web.Response(
            status=302, headers={"Location": f"{request.query['redirect_uri']}?{query}"}
        )

    def _issue(self, user: str) -> dict[str, Any]:
        refresh = "CANARY-RT-" + secrets.token_hex(12)
        access = "CANARY-AT-" + secrets.token_hex(12)
        self.issued_refresh.append(refresh)
        self.issued_access.append(access)
        self.current[refresh] = user
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
            "scope": "read",
            "instance_url": "https://canary.example",
        }

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "authorization_code":
            user = self.codes.pop(str(form.get("code")), None)
            if user is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            return web.json_response(self._issue(user))
        self.refreshes += 1
        self._arrival.set()
        await self.answering.wait()
        user = self.current.pop(str(form.get("refresh_token")), None)
        if user is None or self.reject_refreshes:
            self.invalid_grants += 1
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(self._issue(user))

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[CanaryProvider]:
        app = web.Application()
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self.answering.set()  # nothing stays held
            await runner.cleanup()
