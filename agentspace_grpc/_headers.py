"""Request headers, built in one place for both wires.

gRPC sends them as call metadata and REST as HTTP headers, with the same names and values:
``authorization``, ``x-goog-request-params``, ``x-goog-api-client`` and, when a quota project
is set, ``x-goog-user-project``, followed by the caller's own metadata. The names are lower
case (gRPC requires it; HTTP does not care).

Only the wire's own token differs: ``x-goog-api-client`` names ``grpc/<version>`` on gRPC and
``rest/aiohttp@<version>`` on REST, and the ``user-agent`` carries the same tokens after the
library's (REST sends it as a header; gRPC sets it on the channel, where grpc appends its own).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlencode

import aiohttp
import grpc
from google import protobuf

from agentspace_grpc._errors import Transport, UsageError

__all__ = [
    "API_CLIENT",
    "USER_AGENT",
    "VERSION",
    "Headers",
    "build_headers",
    "check_user_metadata",
    "request_params",
]

Headers = tuple[tuple[str, str], ...]


def _library_version() -> str:
    try:
        return importlib.metadata.version("agentspace-grpc")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "0+unknown"


#: This library's version, as installed.
VERSION: Final = _library_version()
_LIBRARY: Final = f"agentspace-grpc/{VERSION}"
# Python, the wire (in Google's format: grpc/<v>, rest/<http library>@<v>) and protobuf.
_PYTHON: Final = f"gl-python/{platform.python_version()}"
_PROTOBUF: Final = f"pb/{protobuf.__version__}"
_TOKENS: Final[dict[Transport, str]] = {
    "grpc": f"{_PYTHON} grpc/{grpc.__version__} {_PROTOBUF}",
    "rest": f"{_PYTHON} rest/aiohttp@{aiohttp.__version__} {_PROTOBUF}",
}
#: ``x-goog-api-client`` per wire: Python, the wire, protobuf and this library.
API_CLIENT: Final[dict[Transport, str]] = {wire: f"{t} {_LIBRARY}" for wire, t in _TOKENS.items()}
#: ``user-agent`` per wire: this library first, then the same tokens.
USER_AGENT: Final[dict[Transport, str]] = {wire: f"{_LIBRARY} {t}" for wire, t in _TOKENS.items()}

_API_CLIENT_KEY: Final = "x-goog-api-client"
# Headers the client owns; the caller's metadata may not set them.
_RESERVED: Final = frozenset(
    {"authorization", "x-goog-request-params", "x-goog-user-project", "content-type", "host"}
)
_USER_AGENT_KEY: Final = "user-agent"
_KEY: Final = re.compile(r"[0-9a-z_.\-]+")
_VALUE: Final = re.compile(r"[\x20-\x7e]*")


@functools.lru_cache(maxsize=4096)
def request_params(name: str) -> str:
    """``x-goog-request-params`` for a resource name, encoded as google-api-core does."""
    return urlencode({"name": name}, safe="/")


def check_user_metadata(metadata: Sequence[tuple[str, str]]) -> Headers:
    """Validate the caller's extra metadata; the result can be passed to :func:`build_headers`.

    Keys must be lower-case ASCII header names and values printable ASCII, so the same pairs
    are valid on both wires; keys the client sets itself are refused (credentials travel
    through ``credentials=``), except ``x-goog-api-client``, whose value is appended to ours.
    """
    if isinstance(metadata, str | bytes):
        raise UsageError("metadata must be a sequence of (key, value) pairs, not a string")
    checked: list[tuple[str, str]] = []
    for pair in metadata:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise UsageError("metadata must be a sequence of (key, value) pairs")
        key, value = pair
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.endswith("-bin"):
            raise UsageError(
                f"metadata key {key!r} is not a lower-case ASCII header name "
                "(binary '-bin' keys are not supported: REST cannot carry them)"
            )
        if key == _USER_AGENT_KEY:
            # gRPC cannot send it per call; x-goog-api-client reaches the service on both.
            raise UsageError(
                "metadata key 'user-agent' is set by the client; name your product in "
                "'x-goog-api-client' instead (its value is appended to the client's)"
            )
        if key in _RESERVED:
            raise UsageError(
                f"metadata key {key!r} is set by the client; pass credentials with "
                "credentials= and the quota project with quota_project="
            )
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            # The value is not echoed: it may be a secret.
            raise UsageError(f"the value of metadata key {key!r} is not printable ASCII text")
        checked.append((key, value))
    return tuple(checked)


def build_headers(
    *,
    wire: Transport,
    authorization: str | None,
    name: str,
    quota_project: str | None,
    extra: Headers = (),
) -> Headers:
    """All headers of one call, for either wire.

    Args:
        wire: The wire the headers are for.
        authorization: The full ``authorization`` value ("Bearer ..."), or None to send none.
        name: The connector's resource name (routing header).
        quota_project: The project billed for quota, if any.
        extra: The caller's metadata, checked by :func:`check_user_metadata`.
    """
    api_client = API_CLIENT[wire]
    if extra:
        rest: list[tuple[str, str]] = []
        for key, value in extra:
            if key == _API_CLIENT_KEY:
                api_client = f"{api_client} {value}"
            else:
                rest.append((key, value))
        extra = tuple(rest)
    headers: Headers = (
        ("x-goog-request-params", request_params(name)),
        (_API_CLIENT_KEY, api_client),
    )
    if wire == "rest":
        headers = (*headers, (_USER_AGENT_KEY, USER_AGENT["rest"]))
    if authorization is not None:
        headers = (("authorization", authorization), *headers)
    if quota_project:
        headers = (*headers, ("x-goog-user-project", quota_project))
    if extra:
        headers = (*headers, *extra)
    return headers
