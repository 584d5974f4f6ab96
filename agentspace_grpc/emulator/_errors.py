"""The service error that both fronts turn into a ``google.rpc.Status``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN: Final = "discoveryengine.googleapis.com"

REFRESH_TOKEN_NOT_FOUND: Final = "REFRESH_TOKEN_NOT_FOUND"  # noqa: S105
CONNECTOR_NOT_FOUND: Final = "CONNECTOR_NOT_FOUND"
AUTHORIZATION_NOT_FOUND: Final = "AUTHORIZATION_NOT_FOUND"
SCOPES_MISSING: Final = "SCOPES_MISSING"
REFRESH_TOKEN_REVOKED: Final = "REFRESH_TOKEN_REVOKED"  # noqa: S105
UPSTREAM_UNAVAILABLE: Final = "UPSTREAM_UNAVAILABLE"


class ServiceError(Exception):
    """A canonical error: code (``google.rpc.Code``), message, ErrorInfo and RetryInfo.

    Messages never carry a token or a client secret; they may name the connector and the
    end user, because those are what a caller needs to fix the problem.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    def __repr__(self) -> str:
        name = code_pb2.Code.Name(self.code) if self.code in code_pb2.Code.values() else self.code
        return f"ServiceError({name}, {self.message!r}, reason={self.reason!r})"

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` with ErrorInfo and, when known, RetryInfo."""
        status = status_pb2.Status(code=self.code, message=self.message)
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=self.metadata
            )
            status.details.add().Pack(info)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(max(0.0, self.retry_after) * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


def invalid_argument(message: str) -> ServiceError:
    """INVALID_ARGUMENT without a reason."""
    return ServiceError(code_pb2.INVALID_ARGUMENT, message)


def unauthenticated(message: str) -> ServiceError:
    """UNAUTHENTICATED: missing, unknown or expired end-user identity."""
    return ServiceError(code_pb2.UNAUTHENTICATED, message)


def internal(incident: str) -> ServiceError:
    """INTERNAL for an unexpected failure; the log has the details under ``incident``."""
    return ServiceError(
        code_pb2.INTERNAL,
        f"internal error in the emulator (incident {incident}); see the emulator's log",
    )
