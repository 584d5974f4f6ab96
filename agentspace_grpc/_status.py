"""``ConnectionStatus``: whether an end user can use a data connector now, without exceptions.

An agent asks before a tool runs, so it can tell the user "connect Jira" or "reconnect Jira"
instead of failing mid-task. The answer comes from an acquire whose token is discarded (the
deprecated CheckRefreshToken is never used); the errors that say something about the user's
connection become states, and every other error (bad credentials, a wrong name) is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from agentspace_grpc._errors import (
    AuthorizationRequired,
    DataConnectorError,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)

__all__ = ["ConnectionState", "ConnectionStatus", "status_from_error"]

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
