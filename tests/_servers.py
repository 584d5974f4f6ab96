"""Real servers on 127.0.0.1 for client tests (port 0 everywhere).

- :class:`FakeService`: a scriptable DataConnectorService and AuthorizationService; :func:`serve`
  puts it behind a
  grpc.aio server and an aiohttp REST front, both dispatching on the rows of
  ``agentspace_grpc._wire`` (so both wires reach the same in-memory state and record what they
  saw).
- :class:`TcpProxy`: a TCP proxy that forwards, refuses, resets (on accept or on demand),
  stalls, or drops idle connections.
- :class:`ConnectProxy`: an HTTP CONNECT proxy (what HTTPS_PROXY points at), mapping any
  requested host to a local port and recording the targets asked for.
- :class:`TokenEndpoint`: an OAuth 2.0 token endpoint for google-auth user credentials; the
  tokens it mints are known to a FakeService as that user's identity.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import socket
import struct
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
from agentspace_grpc._wire import (
    ROWS,
    MethodNotAllowed,
    RouteNotFound,
    Row,
    TranscodingError,
    http_status_for_code,
    match,
    message_to_json,
    status_to_json,
)
from tests._tls import TlsMaterial

__all__ = [
    "AUTHORIZATION",
    "CONNECTOR",
    "AioUserCredentials",
    "ConnectProxy",
    "FakeService",
    "RpcFault",
    "Seen",
    "Servers",
    "ServersThread",
    "TcpProxy",
    "TokenEndpoint",
    "closed_port",
    "error_info",
    "reset_connection",
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


class RpcFault(Exception):
    """Raised by a handler: both fronts answer with this ``google.rpc.Status``."""

    def __init__(self, code: grpc.StatusCode, text: str, *details: message.Message) -> None:
        super().__init__(text)
        self.status = status_pb2.Status(code=code.value[0], message=text)
        for detail in details:
            self.status.details.add().Pack(detail)


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


@dataclass
class FakeService:
    """An in-memory DataConnectorService and AuthorizationService shared by both fronts.

    Identity comes from the bearer token: a token in ``users`` maps to that user, any other
    token is its own identity unless ``strict`` is set; a missing token, or one in
    ``rejected``, is UNAUTHENTICATED. By default AcquireAccessToken answers
    ``tp:<identity>:<n>`` and AcquireUserAuthorization ``ua:<identity>:<n>``; :meth:`on`
    replaces a method's behaviour and :meth:`fail_next` queues faults for the next calls.
    """

    users: dict[str, str] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    strict: bool = False
    seen: list[Seen] = field(default_factory=list)
    started: int = 0
    cancelled: int = 0
    handlers: dict[str, Handler] = field(default_factory=dict)
    faults: list[RpcFault] = field(default_factory=list)
    #: Called with the aiohttp request before routing; a response it returns is sent as is.
    rest_hook: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None

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

    async def dispatch(
        self, wire: Literal["grpc", "rest"], method: str, request: Any, headers: dict[str, str]
    ) -> message.Message:
        """Run one call: record it, authenticate, then the fault queue or the handler."""
        self.started += 1
        seen = Seen(wire, method, request, headers, None)
        self.seen.append(seen)
        try:
            seen.identity = self._identity(headers)
            if self.faults:
                raise self.faults.pop(0)
            handler = self.handlers.get(method)
            if handler is not None:
                return await handler(seen)
            return self._default(seen)
        except asyncio.CancelledError:
            self.cancelled += 1
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


def _grpc_handler(service: FakeService, row: Row) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(request: Any, context: Any) -> message.Message:
        headers = {
            key: value if isinstance(value, str) else value.decode("latin-1")
            for key, value in context.invocation_metadata() or ()
        }
        try:
            return await service.dispatch("grpc", row.name, request, headers)
        except RpcFault as fault:
            await context.abort(
                grpc.StatusCode(_code(fault.status.code)),
                fault.status.message,
                trailing_metadata=(("grpc-status-details-bin", fault.status.SerializeToString()),),
            )
            raise AssertionError("unreachable") from None

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=row.request_class.FromString,
        response_serializer=row.response_class.SerializeToString,
    )


def _add_grpc_front(service: FakeService, server: grpc.aio.Server) -> None:
    for name in {row.service for row in ROWS.values()}:
        handlers = {r.name: _grpc_handler(service, r) for r in ROWS.values() if r.service == name}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


def _json_error(status: status_pb2.Status) -> web.Response:
    return web.Response(
        status=http_status_for_code(status.code),
        body=status_to_json(status),
        content_type="application/json",
    )


def _rest_app(service: FakeService) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if service.rest_hook is not None:
            answer = await service.rest_hook(request)
            if answer is not None:
                return answer
        raw_path = request.raw_path.split("?", 1)[0]
        try:
            row, value = match(request.method, raw_path)
        except RouteNotFound as exc:
            return _json_error(status_pb2.Status(code=5, message=str(exc)))
        except MethodNotAllowed as exc:
            return _json_error(status_pb2.Status(code=12, message=str(exc)))
        body = await request.read()
        try:
            msg = row.from_http(value, request.query.keys(), body)
        except TranscodingError as exc:
            return _json_error(status_pb2.Status(code=3, message=str(exc)))
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            answer_message = await service.dispatch("rest", row.name, msg, headers)
        except RpcFault as fault:
            return _json_error(fault.status)
        return web.Response(body=message_to_json(answer_message), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
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
    _add_grpc_front(service, server)
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
# Sockets
# --------------------------------------------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def reset_connection(request: web.Request) -> None:
    """From an aiohttp handler: reset the client's connection (RST) without answering."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


ProxyMode = Literal["forward", "reset", "stall"]


class TcpProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``127.0.0.1:target_port``.

    ``mode`` applies to new connections: "forward" (default), "reset" (RST right after
    accept) or "stall" (accept, read and never answer). :meth:`reset_all` resets every open
    connection now (a reset mid-call); :meth:`refuse` stops listening (connection refused)
    and :meth:`listen` resumes on the same port; ``idle_timeout`` resets connections that
    carried no byte for that many seconds (a NAT or proxy idle drop); :meth:`pause` holds
    every byte of the open connections (a partition that keeps the TCP connections up) until
    :meth:`resume`.

    Use as ``async with TcpProxy(port) as proxy:``; ``proxy.address`` is ``127.0.0.1:PORT``.
    """

    def __init__(self, target_port: int, *, idle_timeout: float | None = None) -> None:
        self.target_port = target_port
        self.idle_timeout = idle_timeout
        self.mode: ProxyMode = "forward"
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._closed_servers: list[asyncio.Server] = []  # refused, awaited in aclose()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    async def __aenter__(self) -> TcpProxy:
        await self.listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def listen(self) -> None:
        """Listen (again) on ``self.port`` (0 the first time)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones stay.

        ``close()`` closes the listening socket at once. Not ``wait_closed()``: since Python
        3.12 it also waits for the open connections, which are meant to stay.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self._closed_servers.append(server)

    def pause(self) -> None:
        """Hold the bytes of every forwarded connection (they stay open) until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again what :meth:`pause` held, in order."""
        self._flowing.set()

    def reset_all(self) -> int:
        """Reset every open connection (both sides) now; returns how many."""
        writers = list(self._writers)
        for writer in writers:
            _reset(writer)
        self._writers.clear()
        return len(writers)

    async def aclose(self) -> None:
        """Stop listening, reset every connection and stop the pumps."""
        await self.refuse()
        self.reset_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        servers, self._closed_servers = self._closed_servers, []
        for server in servers:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, self.mode))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: ProxyMode
    ) -> None:
        if mode == "reset":
            _reset(writer)
            return
        self._writers.add(writer)
        if mode == "stall":
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._writers.discard(writer)
            _reset(writer)
            return
        self._writers.add(up_writer)
        loop = asyncio.get_running_loop()
        activity = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._flowing.wait()
                    activity[0] = loop.time()
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                # One side ended: end both, abruptly (the peer sees a reset or EOF).
                for end in (writer, up_writer):
                    self._writers.discard(end)
                    end.transport.abort()

        pumps = [
            loop.create_task(pump(reader, up_writer)),
            loop.create_task(pump(up_reader, writer)),
        ]
        try:
            while not all(p.done() for p in pumps):
                if self.idle_timeout is None:
                    await asyncio.wait(pumps)
                    break
                await asyncio.wait(pumps, timeout=self.idle_timeout / 4)
                if loop.time() - activity[0] > self.idle_timeout:
                    for end in (writer, up_writer):
                        self._writers.discard(end)
                        _reset(end)
        finally:
            for pump_task in pumps:
                pump_task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1: every tunnel goes to ``127.0.0.1:target_port``.

    ``targets`` records the ``host:port`` each CONNECT asked for, so a test can tell which
    connections went through the proxy.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.targets: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            # Since Python 3.12 this waits for the connections too: the tunnels end first.
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.transport.abort()
            return
        verb, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if verb != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        writer.transport.abort()


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
    """

    def __init__(self, service: FakeService, *, delay: float = 0.0) -> None:
        self.service = service
        self.delay = delay
        self.status = 200
        self.body: dict[str, object] | None = None  # answered as is when set
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
