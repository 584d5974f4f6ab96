"""The client's exceptions: one tree for both wires.

A server error raises the same exception whether it came over gRPC (``grpc-status-details-bin``)
or REST (Google's JSON error envelope): both are turned into a ``google.rpc.Status`` first and
:func:`from_status` is the one place that maps a status to a class::

    Exception
    ├── DataConnectorError            code, message, details, reason, domain, metadata,
    │   │                             retry_delay, transport, http_status
    │   ├── Cancelled                 CANCELLED (also: the client was closed mid-call)
    │   ├── Unknown                   UNKNOWN
    │   ├── InvalidArgument           INVALID_ARGUMENT
    │   ├── DeadlineExceeded          DEADLINE_EXCEEDED (the call's overall deadline)
    │   ├── NotFound                  NOT_FOUND
    │   │   └── AuthorizationRequired the end user must authorize: nothing stored for them,
    │   │                             or an authorization answered with its URI
    │   ├── AlreadyExists             ALREADY_EXISTS
    │   ├── PermissionDenied          PERMISSION_DENIED
    │   ├── ResourceExhausted         RESOURCE_EXHAUSTED (also: an oversize response)
    │   ├── FailedPrecondition        FAILED_PRECONDITION (SCOPES_MISSING, REFRESH_TOKEN_REVOKED)
    │   ├── Aborted                   ABORTED
    │   ├── OutOfRange                OUT_OF_RANGE
    │   ├── Unimplemented             UNIMPLEMENTED
    │   ├── Internal                  INTERNAL
    │   │   └── UndecodableAnswer     a success the client cannot use (malformed, tokenless)
    │   ├── Unavailable               UNAVAILABLE
    │   │   ├── ConnectFailed         no connection (refused, DNS, TLS): the request was not sent
    │   │   └── ConnectionBroken      the connection failed mid-call, or a proxy answered:
    │   │                             the request may have reached the service
    │   ├── DataLoss                  DATA_LOSS
    │   └── Unauthenticated           UNAUTHENTICATED (also: credentials that cannot refresh)
    ├── ValueError
    │   └── UsageError                misuse (a malformed name, bad arguments), before any I/O
    └── TokenRejected                 raised by a caller's tool: a third party refused a token

The three wire-failure classes say where a call failed, which the retry and fallback rules
read; they stay an ``Unavailable`` or an ``Internal`` for code that does not care.

Messages never carry tokens: they are built from the server's status message, the connector
name and the principal, never from headers or request bodies. A server (or a proxy) can still
echo what it was sent: ``_redact`` takes that out of every error a call raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import grpc
from google.protobuf import any_pb2, descriptor_pool, message, message_factory
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from agentspace_grpc._token import AccessToken

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AuthorizationRequired",
    "Cancelled",
    "ConnectFailed",
    "ConnectionBroken",
    "DataConnectorError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "TokenRejected",
    "Unauthenticated",
    "Unavailable",
    "UndecodableAnswer",
    "Unimplemented",
    "Unknown",
    "UsageError",
    "first_line",
    "from_status",
    "is_authorization_name",
]

Transport = Literal["grpc", "rest"]

REFRESH_TOKEN_NOT_FOUND: Final = "REFRESH_TOKEN_NOT_FOUND"  # noqa: S105 - a reason code

# Keep the google.rpc detail types registered in the default pool.
DETAILS_FILE: Final = error_details_pb2.DESCRIPTOR


#: What replaces a secret in server-supplied text.
REDACTED: Final = "[redacted]"
#: The message of a call that ``aclose()`` ended.
CLOSED_MID_CALL: Final = "the client was closed while the call was in flight"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, at most 200 characters (its type's name if none)."""
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class UsageError(ValueError):
    """The client was called wrongly (a malformed name, a bad argument); nothing was sent."""


class TokenRejected(Exception):
    """A third party answered 401 to an access token: raise it from a tool that used one.

    Whoever runs the tool (an agent framework adapter) drops the token with
    ``client.invalidate(token)`` and acquires again; if the new token is refused too, the
    user must authorize again. ``str()`` and ``repr()`` never show the token: a message that
    quotes it has it replaced.

    Attributes:
        message: What the tool said (without the token).
        token: The refused token (an ``AccessToken`` or the token string), or None.
    """

    def __init__(self, message: str = "", *, token: AccessToken | str | None = None) -> None:
        message = str(message)
        value = getattr(token, "access_token", token)
        if isinstance(value, str) and value:
            message = message.replace(value, REDACTED)
        super().__init__(message)
        self.message = message
        self.token = token

    def __str__(self) -> str:
        return self.message or "the third party rejected the access token (HTTP 401)"

    def __repr__(self) -> str:
        return f"TokenRejected({self.message!r})"

    def __reduce__(self) -> Any:
        return type(self), (self.message,)  # the token stays in this process


class DataConnectorError(Exception):
    """An RPC failed: the service answered with an error, or the wire failed.

    Attributes:
        code: The canonical status code.
        message: The server's message (or the client's description of a wire failure).
        details: The ``google.rpc`` detail messages, unpacked; unknown types are kept packed
            as ``google.protobuf.Any``.
        reason, domain, metadata: From the ``google.rpc.ErrorInfo`` detail, if any.
        retry_delay: Seconds, from the ``google.rpc.RetryInfo`` detail, if any.
        transport: The wire that carried the call, "grpc" or "rest" (None: no wire was used).
        http_status: The HTTP status of a REST answer (None over gRPC).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        details: tuple[message.Message, ...] = (),
        transport: Transport | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.transport: Transport | None = transport
        self.http_status = http_status
        self.reason: str | None = None
        self.domain: str | None = None
        self.metadata: Mapping[str, str] = {}
        self.retry_delay: float | None = None
        for detail in details:
            if isinstance(detail, error_details_pb2.ErrorInfo):
                self.reason = detail.reason or None
                self.domain = detail.domain or None
                self.metadata = dict(detail.metadata)
            elif isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
                self.retry_delay = detail.retry_delay.ToNanoseconds() / 1e9

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [reason={self.reason}]"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"reason={self.reason!r}, transport={self.transport!r}, "
            f"http_status={self.http_status!r})"
        )


class Cancelled(DataConnectorError):
    """The call was cancelled (by the server, or because the client was closed)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(DataConnectorError):
    """UNKNOWN."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(DataConnectorError):
    """INVALID_ARGUMENT: the service rejected the request."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(DataConnectorError):
    """DEADLINE_EXCEEDED: the call's overall deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DataConnectorError):
    """NOT_FOUND (for example ``CONNECTOR_NOT_FOUND``)."""

    code = grpc.StatusCode.NOT_FOUND


class AuthorizationRequired(NotFound):
    """The end user must authorize (again) before a token can be acquired for them.

    Raised on the token-reading calls for NOT_FOUND with reason ``REFRESH_TOKEN_NOT_FOUND``, or
    with no reason at all (what the hosted service sends), and for an AcquireUserAuthorization
    success that carries an authorization URI and no token (then ``http_status`` is 200 over
    REST and ``reason`` is None).

    Attributes:
        resource: The data connector's or the authorization's resource name.
        connector: The same as ``resource``.
        authorization_uri: Where to send the end user to authorize (from an authorization's
            answer; None otherwise). Not a secret: it is bound to the user who asked.
        principal: Who the call was made as, where known (the server's ErrorInfo metadata
            ``principal`` or ``user``, else the account the credentials name); a service
            account here usually means the end user's own credentials were not passed.
    """

    def __init__(
        self,
        message: str,
        *,
        resource: str,
        authorization_uri: str | None = None,
        principal: str | None = None,
        details: tuple[message.Message, ...] = (),
        transport: Transport | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, details=details, transport=transport, http_status=http_status)
        self.resource = resource
        self.authorization_uri = authorization_uri
        self.principal = (
            principal or self.metadata.get("principal") or self.metadata.get("user") or None
        )

    @property
    def connector(self) -> str:
        """The same as :attr:`resource`."""
        return self.resource

    def __str__(self) -> str:
        who = self.principal or "the end user"
        if self.authorization_uri is not None:  # the message is the client's own advice
            return f"{self.code.name}: {who} has not authorized {self.resource}: {self.message}"
        if is_authorization_name(self.resource):
            return (
                f"{self.code.name}: {who} has not authorized {self.resource}: "
                "acquire_user_authorization() answers with an authorization URI to send the "
                "user to; then call store_user_authorization() with the URI they are "
                f"redirected to (server: {self.message})"
            )
        return (
            f"{self.code.name}: {who} has not authorized data connector {self.resource}: "
            f"send the user through the connector's consent flow and store the result with "
            f"store_refresh_token() (server: {self.message})"
        )


def is_authorization_name(name: str) -> bool:
    """True when ``name`` has the form of an authorization's name
    (``projects/*/locations/*/authorizations/*``), not a data connector's."""
    segments = name.split("/")
    return len(segments) == 6 and segments[4] == "authorizations"


class AlreadyExists(DataConnectorError):
    """ALREADY_EXISTS."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DataConnectorError):
    """PERMISSION_DENIED: the caller may not use this connector."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DataConnectorError):
    """RESOURCE_EXHAUSTED: quota, or a response larger than the client accepts."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(DataConnectorError):
    """FAILED_PRECONDITION: for example ``SCOPES_MISSING`` or ``REFRESH_TOKEN_REVOKED``."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DataConnectorError):
    """ABORTED."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(DataConnectorError):
    """OUT_OF_RANGE."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(DataConnectorError):
    """UNIMPLEMENTED: the endpoint does not serve this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DataConnectorError):
    """INTERNAL: a server fault, or an answer the client cannot use."""

    code = grpc.StatusCode.INTERNAL


class UndecodableAnswer(Internal):
    """A successful answer the client cannot use: it does not decode as the expected message,
    or it lacks what the call reads (an access token). Over gRPC, whose field numbers are
    inferred, ``auto`` mode moves to REST on it."""


class Unavailable(DataConnectorError):
    """UNAVAILABLE: the service (or the third party behind it) or the wire failed."""

    code = grpc.StatusCode.UNAVAILABLE


class ConnectFailed(Unavailable):
    """No connection could be made (refused, unresolvable, TLS or ALPN failure, a proxy's
    refusal): the request provably never left the client, so any call may be retried."""


class ConnectionBroken(Unavailable):
    """The connection failed during the call (reset, closed, cut-off answer), or something
    other than the service answered UNAVAILABLE (a gateway's page): the request may have
    reached the service, so only an idempotent call is retried."""


class DataLoss(DataConnectorError):
    """DATA_LOSS."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(DataConnectorError):
    """UNAUTHENTICATED: missing, invalid or expired credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


# The class of each canonical code derives from DataConnectorError directly (the other
# classes refine one of those).
_CLASSES: Final[dict[int, type[DataConnectorError]]] = {
    cls.code.value[0]: cls for cls in DataConnectorError.__subclasses__()
}


def unpack_details(details: Sequence[any_pb2.Any]) -> tuple[message.Message, ...]:
    """Unpack ``google.rpc`` status details; types this process does not know, and details that
    do not decode, stay packed."""
    unpacked: list[message.Message] = []
    pool = descriptor_pool.Default()
    for packed in details:
        try:
            desc = pool.FindMessageTypeByName(packed.TypeName())
            detail = message_factory.GetMessageClass(desc).FromString(packed.value)
        except (KeyError, message.DecodeError):
            detail = packed
        unpacked.append(detail)
    return tuple(unpacked)


def from_status(
    status: status_pb2.Status,
    *,
    transport: Transport,
    http_status: int | None = None,
    connector: str | None = None,
    from_service: bool = True,
) -> DataConnectorError:
    """The exception for a ``google.rpc.Status``, whichever wire carried it.

    Args:
        status: The status (code, message, details).
        transport: The wire, recorded on the exception.
        http_status: The HTTP status of a REST answer.
        connector: The connector the call read a token for; given, a NOT_FOUND from the service
            with reason ``REFRESH_TOKEN_NOT_FOUND`` or no reason becomes
            :class:`AuthorizationRequired`.
        from_service: False when the status was made up from something that is not a Google
            API error (a proxy's HTML page): such a NOT_FOUND is never read as "not authorized",
            and such an UNAVAILABLE is a :class:`ConnectionBroken`.
    """
    details = unpack_details(status.details)
    message_text = status.message or f"the server sent status {status.code} without a message"
    code = status.code
    if code == grpc.StatusCode.NOT_FOUND.value[0] and connector is not None and from_service:
        reasons = [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
        if not reasons or not reasons[0] or reasons[0] == REFRESH_TOKEN_NOT_FOUND:
            return AuthorizationRequired(
                message_text,
                resource=connector,
                details=details,
                transport=transport,
                http_status=http_status,
            )
    cls = _CLASSES.get(code, Unknown)
    if cls is Unavailable and not from_service:
        cls = ConnectionBroken
    return cls(message_text, details=details, transport=transport, http_status=http_status)
