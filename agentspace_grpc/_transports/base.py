"""The transport interface: one async method per RPC, plus ``aclose``.

A transport lives on one event loop. It raises only :class:`~agentspace_grpc.DataConnectorError`
subclasses (or ``asyncio.CancelledError``); lower-layer exceptions are translated in one place
per transport and chained with ``from``.
"""

from __future__ import annotations

import abc
import ipaddress
import urllib.request
from dataclasses import dataclass
from typing import ClassVar

import grpc

from agentspace_grpc import _proto
from agentspace_grpc._errors import Transport as TransportName
from agentspace_grpc._headers import Headers
from agentspace_grpc._token import AccessToken

__all__ = ["Endpoint", "Transport", "format_host_port", "is_loopback", "proxy_for"]


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """Where one service is reached on both wires, resolved once by the client.

    Attributes:
        grpc_target: ``host:port`` for gRPC, or None when gRPC is not configured.
        grpc_credentials: Channel credentials for TLS, or None for plaintext.
        grpc_options: Channel arguments (proxy, keepalive, user agent).
        rest_base: ``http(s)://host:port`` (no trailing slash) for REST.
        rest_proxy: The proxy URL for REST, or None for a direct connection.
    """

    grpc_target: str | None
    grpc_credentials: grpc.ChannelCredentials | None
    grpc_options: tuple[tuple[str, str | int], ...]
    rest_base: str
    rest_proxy: str | None

    def __repr__(self) -> str:
        # The proxy URL may carry a password: never shown.
        return f"Endpoint(grpc={self.grpc_target!r}, rest={self.rest_base!r})"


def is_loopback(host: str) -> bool:
    """True for a literal loopback address or ``localhost`` itself (never proxied; plaintext).

    Names under ``.localhost`` are not loopback: nothing guarantees that every resolver on the
    way (a proxy's, a container's) keeps them on this machine.
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def proxy_for(scheme: str, host: str, port: int) -> str | None:
    """The proxy for a connection from HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY.

    Loopback is never proxied (a common ``http_proxy`` breakage with grpc).
    """
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if not proxy:
        return None
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(format_host_port(host, port), proxies):
        return None
    return proxy


class Transport(abc.ABC):
    """One wire. Methods take the request, the headers and the remaining time in seconds."""

    kind: ClassVar[TransportName]

    @abc.abstractmethod
    async def acquire_access_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAccessTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> AccessToken:
        """AcquireAccessToken, answered as the client's result."""

    @abc.abstractmethod
    async def acquire_and_store_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAndStoreRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> _proto.AcquireAndStoreRefreshTokenResponse:
        """AcquireAndStoreRefreshToken."""

    @abc.abstractmethod
    async def check_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.CheckRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> _proto.CheckRefreshTokenResponse:
        """CheckRefreshToken."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close connections promptly, cancelling calls in flight; idempotent."""
