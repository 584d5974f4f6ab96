"""Talking to a connector's third-party token endpoint (OAuth 2.0, RFC 6749 section 4.1/6).

One function per grant; every failure becomes a :class:`ServiceError` (or
:class:`InvalidGrant`, which the service must judge: race or revocation). No secret is put in
any message: errors name the token endpoint's host and the OAuth ``error`` code only.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from google.rpc import code_pb2

from agentspace_grpc._transports.base import proxy_for
from agentspace_grpc.emulator._config import INSTANCE_PLACEHOLDER, Connector
from agentspace_grpc.emulator._errors import (
    SCOPES_MISSING,
    UPSTREAM_UNAVAILABLE,
    ServiceError,
    invalid_argument,
)

_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class InvalidGrant(Exception):
    """The provider answered ``invalid_grant``."""


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A successful token answer; secrets are kept out of ``repr``."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: float | None
    scopes: tuple[str, ...] | None
    extra: Mapping[str, Any] = field(repr=False)  # the whole answer: tokens included


def _proxy_for(url: str) -> str | None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return proxy_for(parts.scheme, parts.hostname or "", port)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


async def token_request(
    session: aiohttp.ClientSession,
    connector: Connector,
    form: dict[str, str],
    instance_uri: str = "",
) -> TokenAnswer:
    """POSTs ``form`` to the connector's token endpoint with its client authentication.

    The client secret goes only to the configured endpoint: an ``instance_uri`` whose host is
    not in the connector's ``instance_hosts`` is INVALID_ARGUMENT before any I/O.
    """
    url = connector.token_url
    if INSTANCE_PLACEHOLDER in url:
        try:
            url = url.replace(INSTANCE_PLACEHOLDER, connector.instance_base(instance_uri))
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
    host = urlsplit(url).netloc.rpartition("@")[2]  # what errors name: never user info
    headers = {"Accept": "application/json"}
    body = dict(form)
    if connector.auth_method == "client_secret_basic":
        pair = f"{quote(connector.client_id, safe='')}:{quote(connector.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        body["client_id"] = connector.client_id
        body["client_secret"] = connector.client_secret
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=connector.timeout_seconds),
            proxy=_proxy_for(url),
            allow_redirects=False,
        ) as response:
            status = response.status
            raw = await response.read()
            retry_after = _retry_after(response.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ServiceError(
            code_pb2.UNAVAILABLE,
            f"the third party's token endpoint at {host} could not be reached "
            f"({type(exc).__name__})",
            reason=UPSTREAM_UNAVAILABLE,
            metadata={"connector": connector.name},
        ) from None
    try:
        document = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        document = None
    if status == 429 or status >= 500:
        what = "rate-limited the emulator" if status == 429 else f"failed (HTTP {status})"
        raise ServiceError(
            code_pb2.UNAVAILABLE,
            f"the third party's token endpoint at {host} {what}",
            reason=UPSTREAM_UNAVAILABLE,
            metadata={"connector": connector.name, "http_status": str(status)},
            retry_after=retry_after,
        )
    if status != 200:
        error = document.get("error") if isinstance(document, dict) else None
        code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
        if code == "invalid_grant":
            raise InvalidGrant()
        if code == "invalid_scope":
            raise ServiceError(
                code_pb2.FAILED_PRECONDITION,
                f"the third party refused the requested scopes for {connector.name}: "
                "re-authorize with the scopes you need",
                reason=SCOPES_MISSING,
                metadata={"connector": connector.name, "missing_scopes": form.get("scope", "")},
            )
        raise ServiceError(
            code_pb2.FAILED_PRECONDITION,
            f"the third party's token endpoint at {host} rejected the request "
            f"(HTTP {status}, error={code or 'unknown'}); check connector {connector.name}",
        )
    if not isinstance(document, dict) or not isinstance(document.get("access_token"), str):
        raise ServiceError(
            code_pb2.UNAVAILABLE,
            f"the third party's token endpoint at {host} answered without an access_token",
            reason=UPSTREAM_UNAVAILABLE,
            metadata={"connector": connector.name},
        )
    refresh = document.get("refresh_token")
    expires = document.get("expires_in")
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    scope = document.get("scope")
    return TokenAnswer(
        access_token=document["access_token"],
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=float(expires)
        if isinstance(expires, int | float) and not isinstance(expires, bool)
        else None,
        scopes=tuple(scope.split()) if isinstance(scope, str) else None,
        extra=document,
    )
