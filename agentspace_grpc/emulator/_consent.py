"""Asking an emulator for a consent URI over HTTP (``POST /emulator/v1/consent-uri``).

Shared by :class:`~agentspace_grpc.emulator.Emulator` and the pytest plugin's running-emulator
stand-in; it needs only the client's dependencies. The credentials become the bearer header the
way the client makes it (a google-auth ``Credentials`` is refreshed off the event loop), and an
error answer raises the exception the client would raise for it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from agentspace_grpc._credentials import Authorizer, CredentialsLike
from agentspace_grpc._errors import UndecodableAnswer, from_status
from agentspace_grpc._wire import status_from_http

_TIMEOUT = 30.0


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
