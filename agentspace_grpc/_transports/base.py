"""The transport interface: one async ``call`` for any RPC of the table, plus ``aclose``.

A transport lives on one event loop. It raises only :class:`~agentspace_grpc.DataConnectorError`
subclasses (or ``asyncio.CancelledError``); its library's exceptions are translated in one place
per transport, where a failure below the service becomes :class:`~agentspace_grpc.ConnectFailed`,
:class:`~agentspace_grpc.ConnectionBroken` or :class:`~agentspace_grpc.UndecodableAnswer`.
"""

from __future__ import annotations

import abc
import ipaddress
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import message

from agentspace_grpc._errors import Transport as TransportName
from agentspace_grpc._headers import Headers
from agentspace_grpc._wire import Row

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
    """One wire."""

    kind: ClassVar[TransportName]

    @abc.abstractmethod
    async def call(
        self,
        row: Row,
        endpoint: Endpoint,
        request: message.Message,
        headers: Headers,
        time_left: float,
    ) -> Any:
        """One attempt of ``row``'s RPC within ``time_left`` seconds: the row's result."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close connections promptly, cancelling calls in flight; idempotent."""
