"""What the agent-framework adapters share: a tool call's token, consent, and one retry.

An adapter turns a framework's tool call into :meth:`Connection.run`: acquire the end user's
token, call the tool with it, and on a rejected token acquire once more. When the user must
(re)authorize, :class:`ConsentNeeded` carries the URL to send them to; the adapter asks for
consent in its framework's own way and calls :meth:`Connection.run` again with the redirect
URI the user came back with, which is stored first (once per URI, however many tool calls
of the step carry it).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from agentspace_grpc._client import DataConnectorClient
from agentspace_grpc._credentials import CredentialsLike
from agentspace_grpc._errors import (
    DataConnectorError,
    TokenRejected,
    UsageError,
)
from agentspace_grpc._status import acquire_either, is_authorization, status_from_error
from agentspace_grpc._token import AccessToken

__all__ = [
    "Connection",
    "ConsentNeeded",
    "ConsentUri",
    "check_tool_function",
    "user_credentials",
]

_T = TypeVar("_T")
_C = TypeVar("_C")

#: Builds the consent URL for a resource and the end user's credentials.
ConsentUri = Callable[[str, CredentialsLike], Awaitable[str]]

# Stores finished or in flight, per event loop, by (resource, SHA-256 of the redirect URI):
# several tool calls resumed with one redirect store it once. Bounded; oldest dropped.
_STORES: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, OrderedDict[tuple[str, bytes], asyncio.Future[None]]
] = weakref.WeakKeyDictionary()
_STORES_KEPT: Final = 1024


class ConsentNeeded(Exception):
    """The end user must (re)authorize ``resource`` at ``authorization_uri``."""

    def __init__(self, resource: str, authorization_uri: str) -> None:
        super().__init__(f"the end user must authorize {resource}")
        self.resource = resource
        self.authorization_uri = authorization_uri


def check_tool_function(func: Callable[..., Any]) -> inspect.Signature:
    """Refuses a tool function that is not async or takes no ``token`` keyword argument."""
    if not inspect.iscoroutinefunction(func):
        raise UsageError(f"{func!r} must be an async function (async def)")
    signature = inspect.signature(func)
    param = signature.parameters.get("token")
    if param is None or param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
        raise UsageError(f"{func!r} must take the access token as a keyword argument `token`")
    return signature


class Connection:
    """One resource (a data connector or an authorization) as a tool uses it."""

    def __init__(
        self,
        client: DataConnectorClient,
        resource: str,
        *,
        scope: str | None,
        action: str | None,
        consent_uri: ConsentUri | None,
    ) -> None:
        if not isinstance(client, DataConnectorClient):
            raise UsageError(f"client must be a DataConnectorClient, not {type(client).__name__}")
        if not isinstance(resource, str) or not resource:
            raise UsageError("resource must be a data connector or authorization name")
        for label, value in (("scope", scope), ("action", action)):
            if value is not None and (not isinstance(value, str) or not value):
                raise UsageError(f"{label} must be a non-empty string or None")
        self.authorization = is_authorization(resource, scope, action)
        if consent_uri is not None and not callable(consent_uri):
            raise UsageError("consent_uri must be an async callable (resource, credentials)")
        self.client = client
        self.resource = resource
        self.scope = scope
        self.action = action
        self._consent_uri = consent_uri
        #: Names what the user's consent is for (stable: the URL changes per request).
        self.key = f"agentspace:{resource}:{scope or ''}:{action or ''}"

    async def run(
        self,
        call: Callable[[AccessToken], Awaitable[_T]],
        credentials: CredentialsLike,
        redirect_uri: str | None = None,
    ) -> _T:
        """``call(token)`` with the user's token; stores ``redirect_uri`` first if given.

        Raises:
            ConsentNeeded: The user must authorize (again), or the token was rejected twice.
        """
        if redirect_uri is not None:
            await self.store(redirect_uri, credentials)
        token = await self.acquire(credentials)
        try:
            return await call(token)
        except TokenRejected:
            self.client.invalidate(token)
        token = await self.acquire(credentials)
        try:
            return await call(token)
        except TokenRejected as exc:
            self.client.invalidate(token)
            raise ConsentNeeded(self.resource, await self._consent_url(credentials, exc)) from None

    async def acquire(self, credentials: CredentialsLike) -> AccessToken:
        """The user's token, or :class:`ConsentNeeded` when only their consent repairs it."""
        try:
            return await acquire_either(
                self.client,
                self.resource,
                scope=self.scope,
                action=self.action,
                credentials=credentials,
            )
        except DataConnectorError as exc:
            # The same reading of the service's errors as connection_status's.
            status = status_from_error(exc)
            if status is None or not status.needs_consent:
                raise
            uri = status.authorization_uri or await self._consent_url(credentials, exc)
            raise ConsentNeeded(self.resource, uri) from None

    async def store(self, redirect_uri: str, credentials: CredentialsLike) -> None:
        """Stores the user's redirect URI once, however many tool calls bring it."""
        if not isinstance(redirect_uri, str) or not redirect_uri:
            raise UsageError("the consent must be resumed with the full redirect URI string")
        loop = asyncio.get_running_loop()
        stores = _STORES.setdefault(loop, OrderedDict())
        key = self._store_key(redirect_uri)
        stored = stores.get(key)
        if stored is None or (stored.done() and (stored.cancelled() or stored.exception())):
            stored = stores[key] = loop.create_task(self._store(redirect_uri, credentials))
            while len(stores) > _STORES_KEPT:
                stores.popitem(last=False)
        else:
            stores.move_to_end(key)
        await asyncio.shield(stored)

    def storing(self, redirect_uri: object) -> bool:
        """Whether this process stores (or stored) ``redirect_uri`` for this resource."""
        if not isinstance(redirect_uri, str):
            return False
        stores = _STORES.get(asyncio.get_running_loop())
        return stores is not None and self._store_key(redirect_uri) in stores

    def _store_key(self, redirect_uri: str) -> tuple[str, bytes]:
        return (self.resource, hashlib.sha256(redirect_uri.encode()).digest())

    async def _store(self, redirect_uri: str, credentials: CredentialsLike) -> None:
        if self.authorization:
            await self.client.store_user_authorization(
                self.resource, redirect_uri, credentials=credentials
            )
        else:
            await self.client.store_refresh_token(
                self.resource, redirect_uri, credentials=credentials
            )

    async def _consent_url(self, credentials: CredentialsLike, cause: Exception) -> str:
        """The consent URL from ``consent_uri``; without one, ``cause`` stands."""
        if self._consent_uri is None:
            raise cause
        uri = await self._consent_uri(self.resource, credentials)
        if not isinstance(uri, str) or not uri:
            raise UsageError("consent_uri returned no URL")
        return uri


async def user_credentials(
    credentials: Callable[[_C], CredentialsLike | Awaitable[CredentialsLike]], context: _C
) -> CredentialsLike:
    """The end user's credentials for this call, from the application's callable.

    None is refused: the client would fall back to its own default identity, and the tool
    would act as the agent instead of as the user.
    """
    user = credentials(context)
    if inspect.isawaitable(user):
        user = await user
    if user is None:
        raise UsageError(
            "the credentials callable returned None: it must return the end user's credentials"
        )
    return user
