"""Values every stack and both constant-answer servers agree on."""

from __future__ import annotations

import platform
from typing import Final

import grpc

from agentspace_grpc import __version__

CONNECTOR: Final = "projects/bench/locations/global/collections/default_collection/dataConnector"
# A made-up bearer token for the constant-answer servers; it grants nothing anywhere.
BENCH_TOKEN: Final = "bench-caller-token"  # noqa: S105 (a fake, for loopback only)
# The access token the constant-answer servers hand back.
ANSWER_TOKEN: Final = "bench-access-token"  # noqa: S105 (a fake)
ANSWER_SCOPES: Final = ("read:jira-work", "offline_access")
# The same x-goog-api-client value for the stacks that do not build their own.
API_CLIENT: Final = (
    f"gl-python/{platform.python_version()} grpc/{grpc.__version__} agentspace-bench/{__version__}"
)
ROUTING_HEADER: Final = "x-goog-request-params"
REQUIRED_HEADERS: Final = ("authorization", ROUTING_HEADER, "x-goog-api-client")
INFLIGHT: Final = 64
# The "many users" and "many connectors" workloads (see _run.WORKLOADS).
USERS: Final = 1000
CONNECTORS: Final = 100


def user_tokens(count: int) -> tuple[str, ...]:
    """Distinct made-up bearer tokens, about as long as Google's access tokens (~200 chars)."""
    return tuple(f"bench-user-{i:05d}-{'x' * 180}" for i in range(count))


def connector_names(count: int) -> tuple[str, ...]:
    """Distinct data connector resource names."""
    prefix = CONNECTOR.rsplit("/", 2)[0]  # projects/.../collections
    return tuple(f"{prefix}/connector-{i:04d}/dataConnector" for i in range(count))
