"""Asyncio client and local emulator for Discovery Engine's DataConnectorService token methods."""

from __future__ import annotations

from agentspace_grpc._cache import TokenCache
from agentspace_grpc._client import DataConnectorClient, RetryPolicy
from agentspace_grpc._errors import (
    Aborted,
    AlreadyExists,
    AuthorizationRequired,
    Cancelled,
    ConnectFailed,
    ConnectionBroken,
    DataConnectorError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    TokenRejected,
    Unauthenticated,
    Unavailable,
    UndecodableAnswer,
    Unimplemented,
    Unknown,
    UsageError,
)
from agentspace_grpc._headers import VERSION
from agentspace_grpc._status import ConnectionStatus
from agentspace_grpc._token import AccessToken

__version__ = VERSION  # as installed (one source: the package metadata)

__all__ = [
    "Aborted",
    "AccessToken",
    "AlreadyExists",
    "AuthorizationRequired",
    "Cancelled",
    "ConnectFailed",
    "ConnectionBroken",
    "ConnectionStatus",
    "DataConnectorClient",
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
    "RetryPolicy",
    "TokenCache",
    "TokenRejected",
    "Unauthenticated",
    "Unavailable",
    "UndecodableAnswer",
    "Unimplemented",
    "Unknown",
    "UsageError",
    "__version__",
]
