"""The built-in provider's HTTP front, under ``/provider`` on the emulator's HTTP port.

- ``GET /provider/authorize``: redirects the browser back to ``redirect_uri`` with a code (or an
  error); an unknown client or redirect URI is a JSON error instead (no redirect is safe).
- ``POST /provider/token``: the token endpoint (``application/x-www-form-urlencoded``).
- ``GET /provider/userinfo``: the third party's "API": who a Bearer access token belongs to
  (401 if it is unknown, expired or its grant was revoked).
- ``GET /provider/stats``: the provider's counters.

Errors are RFC 6749's ``{"error", "error_description"}``. What each endpoint decides is in
:mod:`._provider`.
"""

from __future__ import annotations

from aiohttp import web

from agentspace_grpc.emulator._errors import OAuthError
from agentspace_grpc.emulator._provider import Provider
from agentspace_grpc.emulator._rest import oauth_error, read_form


class ProviderFront:
    """The provider's endpoints."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def __repr__(self) -> str:
        return "ProviderFront()"

    def add_routes(self, app: web.Application) -> None:
        """Mounts the endpoints under ``/provider``."""
        app.router.add_get("/provider/authorize", self.authorize)
        app.router.add_post("/provider/token", self.token)
        app.router.add_get("/provider/userinfo", self.userinfo)
        app.router.add_get("/provider/stats", self.stats)

    async def authorize(self, request: web.Request) -> web.Response:
        """Auto-consent for the user the consent state names; redirect back with a code."""
        try:
            location = await self._provider.authorize(request.query)
        except OAuthError as exc:
            return oauth_error(exc)
        return web.Response(status=302, headers={"Location": location})

    async def token(self, request: web.Request) -> web.Response:
        """The token endpoint."""
        try:
            fields = await read_form(request)
            answer = await self._provider.token(fields, request.headers.get("Authorization"))
        except OAuthError as exc:
            return oauth_error(exc)
        return web.json_response(
            answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )

    async def userinfo(self, request: web.Request) -> web.Response:
        """Who an access token belongs to; 401 when it is not valid."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("a Bearer access token is required")
        info = await self._provider.userinfo(token.strip())
        if info is None:
            return _unauthorized("the access token is unknown, expired or revoked")
        return web.json_response(info)

    async def stats(self, request: web.Request) -> web.Response:
        """Every counter, across all processes on the data directory."""
        return web.json_response(await self._provider.stats())


def _unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_token", "error_description": message},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
