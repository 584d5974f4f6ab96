"""``AccessToken``, the result of AcquireAccessToken, and the two ways the wires build it.

The gRPC transport builds it from the response message; the REST transport builds it from
the decoded JSON fields when the answer is a plain document (it always is from the service),
without making a message first: on the hot path that message would be built only to be read
back once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, final

from agentspace_grpc import _proto

__all__ = ["AccessToken", "token_from_fields", "token_from_response"]


class _Secret:
    """Holds the token so that no attribute of AccessToken has a revealing repr."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


@final
class AccessToken:
    """A third-party access token for one end user and connector.

    ``repr()`` and ``str()`` never show the token; read :attr:`access_token` to use it. The
    service sends no expiry: use the token right away and acquire again for the next task
    (the service caches tokens, so repeated acquires are cheap).
    """

    __slots__ = ("_connector", "_scopes", "_secret", "_transport")

    def __init__(
        self,
        access_token: str,
        *,
        connector: str,
        scopes: tuple[str, ...],
        transport: Literal["grpc", "rest"],
    ) -> None:
        self._secret = _Secret(access_token)
        self._connector = connector
        self._scopes = scopes
        self._transport = transport

    @property
    def access_token(self) -> str:
        """The token itself (a secret: don't log it)."""
        return self._secret.value

    @property
    def connector(self) -> str:
        """The data connector's resource name."""
        return self._connector

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes the end user granted, as the service reports them."""
        return self._scopes

    @property
    def transport(self) -> Literal["grpc", "rest"]:
        """The wire that carried the answer (in ``auto`` mode, after any fallback)."""
        return self._transport

    def __repr__(self) -> str:
        return (
            f"AccessToken(connector={self._connector!r}, scopes={self._scopes!r}, "
            f"transport={self._transport!r}, access_token=<redacted>)"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("AccessToken cannot be pickled: it holds a secret")


def token_from_response(
    response: _proto.AcquireAccessTokenResponse, name: str, transport: Literal["grpc", "rest"]
) -> AccessToken:
    """The token in an AcquireAccessToken response to a request for connector ``name``."""
    info = response.refresh_token_info
    return AccessToken(
        response.access_token,
        connector=info.name or name,
        scopes=tuple(info.scopes),
        transport=transport,
    )


def token_from_fields(
    fields: Mapping[str, Any], name: str, transport: Literal["grpc", "rest"]
) -> AccessToken:
    """The same from an AcquireAccessTokenResponse's fields, as checked by
    :func:`agentspace_grpc._transcode.fields_from_json` (proto names; absent means default)."""
    info = fields.get("refresh_token_info")
    if info is None:
        return AccessToken(
            fields.get("access_token", ""), connector=name, scopes=(), transport=transport
        )
    return AccessToken(
        fields.get("access_token", ""),
        connector=info.get("name") or name,
        scopes=tuple(info.get("scopes", ())),
        transport=transport,
    )
