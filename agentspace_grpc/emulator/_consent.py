"""An emulator's consent over HTTP, as a test drives it: asking for a consent URI
(``POST /emulator/v1/consent-uri``) and running the consent for a user
(``GET /emulator/v1/consent`` and the provider's authorize redirect).

Shared by :class:`~agentspace_grpc.emulator.Emulator` and the pytest plugin's running-emulator
stand-in; it needs only the client's dependencies. The credentials become the bearer header the
way the client makes it (a google-auth ``Credentials`` is refreshed off the event loop), and an
error answer raises the exception the client would raise for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import aiohttp

from agentspace_grpc._credentials import Authorizer, CredentialsLike
from agentspace_grpc._errors import UndecodableAnswer, from_status
from agentspace_grpc._wire import status_from_http

_TIMEOUT = 30.0


class EmulatorError(RuntimeError):
    """The emulator could not start, or a helper's HTTP exchange failed."""


async def request_consent_uri(http_url: str, resource: str, credentials: CredentialsLike) -> str:
    """The consent URI of ``resource`` for the user ``credentials`` identify.

    Raises:
        DataConnectorError: the emulator refused (``Unauthenticated`` without credentials,
            ``NotFound`` for an unknown resource, ``InvalidArgument`` for a malformed name).
    """
    authorizer = Authorizer(credentials, use_adc=False)
    try:
        header = await authorizer.authorization(None, asyncio.get_running_loop().time() + _TIMEOUT)
    finally:
        authorizer.close()
    headers = {"Authorization": header} if header else {}
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(
            f"{http_url}/emulator/v1/consent-uri",
            json={"resource": resource},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=_TIMEOUT),
        ) as response,
    ):
        body = await response.read()
        if response.status != 200:
            status = status_from_http(response.status, body, response.content_type)
            raise from_status(status, transport="rest", http_status=response.status)
    try:
        uri = json.loads(body)["consentUri"]
    except (ValueError, KeyError, TypeError):
        uri = None
    if not isinstance(uri, str):
        raise UndecodableAnswer(
            "the emulator's consent-uri answer has no consentUri", transport="rest"
        )
    return uri


async def consent_over_http(
    http_url: str, bearer: str, email: str, resource: str, scopes: Sequence[str] | None
) -> str:
    """Runs the consent for ``email`` (whose identity token is ``bearer``): the emulator's
    consent endpoint, then the provider's authorize redirect; returns the full redirect URI.

    Raises:
        EmulatorError: a step did not redirect (the emulator's reason, or the HTTP status, is
            named; never a token).
    """
    params = {"connector": resource}
    if scopes:
        params["scope"] = " ".join(scopes)
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
    async with aiohttp.ClientSession(trust_env=False, timeout=timeout) as session:
        location = f"{http_url}/emulator/v1/consent"
        headers: dict[str, str] | None = {"Authorization": f"Bearer {bearer}"}
        for _ in range(2):  # the emulator's consent endpoint, then the provider's authorize
            async with session.get(
                location, params=params, headers=headers, allow_redirects=False
            ) as response:
                if response.status != 302:
                    said = status_from_http(
                        response.status, await response.read(), response.content_type
                    ).message
                    raise EmulatorError(
                        f"consent for {email} failed at {response.url.path}: {said}"
                    )
                location = response.headers["Location"]
            params, headers = {}, None
        return location
