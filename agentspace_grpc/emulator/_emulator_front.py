"""The emulator's own endpoints on its HTTP port: identity, consent, stats and health.

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

Errors are Google's JSON errors, but RFC 6749's on ``/oauth2/token``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agentspace_grpc.emulator._config import DEFAULT_CONNECTOR
from agentspace_grpc.emulator._errors import (
    OAuthError,
    ServiceError,
    invalid_argument,
    unauthenticated,
)
from agentspace_grpc.emulator._identity import (
    IDENTITY_CLIENT_ID,
    IDENTITY_CLIENT_SECRET,
    Identity,
    IdentityError,
    check_email,
)
from agentspace_grpc.emulator._rest import error_response, oauth_error, read_form
from agentspace_grpc.emulator._service import Service
from agentspace_grpc.emulator._store import Store


class EmulatorFront:
    """The emulator's own endpoints: identities from ``identity``, consents from ``consent``
    (the service), counters from ``store``; ``token_uri`` is what minted identities refresh at."""

    def __init__(self, identity: Identity, consent: Service, store: Store, token_uri: str) -> None:
        self._identity = identity
        self._consent = consent
        self._store = store
        self._token_uri = token_uri

    def __repr__(self) -> str:
        return "EmulatorFront()"

    def add_routes(self, app: web.Application) -> None:
        """Mounts the endpoints."""
        app.router.add_post("/oauth2/token", self.identity_token)
        app.router.add_post("/emulator/v1/users/{email}/token", self.mint)
        app.router.add_get("/emulator/v1/consent", self.consent)
        app.router.add_post("/emulator/v1/consent-uri", self.consent_uri)
        app.router.add_get("/emulator/v1/stats", self.stats)
        app.router.add_get("/healthz", self.health)

    async def identity_token(self, request: web.Request) -> web.Response:
        """``grant_type=refresh_token`` with an identity refresh token -> a bearer token."""
        try:
            form = await read_form(request)
        except OAuthError as exc:
            return oauth_error(exc)
        if form.get("grant_type") != "refresh_token":
            return oauth_error(
                OAuthError("unsupported_grant_type", "only grant_type=refresh_token")
            )
        client_id = form.get("client_id")
        if client_id is not None and client_id != IDENTITY_CLIENT_ID:
            return oauth_error(OAuthError("invalid_client", "unknown client_id", 401))
        token = form.get("refresh_token")
        if not token:
            return oauth_error(OAuthError("invalid_request", "refresh_token is required"))
        try:
            email = self._identity.user_from_refresh_token(token)
        except IdentityError:
            return oauth_error(OAuthError("invalid_grant", "the refresh token was not issued here"))
        access, lifetime = self._identity.access_token_for(email)
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": max(1, round(lifetime)),
                "scope": "https://www.googleapis.com/auth/cloud-platform",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def mint(self, request: web.Request) -> web.Response:
        """Mints an end user's identity (the emulator trusts whoever reaches it)."""
        try:
            email = check_email(request.match_info["email"])
        except ValueError as exc:
            return error_response(invalid_argument(str(exc)))
        access, lifetime = self._identity.access_token_for(email)
        answer: dict[str, Any] = {
            "email": email,
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": max(1, round(lifetime)),
            "refresh_token": self._identity.refresh_token_for(email),
            "token_uri": self._token_uri,
            "client_id": IDENTITY_CLIENT_ID,
            "client_secret": IDENTITY_CLIENT_SECRET,
        }
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    def _user(self, request: web.Request) -> str:
        try:
            return self._identity.user_from_authorization(request.headers.get("Authorization"))
        except IdentityError as exc:
            raise unauthenticated(str(exc)) from None

    async def consent(self, request: web.Request) -> web.Response:
        """Redirects to the resource's authorize URL, for the user that a consent URI's state
        names or (without a state) for the caller."""
        query = request.query
        try:
            allowed = {"state"} if "state" in query else {"connector", "scope", "instance_uri"}
            unknown = sorted(set(query) - allowed)
            if unknown:
                raise invalid_argument(f"unknown query parameter {unknown[0]!r}")
            if "state" in query:  # the signed state is the credential
                location = self._consent.authorize_url(query["state"])
            else:
                user = self._user(request)
                connector = self._consent.resource(query.get("connector") or DEFAULT_CONNECTOR)
                location = self._consent.start_consent(
                    user, connector, query.get("scope", "").split(), query.get("instance_uri", "")
                )
        except ServiceError as exc:
            return error_response(exc)
        return web.Response(status=302, headers={"Location": location})

    async def consent_uri(self, request: web.Request) -> web.Response:
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
            uri = self._consent.consent_uri(user, self._consent.resource(data["resource"]))
        except ServiceError as exc:
            return error_response(exc)
        return web.json_response({"consentUri": uri}, headers={"Cache-Control": "no-store"})

    async def stats(self, request: web.Request) -> web.Response:
        """The emulator's own counters (from the shared store)."""
        return web.json_response(await self._store.counters())

    async def health(self, request: web.Request) -> web.Response:
        """Liveness for scripts (``GET /healthz``)."""
        return web.json_response({"status": "SERVING"})
