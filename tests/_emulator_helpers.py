"""Helpers for the emulator tests: raw gRPC / REST calls, emulator subprocesses, and a small
third-party OAuth provider whose tokens the tests know (to search for them in files and logs).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import grpc
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from agentspace_grpc import _proto

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


async def mint(http: str, email: str) -> str:
    """An end-user bearer token from the emulator's mint endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{http}/emulator/v1/users/{email}/token") as response,
    ):
        assert response.status == 200, await response.text()
        return str((await response.json())["access_token"])


async def consent_over_http(
    http: str, token: str, connector: str = CONNECTOR, scopes: Sequence[str] = ()
) -> str:
    """The full redirect URI after consent, driven over HTTP like a browser would."""
    params = {"connector": connector}
    if scopes:
        params["scope"] = " ".join(scopes)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{http}/emulator/v1/consent",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            allow_redirects=False,
        ) as response:
            assert response.status == 302, await response.text()
            authorize = response.headers["Location"]
        async with session.get(authorize, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            return response.headers["Location"]


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


async def provider_stats(http: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{http}/provider/stats") as r:
        return dict(await r.json())


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
    process: asyncio.subprocess.Process
    ready: dict[str, str]
    stderr_path: Path

    @property
    def grpc(self) -> str:
        return self.ready["grpc"]

    @property
    def http(self) -> str:
        return self.ready["http"]

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 20)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


async def start_process(
    data_dir: Path | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path,
) -> EmulatorProcess:
    """``agentspace-grpc emulator`` as a subprocess; waits for its ready line."""
    command = [sys.executable, "-m", "agentspace_grpc.cli", "emulator", *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSPACE_EMULATOR")}
    full_env.update(env or {})
    stderr_path = log_dir / f"emulator-{secrets.token_hex(3)}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=full_env,
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"no ready line; stderr: {stderr_path.read_text()}") from None
    if not line:
        await process.wait()
        raise AssertionError(f"emulator exited: {stderr_path.read_text()}")
    return EmulatorProcess(process, json.loads(line), stderr_path)


# ---- a third-party provider whose tokens the test knows -------------------------------------


@dataclass
class CanaryProvider:
    """A small strict OAuth provider (rotating refresh tokens) with recognisable tokens."""

    client_id: str = "canary-client"
    client_secret: str = field(default_factory=lambda: "CANARY-SECRET-" + secrets.token_hex(8))
    issued_refresh: list[str] = field(default_factory=list)
    issued_access: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    codes: dict[str, str] = field(default_factory=dict)
    url: str = ""
    expires_in: int = 3600

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
        user = self.current.pop(str(form.get("refresh_token")), None)
        if user is None:
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
            await runner.cleanup()
