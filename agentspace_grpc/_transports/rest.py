"""The REST wire over aiohttp, with the HTTP request derived from the row's HTTP rule.

One ``aiohttp.ClientSession`` per event loop (this transport is made per loop). Each call is
``Row.to_http`` (method, encoded path, JSON body), one request, and on success the answer read
by ``Row.from_json``, or ``status_from_http`` otherwise, so REST errors are classified by the
JSON ``error.status`` first and by the HTTP status only when the body is not a Google error.
aiohttp's exceptions are translated in :func:`_translate`. Answers are asked for uncompressed
(``accept-encoding: identity``) and never decompressed, so the size limit bounds the memory an
answer takes: a compressed one is undecodable, never inflated.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import aiohttp
from google.protobuf import message
from google.rpc import status_pb2
from yarl import URL

from agentspace_grpc._errors import (
    Cancelled,
    ConnectFailed,
    ConnectionBroken,
    DataConnectorError,
    DeadlineExceeded,
    ResourceExhausted,
    UndecodableAnswer,
    first_line,
    from_status,
)
from agentspace_grpc._headers import Headers
from agentspace_grpc._transports.base import Endpoint, Transport
from agentspace_grpc._wire import Row, code_for_http_status, status_from_http

__all__ = ["MAX_RESPONSE_BYTES", "RestTransport"]

#: The largest response body read (gRPC's default receive limit).
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024

_IDENTITY: Final = (("accept-encoding", "identity"),)
_JSON_BODY: Final = (*_IDENTITY, ("content-type", "application/json"))
_CACHE_SIZE: Final = 1024

_HttpForm = tuple[str, URL, bytes | None]  # method, URL, body


class RestTransport(Transport):
    """REST over aiohttp; create and use it on one event loop.

    Args:
        ssl_context: The TLS context for https endpoints (None: the system's CAs).
    """

    kind = "rest"

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        # Transcoded requests of the RPCs that read a grant (they repeat), by what they depend
        # on (row, base URL, the request's bytes): a repeat costs a dict lookup.
        self._prepared: dict[tuple[Row, str, bytes], _HttpForm] = {}
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise Cancelled("the client is closed", transport="rest")
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                # Proxies are chosen by the client per endpoint (loopback is never proxied).
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return session

    async def call(
        self,
        row: Row,
        endpoint: Endpoint,
        request: message.Message,
        headers: Headers,
        time_left: float,
    ) -> Any:
        """One HTTP request for ``row``'s RPC; a 2xx answer read by ``row.from_json``."""
        if row.reads_grant:
            key = (row, endpoint.rest_base, request.SerializeToString())
            form = self._prepared.get(key)
            if form is None:
                form = self._prepare(row, endpoint.rest_base, request)
                if len(self._prepared) >= _CACHE_SIZE:
                    self._prepared.clear()
                self._prepared[key] = form
        else:  # a store: its one-time authorization code is never kept
            form = self._prepare(row, endpoint.rest_base, request)
        method, url, body = form
        headers = (*headers, *(_IDENTITY if body is None else _JSON_BODY))
        session = self._session or self._get_session()
        # aiohttp's exceptions keep the request's headers (the end user's authorization among
        # them) in their attributes and reprs, so none may stay attached to ours, not even as
        # __context__: the translated error is raised after the except block has let go of it.
        failure: DataConnectorError | None = None
        answer = b""
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=time_left),
                proxy=endpoint.rest_proxy,
                allow_redirects=False,
            ) as response:
                status = response.status
                content_type = response.headers.get("Content-Type")
                length = response.content_length
                if length is not None and length <= MAX_RESPONSE_BYTES:
                    answer, oversize = await response.read(), False
                else:
                    answer, oversize = await self._read(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = _translate(exc, time_left)
        if failure is not None:
            raise failure
        name: str = getattr(request, row.field)
        if 200 <= status < 300 and not oversize:
            try:
                return row.from_json(answer, name)
            except (ValueError, TypeError) as exc:
                kind = content_type or "no content type"
                encoding = response.headers.get("Content-Encoding")
                if encoding:  # asked for identity: a compressed answer is not inflated
                    kind += f", {encoding[:40]}-encoded"
                raise UndecodableAnswer(
                    f"the HTTP {status} answer is not a valid {row.response_class.__name__} JSON "
                    f"document ({len(answer)} bytes of {kind}): {first_line(exc)}",
                    transport="rest",
                    http_status=status,
                ) from exc
        if oversize:
            limit = f"the {MAX_RESPONSE_BYTES}-byte limit"
            if 200 <= status < 300:
                raise ResourceExhausted(
                    f"the HTTP {status} answer is larger than {limit}",
                    transport="rest",
                    http_status=status,
                )
            raise from_status(
                status_pb2.Status(
                    code=code_for_http_status(status),
                    message=f"HTTP {status} with a {content_type or 'untyped'} body larger "
                    f"than {limit}",
                ),
                transport="rest",
                http_status=status,
                from_service=False,
            )
        # A proxy's or gateway's page (not a Google error): whether the service saw the request
        # is unknown, so its UNAVAILABLE is a ConnectionBroken.
        raise from_status(
            status_from_http(status, answer, content_type),
            transport="rest",
            http_status=status,
            connector=name if row.reads_grant else None,
            from_service=_looks_like_google_error(content_type, answer),
        )

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The body, or (b"", True) when it is (or says it is) larger than the limit."""
        if response.content_length is not None:  # call() reads one declared within the limit
            return b"", True
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                return b"", True
            chunks.append(chunk)
        return b"".join(chunks), False

    @staticmethod
    def _prepare(row: Row, base: str, request: message.Message) -> _HttpForm:
        """Method, URL and body of a request (kept: see _prepared); the client checked the name
        against the row's pattern already."""
        method, path, body = row.to_http(request)
        return method, URL(base + path, encoded=True), body

    async def aclose(self) -> None:
        """Close the session; requests in flight fail and end promptly."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _looks_like_google_error(content_type: str | None, body: bytes) -> bool:
    """True when the body is JSON that can be Google's error envelope (not a proxy's page)."""
    if content_type is None or "json" not in content_type.lower():
        return False
    return b'"error"' in body


def _translate(exc: BaseException, time_left: float) -> DataConnectorError:
    """Translate aiohttp's and the socket layer's exceptions; the one place that does it."""
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(
            f"no answer within the {time_left:.3g} s left of the deadline", transport="rest"
        )
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        # The connection (TCP, TLS or the proxy's CONNECT) was never established.
        return ConnectFailed(f"cannot connect: {first_line(exc)}", transport="rest")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectionBroken(f"the answer was cut off: {first_line(exc)}", transport="rest")
    return ConnectionBroken(
        f"the connection failed during the call: {first_line(exc)}", transport="rest"
    )
