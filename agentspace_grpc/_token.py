"""``AccessToken``, the result of AcquireAccessToken and AcquireUserAuthorization, and the two
ways the wires build it.

The gRPC transport builds it from the response message. The REST transport reads the
service's JSON answer straight into it: on the hot path a message would be built only to be
read back once, and ``json_format`` costs more than the rest of the client's work.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar, cast, final

from google.protobuf import descriptor, json_format, message

from agentspace_grpc import _proto
from agentspace_grpc._errors import AuthorizationRequired, Transport, UndecodableAnswer, first_line

__all__ = [
    "AccessToken",
    "answer_from_json",
    "json_loads",
    "token_from_json",
    "token_from_response",
    "user_token_from_json",
    "user_token_from_response",
]

_M = TypeVar("_M", bound=message.Message)

_RAW_DECODE: Final = json.JSONDecoder().raw_decode
# The keys of ``refreshTokenInfo`` in the service's own answers.
_CONNECTOR_INFO: Final = frozenset({"name", "scopes"})
_AUTHORIZATION_INFO: Final = frozenset({"scopes"})


def json_loads(body: bytes | str) -> Any:
    """``json.loads``, with its errors raised as a ``ValueError`` that names the problem.

    The common case, a UTF-8 document with nothing around it, skips json.loads's encoding
    detection and its two whitespace scans (half its time on a token answer). Anything else
    (whitespace, a BOM, UTF-16, an error) goes through json.loads itself, so the result and
    the errors are json.loads's.
    """
    try:
        text = body.decode() if isinstance(body, bytes) else body
        value, end = _RAW_DECODE(text)
        if end == len(text):
            return value
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("the body is not valid JSON: it is nested too deeply") from None


class _Secret:
    """Holds the token so that no attribute of AccessToken has a revealing repr."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


@final
class AccessToken:
    """A third-party access token for one end user and resource (connector or authorization).

    ``repr()`` and ``str()`` never show the token; read :attr:`access_token` to use it. The
    service sends no expiry: use the token right away and acquire again for the next task
    (the service caches tokens, so repeated acquires are cheap).
    """

    __slots__ = ("_resource", "_scopes", "_secret", "_transport")

    def __init__(
        self,
        access_token: str,
        *,
        resource: str,
        scopes: tuple[str, ...],
        transport: Transport,
    ) -> None:
        self._secret = _Secret(access_token)
        self._resource = resource
        self._scopes = scopes
        self._transport = transport

    @property
    def access_token(self) -> str:
        """The token itself (a secret: don't log it)."""
        return self._secret.value

    @property
    def resource(self) -> str:
        """What the token was acquired for: a data connector's or an authorization's name."""
        return self._resource

    @property
    def connector(self) -> str:
        """The same as :attr:`resource` (the name from before authorizations existed)."""
        return self._resource

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes the end user granted, as the service reports them."""
        return self._scopes

    @property
    def transport(self) -> Transport:
        """The wire that carried the answer (in ``auto`` mode, after any fallback)."""
        return self._transport

    def __repr__(self) -> str:
        return (
            f"AccessToken(resource={self._resource!r}, scopes={self._scopes!r}, "
            f"transport={self._transport!r}, access_token=<redacted>)"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("AccessToken cannot be pickled: it holds a secret")


def token_from_response(
    response: _proto.AcquireAccessTokenResponse, name: str, transport: Transport
) -> AccessToken:
    """The token in an AcquireAccessToken response to a request for connector ``name``.

    Raises:
        UndecodableAnswer: The answer carries no access token (never a token of "").
    """
    if not response.access_token:
        raise UndecodableAnswer("the service answered without an access token", transport=transport)
    info = response.refresh_token_info
    return AccessToken(
        response.access_token,
        resource=info.name or name,
        scopes=tuple(info.scopes),
        transport=transport,
    )


def token_from_json(body: bytes, name: str) -> AccessToken:
    """The token in a REST answer to AcquireAccessToken for connector ``name``.

    The service's own form, ``{"accessToken": ..., "refreshTokenInfo": {"name": ...,
    "scopes": [...]}}`` with ASCII strings and nothing else, is read straight into the token.
    Any other document goes through ``json_format`` (unknown fields ignored), which defines the
    mapping and names what is wrong (``ValueError``); a test checks that the two agree.
    """
    data = json_loads(body)
    token = _service_form(data, name, _CONNECTOR_INFO)
    if token is not None:
        return token
    return token_from_response(_from_data(data, _proto.AcquireAccessTokenResponse), name, "rest")


def user_token_from_response(
    response: _proto.AcquireUserAuthorizationResponse,
    name: str,
    transport: Transport,
) -> AccessToken:
    """The token in an AcquireUserAuthorization response to a request for ``name``.

    Raises:
        AuthorizationRequired: The answer carries an authorization URI and no token: the user
            must (re)authorize there first.
        UndecodableAnswer: The answer carries neither (never a token of "").
    """
    if response.access_token:
        scopes = tuple(response.refresh_token_info.scopes)
        return AccessToken(response.access_token, resource=name, scopes=scopes, transport=transport)
    if response.authorization_uri:
        raise AuthorizationRequired(
            "the service answered with an authorization URI: send the end user there, then "
            "call store_user_authorization() with the URI they are redirected to",
            resource=name,
            authorization_uri=response.authorization_uri,
            transport=transport,
            # The REST front answers every success with 200.
            http_status=200 if transport == "rest" else None,
        )
    raise UndecodableAnswer(
        "the service answered with neither an access token nor an authorization URI",
        transport=transport,
    )


def user_token_from_json(body: bytes, name: str) -> AccessToken:
    """The token in a REST answer to AcquireUserAuthorization for ``name``: the service's own
    form, ``{"accessToken": ..., "refreshTokenInfo": {"scopes": [...]}}``, read straight into
    the token, anything else as :func:`token_from_json` does."""
    data = json_loads(body)
    token = _service_form(data, name, _AUTHORIZATION_INFO)
    if token is not None:
        return token
    response = _from_data(data, _proto.AcquireUserAuthorizationResponse)
    return user_token_from_response(response, name, "rest")


def _service_form(data: Any, name: str, info_keys: frozenset[str]) -> AccessToken | None:
    """The token of a document in the service's own form (exactly ``accessToken`` and
    ``refreshTokenInfo`` with ``info_keys``, ASCII strings, a token), else None."""
    if type(data) is not dict or len(data) != 2:
        return None
    token = data.get("accessToken")
    info = data.get("refreshTokenInfo")
    if type(token) is not str or not token or not token.isascii():
        return None
    if type(info) is not dict or info.keys() != info_keys:
        return None
    resource = info.get("name", "")
    scopes = info.get("scopes")
    if type(resource) is not str or not resource.isascii() or type(scopes) is not list:
        return None
    for scope in scopes:
        if type(scope) is not str or not scope.isascii():
            return None
    return AccessToken(token, resource=resource or name, scopes=tuple(scopes), transport="rest")


def answer_from_json(body: bytes, cls: type[_M]) -> _M:
    """A 2xx REST answer as a ``cls`` message (unknown fields ignored); ValueError names a
    problem."""
    return _from_data(json_loads(body), cls)


def _from_data(data: Any, cls: type[_M]) -> _M:
    _check_objects(data, cast(descriptor.Descriptor, cls.DESCRIPTOR), "the answer")
    answer = cls()
    try:
        json_format.ParseDict(data, answer, ignore_unknown_fields=True)
    except Exception as exc:  # json_format.Parse also turns any failure into a ParseError
        raise ValueError(first_line(exc)) from None
    return answer


def _check_objects(data: Any, desc: descriptor.Descriptor, where: str) -> None:
    """Refuse a non-object where a message is due: json_format takes ``[]`` or ``"x"`` there."""
    if type(data) is not dict:
        raise ValueError(f"{where} must be a JSON object, not {type(data).__name__}")
    for field in desc.fields:
        sub = field.message_type
        if sub is None or sub.full_name.startswith("google.protobuf."):
            continue
        for key in {field.name, field.json_name}:
            value = data.get(key)
            if value is None or (field.is_repeated and type(value) is not list):
                continue  # a default, or json_format's own error
            for item in value if field.is_repeated else (value,):
                _check_objects(item, sub, f"field {key}")
