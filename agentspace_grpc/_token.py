"""``AccessToken``, the result of AcquireAccessToken, and the two ways the wires build it.

The gRPC transport builds it from the response message. The REST transport reads the
service's JSON answer straight into it: on the hot path a message would be built only to be
read back once, and the generic JSON mapping costs more than the rest of the client's work.
"""

from __future__ import annotations

from typing import Any, Literal, cast, final

from agentspace_grpc import _proto
from agentspace_grpc._transcode import TranscodingError, json_loads, message_from_json

__all__ = ["AccessToken", "token_from_json", "token_from_response"]


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


def token_from_json(body: bytes, name: str) -> AccessToken:
    """The token in a REST answer to AcquireAccessToken for connector ``name``.

    The service's own form, ``{"accessToken": ..., "refreshTokenInfo": {"name": ...,
    "scopes": [...]}}`` with ASCII strings and nothing else, is read straight into the token.
    Any other document (the proto field names, missing, null or unknown fields, other text) goes
    through :func:`~agentspace_grpc._transcode.message_from_json`, which defines the mapping
    and names what is wrong (``ValueError``); a test checks that the two agree.
    """
    try:
        data = json_loads(body)
    except TranscodingError:
        data = None  # message_from_json names the problem
    if type(data) is dict and len(data) == 2:
        token = data.get("accessToken")
        info = data.get("refreshTokenInfo")
        if type(token) is str and token.isascii() and type(info) is dict and len(info) == 2:
            connector = info.get("name")
            scopes = info.get("scopes")
            if type(connector) is str and connector.isascii() and type(scopes) is list:
                for scope in scopes:
                    if type(scope) is not str or not scope.isascii():
                        break
                else:
                    return AccessToken(
                        token, connector=connector or name, scopes=tuple(scopes), transport="rest"
                    )
    response = message_from_json(body, _proto.AcquireAccessTokenResponse, ignore_unknown=True)
    return token_from_response(cast(_proto.AcquireAccessTokenResponse, response), name, "rest")
