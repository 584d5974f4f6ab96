"""Servers that answer like the service, on 127.0.0.1 (port 0 everywhere), for client tests.

- :class:`FakeService`: a scriptable DataConnectorService and AuthorizationService, a handler
  of the emulator's own fronts: :func:`serve` puts it behind the emulator's gRPC front and REST
  front (both dispatch on the rows of ``agentspace_grpc._wire``), so both wires reach the same
  in-memory state and record what they saw.
- :class:`TokenEndpoint`: an OAuth 2.0 token endpoint for google-auth user credentials; the
  tokens it mints are known to a FakeService as that user's identity.

Servers that break the wire itself are in :mod:`tests._raw`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import google.auth.aio.credentials
import google.auth.exceptions
import google.oauth2.credentials
import grpc
import grpc.aio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import duration_pb2, message
from google.rpc import error_details_pb2, status_pb2

from agentspace_grpc import _proto
from agentspace_grpc._wire import ROWS
from agentspace_grpc.emulator._call import Call
from agentspace_grpc.emulator._errors import ServiceError
from agentspace_grpc.emulator._grpc import add_api
from agentspace_grpc.emulator._rest import api_application
from tests._tls import TlsMaterial

__all__ = [
    "AUTHORIZATION",
    "CONNECTOR",
    "AioUserCredentials",
    "FakeService",
    "RpcFault",
    "Seen",
    "Servers",
    "ServersThread",
    "TokenEndpoint",
    "error_info",
    "retry_info",
    "serve",
    "service_account_file",
]

CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"
AUTHORIZATION = "projects/demo/locations/global/authorizations/default_authorization"
DOMAIN = "discoveryengine.googleapis.com"


# --------------------------------------------------------------------------------------
# Errors a handler can raise
# --------------------------------------------------------------------------------------


class RpcFault(ServiceError):
    """Raised by a handler: both fronts answer with this ``google.rpc.Status``."""

    def __init__(self, code: grpc.StatusCode, text: str, *details: message.Message) -> None:
        super().__init__(code.value[0], text)
        self.status = status_pb2.Status(code=code.value[0], message=text)
        for detail in details:
            self.status.details.add().Pack(detail)

    def to_status(self) -> status_pb2.Status:
        return self.status


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    """An ErrorInfo detail in the service's domain."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """A RetryInfo detail."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One call as the server saw it."""

    wire: Literal["grpc", "rest"]
    method: str
    request: Any
    headers: dict[str, str]
    identity: str | None


Handler = Callable[[Seen], Awaitable[message.Message]]
RestHook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


@dataclass
class FakeService:
    """An in-memory DataConnectorService and AuthorizationService shared by both fronts.

    Identity comes from the bearer token: a token in ``users`` maps to that user, any other
    token is its own identity unless ``strict`` is set; a missing token, or one in
    ``rejected``, is UNAUTHENTICATED. By default AcquireAccessToken answers
    ``tp:<identity>:<n>`` and AcquireUserAuthorization ``ua:<identity>:<n>``; :meth:`on`
    replaces a method's behaviour and :meth:`fail_next` queues faults for the next calls;
    :meth:`wait_cancelled` waits for calls cancelled on the server side.
    """

    users: dict[str, str] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    strict: bool = False
    seen: list[Seen] = field(default_factory=list)
    started: int = 0
    cancelled: int = 0
    handlers: dict[str, Handler] = field(default_factory=dict)
    faults: list[RpcFault] = field(default_factory=list)
    #: Called with the aiohttp request before the REST front; a response it returns is sent as
    #: is (raw answers: HTML pages, resets, truncated bodies; see :mod:`tests._raw`).
    rest_hook: RestHook | None = None
    _cancellation: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def on(self, method: str, handler: Handler) -> None:
        """Replace the behaviour of one RPC (method name as in the proto)."""
        assert method in ROWS, method
        self.handlers[method] = handler

    def fail_next(self, *faults: RpcFault) -> None:
        """The next calls (any method) raise these faults, in order."""
        self.faults.extend(faults)

    def calls(self, method: str | None = None) -> list[Seen]:
        """Calls seen, optionally of one method."""
        return [s for s in self.seen if method is None or s.method == method]

    async def wait_cancelled(self, count: int = 1) -> None:
        """Until ``count`` calls in all were cancelled on the server side."""
        while self.cancelled < count:
            await self._cancellation.wait()
            self._cancellation.clear()

    def _identity(self, headers: Mapping[str, str]) -> str:
        value = headers.get("authorization")
        if not value or not value.startswith("Bearer "):
            raise RpcFault(grpc.StatusCode.UNAUTHENTICATED, "the request has no bearer token")
        token = value[len("Bearer ") :]
        if token in self.rejected:
            raise RpcFault(grpc.StatusCode.UNAUTHENTICATED, "the access token is not valid")
        if token in self.users:
            return self.users[token]
        if self.strict:
            raise RpcFault(grpc.StatusCode.UNAUTHENTICATED, "unknown access token")
        return token

    async def handle(self, call: Call) -> message.Message:
        """One call from either front: record it, authenticate, then the fault queue or the
        handler."""
        headers = {key.lower(): value for key, value in call.headers.items()}
        seen = Seen(call.wire, call.row.name, call.request, headers, None)
        self.started += 1
        self.seen.append(seen)
        try:
            seen.identity = self._identity(headers)
            if self.faults:
                raise self.faults.pop(0)
            handler = self.handlers.get(seen.method)
            if handler is not None:
                return await handler(seen)
            return self._default(seen)
        except asyncio.CancelledError:
            self.cancelled += 1
            self._cancellation.set()
            raise

    def _default(self, seen: Seen) -> message.Message:
        request = seen.request
        if seen.method == "AcquireAccessToken":
            count = len(self.calls("AcquireAccessToken"))
            return _proto.AcquireAccessTokenResponse(
                access_token=f"tp:{seen.identity}:{count}",
                refresh_token_info=_proto.RefreshTokenInfo(
                    name=request.name, scopes=[request.scope or "default"]
                ),
            )
        if seen.method == "AcquireUserAuthorization":
            count = len(self.calls("AcquireUserAuthorization"))
            answer = _proto.AcquireUserAuthorizationResponse(
                access_token=f"ua:{seen.identity}:{count}"
            )
            answer.refresh_token_info.scopes.append("default")
            return answer
        if seen.method == "StoreUserAuthorization":
            return _proto.StoreUserAuthorizationResponse()
        if seen.method == "AcquireAndStoreRefreshToken":
            return _proto.AcquireAndStoreRefreshTokenResponse(
                additional_oauth_responses=[
                    _proto.AdditionalOAuthResponse(key="instance_url", string_value="https://x"),
                    _proto.AdditionalOAuthResponse(key="n_scopes", int_value=len(request.scopes)),
                    _proto.AdditionalOAuthResponse(key="stored", bool_value=True),
                ]
            )
        return _proto.CheckRefreshTokenResponse(
            refresh_token_info=_proto.RefreshTokenInfo(name=request.name, scopes=["read"])
        )


def _rest_app(service: FakeService) -> web.Application:
    """The emulator's REST front on ``service``, behind its ``rest_hook``."""

    @web.middleware
    async def hook(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if service.rest_hook is not None:
            answer = await service.rest_hook(request)
            if answer is not None:
                return answer
        return await handler(request)

    app = api_application(service)
    app.middlewares.append(hook)
    return app


@dataclass
class Servers:
    """The two fronts of one FakeService."""

    service: FakeService
    grpc_port: int
    rest_port: int
    tls: bool

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:port`` of the gRPC front."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST front."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.rest_port}"

    def client_kwargs(self, transport: str) -> dict[str, Any]:
        """Keyword arguments of a DataConnectorClient pointed at these fronts."""
        return {
            "transport": transport,
            "endpoint": self.grpc_target,
            "rest_endpoint": self.rest_url,
        }


@contextlib.asynccontextmanager
async def serve(
    service: FakeService | None = None,
    *,
    tls: TlsMaterial | None = None,
    rest_alpn: tuple[str, ...] = (),
) -> AsyncIterator[Servers]:
    """Run ``service`` on a gRPC port and a REST port (TLS on both when ``tls`` is given)."""
    service = service or FakeService()
    server = grpc.aio.server()
    add_api(server, service)
    if tls is None:
        grpc_port = server.add_insecure_port("127.0.0.1:0")
    else:
        grpc_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([tls.grpc_server_credentials()])
        )
    await server.start()
    runner = web.AppRunner(
        _rest_app(service), handler_cancellation=True, shutdown_timeout=0.2, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        "127.0.0.1",
        0,
        ssl_context=tls.server_context(rest_alpn) if tls is not None else None,
    )
    await site.start()
    rest_port = _bound_port(runner)
    try:
        yield Servers(service, grpc_port, rest_port, tls is not None)
    finally:
        await runner.cleanup()
        await server.stop(None)


class ServersThread:
    """:func:`serve` on its own event loop in a background thread.

    For tests that run ``asyncio.run`` themselves: ``with ServersThread() as servers:``.
    """

    def __init__(self, service: FakeService | None = None) -> None:
        self.service = service or FakeService()
        self._ready = threading.Event()
        self._servers: Servers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self.service) as servers:
            self._servers = servers
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Servers:
        self._thread.start()
        if not self._ready.wait(10) or self._servers is None:
            raise RuntimeError("the test servers did not start")
        return self._servers

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _bound_port(runner: web.AppRunner) -> int:
    (address,) = runner.addresses[:1]
    return int(address[1])


# --------------------------------------------------------------------------------------
# OAuth 2.0 token endpoint (for google-auth user credentials)
# --------------------------------------------------------------------------------------

CLIENT_ID = "test-client-id"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_SECRET = "test-client-secret-CANARY"


class TokenEndpoint:
    """A token endpoint; minted tokens become known users of ``service``.

    It answers the refresh-token grant (user credentials) and the JWT-bearer grant (service
    account keys: the user is the key's email, and the assertion's claims are kept).

    Attributes:
        refreshes: Token requests answered so far.
        assertions: The claims of each JWT-bearer assertion received.
        delay: Seconds to wait before answering (a slow identity provider).
        status: HTTP status to answer with (503 makes google-auth fail the refresh).
        body: A JSON document to answer with instead of a minted token.
        echo: Answer HTTP 400 with the request's form as plain text (a proxy that echoes).
    """

    def __init__(self, service: FakeService, *, delay: float = 0.0) -> None:
        self.service = service
        self.delay = delay
        self.status = 200
        self.body: dict[str, object] | None = None  # answered as is when set
        self.echo = False
        self.refreshes = 0
        self.minted: list[str] = []
        self.assertions: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> TokenEndpoint:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{_bound_port(self._runner)}/token"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        if self.echo:
            return web.Response(status=400, text=f"bad request: {await request.text()}")
        form = await request.post()
        self.refreshes += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.status)
        if self.body is not None:
            return web.json_response(self.body)
        refresh_token = str(form.get("refresh_token", ""))
        if form.get("grant_type") == JWT_BEARER:
            payload = str(form.get("assertion", "")).split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            self.assertions.append(claims)
            user = claims["iss"]
        elif form.get("grant_type") != "refresh_token" or not refresh_token.startswith("rt-"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        else:
            user = refresh_token[len("rt-") :]
        token = f"user-token-{user}-{self.refreshes}"
        self.minted.append(token)
        self.service.users[token] = user
        body = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        return web.Response(body=json.dumps(body), content_type="application/json")

    def aio_credentials(self, user: str) -> AioUserCredentials:
        """google.auth.aio credentials for ``user`` that refresh here."""
        return AioUserCredentials(self.url, f"rt-{user}")

    def credentials(
        self, user: str, *, token: str | None = None
    ) -> google.oauth2.credentials.Credentials:
        """User credentials for ``user`` that refresh here (``token``: a current token)."""
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=token,
            refresh_token=f"rt-{user}",
            token_uri=self.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )


def service_account_file(path: Path, token_uri: str, *, email: str = "robot@demo.test") -> Path:
    """A service-account key file (a fresh RSA key) whose tokens come from ``token_uri``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    info = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


class AioUserCredentials(google.auth.aio.credentials.Credentials):  # type: ignore[misc]
    """google.auth.aio credentials refreshed with the refresh-token grant, over the request given.

    google-auth ships no refreshable aio credentials for users yet; this is the smallest one.

    Attributes:
        threads: The thread each refresh ran on.
    """

    def __init__(
        self,
        token_uri: str,
        refresh_token: str,
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
    ) -> None:
        super().__init__()
        self.expiry: datetime.datetime | None = None
        self.threads: list[int] = []
        self._token_uri = token_uri
        self._refresh_token = refresh_token
        self._client = (client_id, client_secret)

    async def refresh(self, request: Any) -> None:
        self.threads.append(threading.get_ident())
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
            "client_id": self._client[0],
            "client_secret": self._client[1],
        }
        response = await request(
            self._token_uri,
            method="POST",
            body=urlencode(form).encode("ascii"),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        answer = json.loads(await response.read())
        if response.status_code != 200:
            raise google.auth.exceptions.RefreshError(f"token endpoint: {answer.get('error')}")
        self.token = answer["access_token"]
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = now + datetime.timedelta(seconds=answer["expires_in"])
