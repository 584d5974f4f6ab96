"""``ConnectionStatus``: whether an end user can use a data connector now, without exceptions.

An agent asks before a tool runs, so it can tell the user "connect Jira" or "reconnect Jira"
instead of failing mid-task. The answer comes from an acquire whose token is discarded (the
deprecated CheckRefreshToken is never used); the errors that say something about the user's
connection become states, and every other error (bad credentials, a wrong name) is raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal

from agentspace_grpc._credentials import CredentialsLike
from agentspace_grpc._errors import (
    AuthorizationRequired,
    DataConnectorError,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    UsageError,
    is_authorization_name,
)
from agentspace_grpc._token import AccessToken

if TYPE_CHECKING:
    from agentspace_grpc._client import DataConnectorClient

__all__ = [
    "ConnectionState",
    "ConnectionStatus",
    "acquire_either",
    "connection_status",
    "is_authorization",
    "status_from_error",
]

ConnectionState = Literal["connected", "not_connected", "reauthorization_required", "unavailable"]

# The FAILED_PRECONDITION reasons that mean "the user must authorize again".
_REAUTHORIZE: Final = frozenset({"SCOPES_MISSING", "REFRESH_TOKEN_REVOKED"})


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """An end user's connection to a data connector, as one acquire found it.

    Attributes:
        state: ``"connected"`` (a token was issued), ``"not_connected"`` (the user never
            authorized), ``"reauthorization_required"`` (the service said why: a scope is
            missing or the grant was revoked) or ``"unavailable"`` (try again later).
        scopes: The scopes granted, when connected.
        missing_scopes: The scopes the user must grant, when the service names them.
        reason: Why, when not connected: the service's reason (``SCOPES_MISSING``,
            ``REFRESH_TOKEN_REVOKED``, ``UPSTREAM_UNAVAILABLE``, ...) or, without one, the
            status code's name.
        authorization_uri: Where to send the user, when consent is needed and a
            ``consent_uri`` callable was given.
    """

    state: ConnectionState
    scopes: tuple[str, ...] = ()
    missing_scopes: tuple[str, ...] = ()
    reason: str | None = None
    authorization_uri: str | None = None

    @property
    def needs_consent(self) -> bool:
        """True when the user must go through the consent flow (again)."""
        return self.state in ("not_connected", "reauthorization_required")


def status_from_error(error: DataConnectorError) -> ConnectionStatus | None:
    """The status an acquire's error stands for, or None when it says nothing about it."""
    reason = error.reason or error.code.name
    if isinstance(error, AuthorizationRequired):
        # An authorization's answer says where to send the user (and not why).
        return ConnectionStatus(
            "not_connected", reason=reason, authorization_uri=error.authorization_uri
        )
    if isinstance(error, FailedPrecondition) and error.reason in _REAUTHORIZE:
        missing = tuple(error.metadata.get("missing_scopes", "").split())
        return ConnectionStatus("reauthorization_required", missing_scopes=missing, reason=reason)
    if isinstance(error, Unavailable | DeadlineExceeded | ResourceExhausted):
        return ConnectionStatus("unavailable", reason=reason)
    return None


def is_authorization(name: object, scope: str | None, action: str | None) -> bool:
    """Whether ``name`` is an authorization's (which takes no ``scope`` nor ``action``: a
    UsageError if either is given) rather than a data connector's."""
    if not (isinstance(name, str) and is_authorization_name(name)):
        return False
    if scope is not None or action is not None:
        raise UsageError("an authorization takes no scope or action: its grant decides")
    return True


async def acquire_either(
    client: DataConnectorClient,
    name: str,
    *,
    scope: str | None = None,
    action: str | None = None,
    credentials: CredentialsLike = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
) -> AccessToken:
    """The token of ``name``: ``acquire_user_authorization`` for an authorization's name (which
    takes no scope or action), else ``acquire_access_token``."""
    if is_authorization(name, scope, action):
        return await client.acquire_user_authorization(
            name, credentials=credentials, timeout=timeout
        )
    return await client.acquire_access_token(
        name, scope=scope, action=action, credentials=credentials, timeout=timeout
    )


async def connection_status(
    client: DataConnectorClient,
    name: str,
    *,
    scope: str | None,
    action: str | None,
    credentials: CredentialsLike,
    effective: Callable[[], CredentialsLike],
    consent_uri: Callable[[str, CredentialsLike], Awaitable[str]] | None,
    timeout: float | None,  # noqa: ASYNC109 - the call's overall deadline
) -> ConnectionStatus:
    """What :meth:`DataConnectorClient.connection_status` answers, through the client's public
    acquires; ``effective()`` is the credentials in effect (asked after the acquire, which
    may have looked up ADC), handed to ``consent_uri``."""
    if consent_uri is not None and not callable(consent_uri):
        raise UsageError("consent_uri must be an async callable (resource, credentials)")
    try:
        token = await acquire_either(
            client, name, scope=scope, action=action, credentials=credentials, timeout=timeout
        )
    except DataConnectorError as exc:
        status = status_from_error(exc)
        if status is None:
            raise
        if consent_uri is None or not status.needs_consent or status.authorization_uri:
            return status
        uri = await consent_uri(name, effective())
        if not isinstance(uri, str) or not uri:
            raise UsageError("consent_uri must return the consent URL as a string") from None
        return replace(status, authorization_uri=uri)
    return ConnectionStatus("connected", scopes=token.scopes)
