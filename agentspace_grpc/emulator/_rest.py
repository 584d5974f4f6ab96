"""The emulator's HTTP port: the REST API front, and what every front on the port shares.

- ``/v1alpha/...``: DataConnectorService and AuthorizationService over REST/JSON (routes from
  ``google.api.http``), Google-shaped JSON errors: :class:`ApiFront` hands each call to a
  :class:`~._call.Handler`; :func:`api_application` serves it (alone, for test and benchmark
  handlers; the emulator adds its other fronts to the same application).
- The emulator's own endpoints (identity, consent, stats, health): :mod:`._emulator_front`.
- ``/provider/...``: the built-in provider: :mod:`._provider_front`.

Whatever a request holds, the answer is never a bare 500: one middleware gives every error the
shape of its endpoint, Google's JSON error on the API and emulator routes and RFC 6749's
``{"error", "error_description"}`` on ``/oauth2/`` and ``/provider/`` (aiohttp's own 404, 405
and 413 included); an unexpected failure is INTERNAL / ``server_error`` with an incident id.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web
from google.protobuf import message
from google.rpc import code_pb2

from agentspace_grpc._wire import (
    MethodNotAllowed,
    RouteNotFound,
    TranscodingError,
    code_for_http_status,
    http_status_for_code,
    match,
    message_to_json,
    status_to_json,
)
from agentspace_grpc.emulator._call import Call, Handler
from agentspace_grpc.emulator._errors import OAuthError, ServiceError, internal

log = logging.getLogger("agentspace_grpc.emulator")
_OAUTH_PREFIXES: Final = ("/oauth2/", "/provider/")
_KEPT_HEADERS: Final = ("Allow", "WWW-Authenticate", "Retry-After")


def error_response(exc: ServiceError) -> web.Response:
    """Google's JSON error for ``exc`` (a challenge header with UNAUTHENTICATED)."""
    headers = {}
    if exc.code == code_pb2.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="agentspace-grpc-emulator"'
    return web.Response(
        status=http_status_for_code(exc.code),
        body=status_to_json(exc.to_status()),
        content_type="application/json",
        headers=headers,
    )


def _shaped_error(
    path: str, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the shape of the endpoint at ``path`` (OAuth or Google)."""
    if path.startswith(_OAUTH_PREFIXES):
        error = "server_error" if status >= 500 else "invalid_request"
        return oauth_error(OAuthError(error, message, status, headers))
    code = code_for_http_status(status)
    if code == code_pb2.UNKNOWN:
        code = code_pb2.INVALID_ARGUMENT if status < 500 else code_pb2.INTERNAL
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": code_pb2.Code.Name(code),
            "details": [],
        }
    }
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Shapes aiohttp's own errors and unexpected failures for the endpoint they hit."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        return _shaped_error(request.path, exc.status, exc.text or exc.reason, headers)
    except Exception:
        incident = secrets.token_hex(4)
        log.exception("internal error on the HTTP port (incident %s)", incident)
        return _shaped_error(request.path, 500, internal(incident).message)


def oauth_error(exc: OAuthError) -> web.Response:
    """RFC 6749's JSON error answer for ``exc``."""
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers={"Cache-Control": "no-store", **exc.headers},
    )


async def read_form(request: web.Request) -> dict[str, str]:
    """The fields of an OAuth token request (RFC 6749: UTF-8 form encoding, each field once).

    Raises:
        OAuthError: ``invalid_request`` naming what is wrong with the body.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.read()).decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not valid UTF-8") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise OAuthError("invalid_request", "a form field is given more than once")
    return fields


class ApiFront:
    """The REST API: a request decoded on its row and handed to a handler (any handler: the
    emulator's service, or a test or benchmark one)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        # The last answer and its JSON: handlers that hand out one message again (a cache
        # hit, a constant) skip the JSON mapping, the costliest step of a call.
        self._last: tuple[message.Message | None, bytes] = (None, b"")

    def __repr__(self) -> str:
        return "ApiFront()"

    async def handle(self, request: web.Request) -> web.Response:
        """One REST call: ServiceError -> Google's JSON error (anything else is INTERNAL, from
        the application's error middleware)."""
        try:
            return await self._call(request)
        except ServiceError as exc:
            return error_response(exc)

    async def _call(self, request: web.Request) -> web.Response:
        raw_path = request.raw_path.split("?", 1)[0]
        try:
            row, value = match(request.method, raw_path)
        except MethodNotAllowed as exc:
            return _shaped_error(raw_path, 405, str(exc))
        except RouteNotFound as exc:
            raise ServiceError(code_pb2.NOT_FOUND, str(exc)) from None
        body = await request.read()
        try:
            call = Call(row, "rest", request.headers, row.from_http(value, request.query, body))
        except TranscodingError as exc:
            call = Call(row, "rest", request.headers, None, f"invalid request: {exc}")
        answer = await self._handler.handle(call)
        if answer is not self._last[0]:
            self._last = (answer, message_to_json(answer))
        return web.Response(body=self._last[1], content_type="application/json")


def api_application(handler: Handler) -> web.Application:
    """An aiohttp application serving the API (``/v1alpha/...``) with ``handler``; errors of
    every route in Google's shape."""
    app = web.Application(middlewares=[_errors])
    # Any character, newlines included: a decoded %0A still gets the API's JSON errors.
    app.router.add_route("*", "/v1alpha/{tail:[\\s\\S]*}", ApiFront(handler).handle)
    return app
