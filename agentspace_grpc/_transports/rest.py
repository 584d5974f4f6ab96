"""The REST wire over aiohttp, with the HTTP request derived from ``google.api.http``.

One ``aiohttp.ClientSession`` per event loop (this transport is made per loop). Each call is
``Route.to_http`` (method, encoded path, query, JSON body), one request, and on success the
answer decoded (AcquireAccessToken's straight into an ``AccessToken``, the others with
``message_from_json``), or ``status_from_http`` otherwise, so REST errors are classified by
the JSON ``error.status`` first and by the HTTP status only when the body is not a Google
error. aiohttp's exceptions are translated in :func:`_translate`.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar, cast

import aiohttp
from google.protobuf import message
from google.rpc import status_pb2
from yarl import URL

from agentspace_grpc import _proto
from agentspace_grpc._errors import (
    Cancelled,
    DataConnectorError,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
    UsageError,
    from_status,
    wire_failure,
)
from agentspace_grpc._headers import Headers
from agentspace_grpc._token import AccessToken, token_from_json
from agentspace_grpc._transcode import ROUTES, Route, TranscodingError, message_from_json
from agentspace_grpc._transcode import status_from_http as _status_from_http
from agentspace_grpc._transports.base import Endpoint, Transport

__all__ = ["MAX_RESPONSE_BYTES", "RestTransport"]

#: The largest response body read (gRPC's default receive limit).
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024

_M = TypeVar("_M", bound=message.Message)
_T = TypeVar("_T")

_ACQUIRE: Final = ROUTES["AcquireAccessToken"]
_STORE: Final = ROUTES["AcquireAndStoreRefreshToken"]
_CHECK: Final = ROUTES["CheckRefreshToken"]
_JSON_BODY: Final = (("content-type", "application/json"),)
_CACHE_SIZE: Final = 1024

_HttpForm = tuple[str, URL, bytes | None]  # method, URL, body


class RestTransport(Transport):
    """REST over aiohttp; create and use it on one event loop.

    Args:
        ssl_context: The TLS context for https endpoints (None: the system's CAs).
        max_response_bytes: Larger responses fail with :class:`ResourceExhausted`.
    """

    kind = "rest"

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._max = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        # Transcoded acquire requests by id(request): the client builds one request per name,
        # scope and action and reuses it, so a repeated acquire costs a dict lookup instead of
        # a transcoding. An entry holds its request, so the id is not reused while it exists.
        self._prepared: dict[int, tuple[message.Message, str, _HttpForm]] = {}
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise wire_failure(
                    Cancelled, "the client is closed", transport="rest", failure=None
                )
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                # Proxies are chosen by the client per endpoint (loopback is never proxied).
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return session

    def acquire_access_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAccessTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, AccessToken]:
        """AcquireAccessToken over REST."""
        return self._call(
            _ACQUIRE,
            token_from_json,
            _proto.AcquireAccessTokenResponse,
            endpoint,
            request,
            headers,
            time_left,
            connector=request.name,
        )

    def acquire_and_store_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAndStoreRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, _proto.AcquireAndStoreRefreshTokenResponse]:
        """AcquireAndStoreRefreshToken over REST."""
        return self._call(
            _STORE,
            _STORE_ANSWER,
            _proto.AcquireAndStoreRefreshTokenResponse,
            endpoint,
            request,
            headers,
            time_left,
            connector=None,
        )

    def check_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.CheckRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, _proto.CheckRefreshTokenResponse]:
        """CheckRefreshToken over REST."""
        return self._call(
            _CHECK,
            _CHECK_ANSWER,
            _proto.CheckRefreshTokenResponse,
            endpoint,
            request,
            headers,
            time_left,
            connector=request.name,
        )

    async def _call(
        self,
        route: Route,
        decode: Callable[[bytes, str], _T],
        response_class: type[message.Message],
        endpoint: Endpoint,
        request: message.Message,
        headers: Headers,
        time_left: float,
        *,
        connector: str | None,
    ) -> _T:
        base = endpoint.rest_base
        cached = self._prepared.get(id(request))
        if cached is not None and cached[0] is request and cached[1] == base:
            method, url, body = cached[2]
        else:
            method, url, body = form = self._prepare(route, base, request)
            if route is _ACQUIRE:
                if len(self._prepared) >= _CACHE_SIZE:
                    self._prepared.clear()
                self._prepared[id(request)] = (request, base, form)
        if body is not None:
            headers = (*headers, *_JSON_BODY)
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
                if length is not None and length <= self._max:
                    answer, oversize = await response.read(), False
                else:
                    answer, oversize = await self._read(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = _translate(exc, time_left)
        if failure is not None:
            raise failure
        if 200 <= status < 300 and not oversize:
            try:
                return decode(answer, connector or "")
            except (ValueError, TypeError) as exc:
                raise wire_failure(
                    Internal,
                    f"the HTTP {status} answer is not a valid {response_class.__name__} JSON "
                    f"document ({len(answer)} bytes of {content_type or 'no content type'}): "
                    f"{_first_line(exc)}",
                    transport="rest",
                    failure=None,
                    http_status=status,
                ) from exc
        if oversize:
            limit = f"the {self._max}-byte limit"
            if 200 <= status < 300:
                raise wire_failure(
                    ResourceExhausted,
                    f"the HTTP {status} answer is larger than {limit}",
                    transport="rest",
                    failure=None,
                    http_status=status,
                )
            classified = _status_from_http(status, b"", content_type).code
            raise from_status(
                status_pb2.Status(
                    code=classified,
                    message=f"HTTP {status} with a {content_type or 'untyped'} body larger "
                    f"than {limit}",
                ),
                transport="rest",
                http_status=status,
                from_service=False,
                failure="io",
            )
        google_error = _looks_like_google_error(content_type, answer)
        described = _status_from_http(status, answer, content_type)
        # A proxy's or gateway's page (not a Google error): whether the service saw the request
        # is unknown, which the retry policy must know.
        raise from_status(
            described,
            transport="rest",
            http_status=status,
            connector=connector,
            from_service=google_error,
            failure=None if google_error else "io",
        )

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The body, or (b"", True) when it is larger than the limit."""
        length = response.content_length
        if length is not None:
            if length > self._max:
                return b"", True
            return await response.read(), False
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self._max:
                return b"", True
            chunks.append(chunk)
        return b"".join(chunks), False

    @staticmethod
    def _prepare(route: Route, base: str, request: message.Message) -> _HttpForm:
        """Method, URL and body of a request (an acquire request's are kept: see _prepared)."""
        try:
            http = route.to_http(request)
        except TranscodingError as exc:
            raise UsageError(str(exc)) from exc
        url = URL(base + http.path, encoded=True)
        if http.query:
            url = url.with_query(list(http.query))
        return http.method, url, http.body

    async def aclose(self) -> None:
        """Close the session; requests in flight fail and end promptly."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _message_from_json(cls: type[_M], body: bytes, connector: str) -> _M:
    return cast(_M, message_from_json(body, cls, ignore_unknown=True))


# The answers' decoders, as _call takes them: (body, connector) -> result.
_STORE_ANSWER: Final = functools.partial(
    _message_from_json, _proto.AcquireAndStoreRefreshTokenResponse
)
_CHECK_ANSWER: Final = functools.partial(_message_from_json, _proto.CheckRefreshTokenResponse)


def _looks_like_google_error(content_type: str | None, body: bytes) -> bool:
    """True when the body is JSON that can be Google's error envelope (not a proxy's page)."""
    if content_type is None or "json" not in content_type.lower():
        return False
    return b'"error"' in body


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _translate(exc: BaseException, time_left: float) -> DataConnectorError:
    """Translate aiohttp's and the socket layer's exceptions; the one place that does it."""
    if isinstance(exc, TimeoutError):
        return wire_failure(
            DeadlineExceeded,
            f"no answer within the {time_left:.3g} s left of the deadline",
            transport="rest",
            failure=None,
        )
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        # The connection (TCP, TLS or the proxy's CONNECT) was never established.
        return wire_failure(
            Unavailable, f"cannot connect: {_first_line(exc)}", transport="rest", failure="connect"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return wire_failure(
            Unavailable,
            f"the answer was cut off: {_first_line(exc)}",
            transport="rest",
            failure="io",
        )
    return wire_failure(
        Unavailable,
        f"the connection failed during the call: {_first_line(exc)}",
        transport="rest",
        failure="io",
    )
