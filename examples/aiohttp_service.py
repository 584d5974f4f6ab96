"""An asyncio web service (aiohttp) that calls a third-party API as each calling user.

``GET /profile``: the caller sends their Google access token (``Authorization: Bearer ...``;
against the emulator, a token the emulator issued for that user). The handler asks Discovery
Engine for *that user's* third-party access token, on one ``DataConnectorClient`` shared by
every request (the caller's token is passed per call with ``credentials=``), then calls the
third party's API with it. Nothing blocks the event loop, and no token is logged or returned.

By default the "third-party API" is the emulator's built-in provider, whose
``/provider/userinfo`` says whose token it was given, so you can see each user get their own.

Run it against the emulator::

    agentspace-grpc emulator   # prints {"grpc": "127.0.0.1:P1", "http": "http://127.0.0.1:P2", ...}
    export AGENTSPACE_EMULATOR_HOST=127.0.0.1:P1 AGENTSPACE_EMULATOR_REST=http://127.0.0.1:P2
    python examples/aiohttp_service.py --port 8080
    curl -H "Authorization: Bearer $USER_TOKEN" http://127.0.0.1:8080/profile

Against Discovery Engine, leave the emulator variables unset, pass ``--connector`` and
``--downstream-url`` (your third party's API), and have callers send their Google access token.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    DataConnectorError,
    DeadlineExceeded,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    UsageError,
)

DEFAULT_CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"


@dataclass(frozen=True)
class Settings:
    """What the service calls: the data connector, and the third party's API."""

    connector: str
    downstream_url: str
    timeout: float = 10.0


SETTINGS = web.AppKey("settings", Settings)
CLIENT = web.AppKey("client", DataConnectorClient)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(settings: Settings, client: DataConnectorClient | None = None) -> web.Application:
    """The application; without ``client`` it makes one (and closes it at cleanup).

    A client built with no arguments uses Application Default Credentials for nothing here:
    every call passes the caller's own token. It honours AGENTSPACE_EMULATOR_HOST / _REST.
    """
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources(client))
    app.router.add_get("/profile", profile)
    return app


def _resources(
    client: DataConnectorClient | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[CLIENT] = client if client is not None else DataConnectorClient()
        async with aiohttp.ClientSession() as session:
            app[SESSION] = session
            try:
                yield
            finally:
                if client is None:
                    await app[CLIENT].aclose()

    return resources


def _problem(status: int, error: str, message: str, **extra: Any) -> web.Response:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(
        {"error": error, "message": message, **extra}, status=status, headers=headers
    )


def _caller_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def profile(request: web.Request) -> web.Response:
    """The caller's profile at the third party, fetched with the caller's own token."""
    settings = request.app[SETTINGS]
    user_token = _caller_token(request)
    if user_token is None:
        return _problem(401, "unauthenticated", "send your Google access token as a Bearer token")
    try:
        third_party = await request.app[CLIENT].acquire_access_token(
            settings.connector, credentials=user_token, timeout=settings.timeout
        )
    except AuthorizationRequired as exc:
        # The user has not connected their account yet: the front end starts the consent flow.
        who = exc.principal or exc.metadata.get("user") or "you"
        return _problem(
            403,
            "authorization_required",
            f"{who} must connect their account to {exc.connector} first",
            connector=exc.connector,
        )
    except FailedPrecondition as exc:  # scopes missing, or the grant was revoked
        return _problem(403, "reauthorization_required", exc.message, reason=exc.reason)
    except (Unauthenticated, PermissionDenied, UsageError):
        return _problem(401, "invalid_credentials", "the Google credentials were not accepted")
    except (Unavailable, DeadlineExceeded):
        return _problem(503, "unavailable", "the token service is unavailable; retry later")
    except DataConnectorError as exc:
        return _problem(502, "token_service_error", exc.code.name)

    async with request.app[SESSION].get(
        settings.downstream_url,
        headers={"Authorization": f"Bearer {third_party.access_token}"},
        timeout=aiohttp.ClientTimeout(total=settings.timeout),
    ) as response:
        if response.status != 200:
            return _problem(502, "downstream_error", f"the third party answered {response.status}")
        downstream = await response.json()
    return web.json_response(
        {
            "connector": third_party.connector,
            "scopes": list(third_party.scopes),
            "downstream": downstream,
        }
    )


def main() -> None:
    """Serve until interrupted."""
    emulator_rest = os.environ.get("AGENTSPACE_EMULATOR_REST", "")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    parser.add_argument(
        "--downstream-url",
        default=f"{emulator_rest}/provider/userinfo" if emulator_rest else None,
        help="the third party's API (default: the emulator's /provider/userinfo)",
    )
    args = parser.parse_args()
    if not args.downstream_url:
        parser.error("--downstream-url is required when AGENTSPACE_EMULATOR_REST is not set")
    settings = Settings(connector=args.connector, downstream_url=args.downstream_url)
    web.run_app(create_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
