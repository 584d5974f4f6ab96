"""The HTTP front: the REST API (rows of :mod:`agentspace_grpc._wire`), end-user identity,
consent, the built-in provider and stats, all on one aiohttp port.

Endpoints:

- ``/v1alpha/...``: DataConnectorService and AuthorizationService over REST/JSON (routes from
  ``google.api.http``), Google-shaped JSON errors.
- ``POST /oauth2/token``: the identity token endpoint (``grant_type=refresh_token``); point
  ``google.oauth2.credentials.Credentials(token_uri=...)`` here.
- ``POST /emulator/v1/users/{email}/token``: mints an end user's identity (refresh token,
  access token and the fields google-auth needs).
- ``GET /emulator/v1/consent?connector=NAME&scope=A+B[&instance_uri=HOST]`` with the user's
  bearer token: redirects to the authorize URL of the connector or authorization NAME with a
  state bound to that user. ``GET /emulator/v1/consent?state=STATE``, with no credentials, does
  the same for the user and resource a consent URI's signed state names (what a browser opens).
- ``POST /emulator/v1/consent-uri`` with the user's bearer token and ``{"resource": NAME}``:
  ``{"consentUri": URL}``, such a URL for that user.
- ``GET /emulator/v1/stats``: the emulator's counters; ``GET /healthz``.
- ``/provider/...``: the built-in provider (see :mod:`._provider`).

Whatever a request holds, the answer is never a bare 500: one middleware gives every error the
shape of its endpoint, Google's JSON error on the API and emulator routes and RFC 6749's
``{"error", "error_description"}`` on ``/oauth2/`` and ``/provider/`` (aiohttp's own 404, 405
and 413 included); an unexpected failure is INTERNAL / ``server_error`` with an incident id.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
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
from agentspace_grpc.emulator._config import DEFAULT_CONNECTOR
from agentspace_grpc.emulator._errors import (
    ServiceError,
    internal,
    invalid_argument,
    unauthenticated,
)
from agentspace_grpc.emulator._identity import (
    IDENTITY_CLIENT_ID,
    IDENTITY_CLIENT_SECRET,
    IdentityError,
    check_email,
)
from agentspace_grpc.emulator._provider import OAuthError, Provider, read_form
from agentspace_grpc.emulator._service import Service

log = logging.getLogger("agentspace_grpc.emulator")
_OAUTH_PREFIXES: Final = ("/oauth2/", "/provider/")
_KEPT_HEADERS: Final = ("Allow", "WWW-Authenticate", "Retry-After")


def _error(exc: ServiceError) -> web.Response:
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
        return web.json_response(
            {"error": error, "error_description": message},
            status=status,
            headers={"Cache-Control": "no-store", **(headers or {})},
        )
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


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


class RestFront:
    """The aiohttp application of one emulator."""

    def __init__(self, service: Service, provider: Provider, token_uri: str) -> None:
        self._service = service
        self._provider = provider
        self._token_uri = token_uri

    def __repr__(self) -> str:
        return "RestFront()"

    def application(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[_errors])
        # Any character, newlines included: a decoded %0A still gets the API's JSON errors.
        app.router.add_route("*", "/v1alpha/{tail:[\\s\\S]*}", self.handle_api)
        app.router.add_post("/oauth2/token", self.handle_identity_token)
        app.router.add_post("/emulator/v1/users/{email}/token", self.handle_mint)
        app.router.add_get("/emulator/v1/consent", self.handle_consent)
        app.router.add_post("/emulator/v1/consent-uri", self.handle_consent_uri)
        app.router.add_get("/emulator/v1/stats", self.handle_stats)
        app.router.add_get("/healthz", self.handle_health)
        self._provider.add_routes(app)
        return app

    # ---- the API -----------------------------------------------------------------------------

    async def handle_api(self, request: web.Request) -> web.Response:
        """One REST call, transcoded to the service."""
        try:
            return await self._api(request)
        except ServiceError as exc:
            return _error(exc)
        except Exception:
            incident = secrets.token_hex(4)
            log.exception("internal error in the REST front (incident %s)", incident)
            return _error(internal(incident))

    async def _api(self, request: web.Request) -> web.Response:
        raw_path = request.raw_path.split("?", 1)[0]
        try:
            row, value = match(request.method, raw_path)
        except MethodNotAllowed as exc:
            error = {"code": 405, "message": str(exc), "status": "UNIMPLEMENTED", "details": []}
            return web.json_response({"error": error}, status=405)
        except RouteNotFound as exc:
            raise ServiceError(code_pb2.NOT_FOUND, str(exc)) from None
        authorization = request.headers.get("Authorization")
        try:
            self._service.identity.user_from_authorization(authorization)
        except IdentityError as exc:
            raise unauthenticated(str(exc)) from None
        body = await request.read()
        try:
            message = row.from_http(value, request.query.keys(), body)
        except TranscodingError as exc:
            raise ServiceError(code_pb2.INVALID_ARGUMENT, f"invalid request: {exc}") from None
        answer = await self._service.handle(row.name, authorization, message)
        return web.Response(body=message_to_json(answer), content_type="application/json")

    # ---- identity and consent ------------------------------------------------------------------

    async def handle_identity_token(self, request: web.Request) -> web.Response:
        """``grant_type=refresh_token`` with an identity refresh token -> a bearer token."""
        try:
            form = await read_form(request)
        except OAuthError as exc:
            return exc.response()
        if form.get("grant_type") != "refresh_token":
            return _oauth_error("unsupported_grant_type", "only grant_type=refresh_token")
        client_id = form.get("client_id")
        if client_id is not None and client_id != IDENTITY_CLIENT_ID:
            return _oauth_error("invalid_client", "unknown client_id", 401)
        token = form.get("refresh_token")
        if not token:
            return _oauth_error("invalid_request", "refresh_token is required")
        identity = self._service.identity
        try:
            email = identity.user_from_refresh_token(token)
        except IdentityError:
            return _oauth_error("invalid_grant", "the refresh token was not issued here")
        access, lifetime = identity.access_token_for(email)
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": max(1, round(lifetime)),
                "scope": "https://www.googleapis.com/auth/cloud-platform",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def handle_mint(self, request: web.Request) -> web.Response:
        """Mints an end user's identity (the emulator trusts whoever reaches it)."""
        try:
            email = check_email(request.match_info["email"])
        except ValueError as exc:
            return _error(invalid_argument(str(exc)))
        identity = self._service.identity
        access, lifetime = identity.access_token_for(email)
        answer: dict[str, Any] = {
            "email": email,
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": max(1, round(lifetime)),
            "refresh_token": identity.refresh_token_for(email),
            "token_uri": self._token_uri,
            "client_id": IDENTITY_CLIENT_ID,
            "client_secret": IDENTITY_CLIENT_SECRET,
        }
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    def _user(self, request: web.Request) -> str:
        try:
            return self._service.identity.user_from_authorization(
                request.headers.get("Authorization")
            )
        except IdentityError as exc:
            raise unauthenticated(str(exc)) from None

    async def handle_consent(self, request: web.Request) -> web.Response:
        """Redirects to the resource's authorize URL, for the user that a consent URI's state
        names or (without a state) for the caller."""
        query = request.query
        try:
            allowed = {"state"} if "state" in query else {"connector", "scope", "instance_uri"}
            unknown = sorted(set(query) - allowed)
            if unknown:
                raise invalid_argument(f"unknown query parameter {unknown[0]!r}")
            if "state" in query:  # the signed state is the credential
                location = self._service.authorize_url(query["state"])
            else:
                user = self._user(request)
                connector = self._service.resource(query.get("connector") or DEFAULT_CONNECTOR)
                location = self._service.start_consent(
                    user, connector, query.get("scope", "").split(), query.get("instance_uri", "")
                )
        except ServiceError as exc:
            return _error(exc)
        return web.Response(status=302, headers={"Location": location})

    async def handle_consent_uri(self, request: web.Request) -> web.Response:
        """``{"resource": NAME}`` -> ``{"consentUri": URL}``: a consent URI for the caller."""
        try:
            user = self._user(request)
            try:
                data = json.loads(await request.read())
            except (ValueError, RecursionError):
                data = None
            if type(data) is not dict or type(data.get("resource")) is not str:
                raise invalid_argument('the body must be a JSON object {"resource": NAME}')
            unknown = sorted(set(data) - {"resource"})
            if unknown:
                raise invalid_argument(f"unknown field {unknown[0]!r} (only 'resource')")
            uri = self._service.consent_uri(user, self._service.resource(data["resource"]))
        except ServiceError as exc:
            return _error(exc)
        return web.json_response({"consentUri": uri}, headers={"Cache-Control": "no-store"})

    async def handle_stats(self, request: web.Request) -> web.Response:
        """The emulator's own counters (from the shared store)."""
        return web.json_response(await self._service.store.counters())

    async def handle_health(self, request: web.Request) -> web.Response:
        """Liveness for scripts (``GET /healthz``)."""
        return web.json_response({"status": "SERVING"})
