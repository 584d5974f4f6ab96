"""Where calls go: one :class:`Endpoint` (both wires) per host, chosen without I/O.

An explicit ``endpoint=`` or the emulator variables fix it; otherwise it is Discovery Engine's
host for the connector name's location (``us`` and ``eu`` have their own) in the client's
universe domain. Loopback hosts are plaintext (unless an ``ssl_context`` is given) and never
go through a proxy; a remote plaintext host needs ``insecure=True``, a remote emulator
``AGENTSPACE_EMULATOR_INSECURE=1``. TLS trust is the ``ssl_context``'s CAs on both wires.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Final
from urllib.parse import urlsplit

import grpc

from agentspace_grpc import _proto
from agentspace_grpc._errors import UsageError
from agentspace_grpc._headers import USER_AGENT
from agentspace_grpc._policy import TransportMode
from agentspace_grpc._transports.base import Endpoint, format_host_port, is_loopback, proxy_for
from agentspace_grpc._wire import ROWS, Row, TranscodingError

__all__ = [
    "EMULATOR_HOST_ENV",
    "EMULATOR_INSECURE_ENV",
    "EMULATOR_REST_ENV",
    "Endpoints",
    "emulator_variables",
]

_log = logging.getLogger("agentspace_grpc")

#: Environment variables that point every client at a running emulator.
EMULATOR_HOST_ENV: Final = "AGENTSPACE_EMULATOR_HOST"
EMULATOR_REST_ENV: Final = "AGENTSPACE_EMULATOR_REST"
#: Set to 1 to allow emulator variables that name a non-loopback host.
EMULATOR_INSECURE_ENV: Final = "AGENTSPACE_EMULATOR_INSECURE"

# The service's host is <label>.<universe domain>; the multi-region locations have their own
# labels (the service's documented endpoints).
_DEFAULT_LABEL: Final = "discoveryengine"
_REGIONAL_LABELS: Final = {"us": "us-discoveryengine", "eu": "eu-discoveryengine"}
_NAME_CACHE_SIZE: Final = 4096

_BASE_CHANNEL_OPTIONS: Final[tuple[tuple[str, str | int], ...]] = (
    ("grpc.primary_user_agent", USER_AGENT["grpc"]),
    # Pings only while calls are in flight, rarely enough not to earn GOAWAY too_many_pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Drop idle connections before typical NAT / proxy idle timeouts do it silently.
    ("grpc.client_idle_timeout_ms", 240_000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    # Subchannels of this client's own: by default grpc shares them process-wide, so the new
    # channel that probes gRPC after a fallback would reuse a connection attempt still in its
    # reconnect backoff and fail with the old error, without trying.
    ("grpc.use_local_subchannel_pool", 1),
)


def emulator_variables() -> tuple[str | None, str | None]:
    """The emulator variables' values (gRPC ``host:port``, REST base URL); unset or empty: None."""
    return os.environ.get(EMULATOR_HOST_ENV) or None, os.environ.get(EMULATOR_REST_ENV) or None


# The names each service's methods take, and for each RPC the client method that takes a name
# of the other kind, so that a name passed to the wrong method gets an error naming the right one.
_KIND: Final = {
    _proto.SERVICE.full_name: "a data connector",
    _proto.AUTHORIZATION_SERVICE.full_name: "an authorization",
}
_METHOD: Final = {
    "AcquireAccessToken": "acquire_access_token",
    "AcquireAndStoreRefreshToken": "store_refresh_token",
    "CheckRefreshToken": "check_refresh_token",
    "AcquireUserAuthorization": "acquire_user_authorization",
    "StoreUserAuthorization": "store_user_authorization",
}
_OTHER_KIND: Final = {
    "AcquireAccessToken": "AcquireUserAuthorization",
    "AcquireAndStoreRefreshToken": "StoreUserAuthorization",
    "CheckRefreshToken": "AcquireUserAuthorization",
    "AcquireUserAuthorization": "AcquireAccessToken",
    "StoreUserAuthorization": "AcquireAndStoreRefreshToken",
}


def _expand_problem(row: Row, name: str) -> str | None:
    """Why ``name`` cannot be ``row``'s path value, or None when it can."""
    try:
        row.expand(name)
    except TranscodingError as exc:
        return str(exc)
    except UnicodeEncodeError:  # neither a URL nor a protobuf string can carry it
        return f"{name!r} is not valid Unicode: it holds a lone surrogate"
    return None


class Endpoints:
    """The endpoints of one client.

    Args:
        endpoint: ``host[:port]`` serving both wires, or None.
        rest_endpoint: The REST base URL, overriding the one derived from the host.
        emulator: The emulator variables' values (used when ``endpoint`` is None).
        insecure: Plaintext to a non-loopback host is allowed.
        ssl_context: The TLS trust of both wires (None: the system's, and grpc's own roots).
        universe: The universe domain that names Discovery Engine's hosts.
    """

    def __init__(
        self,
        *,
        endpoint: str | None,
        rest_endpoint: str | None,
        emulator: tuple[str | None, str | None],
        insecure: bool,
        ssl_context: ssl.SSLContext | None,
        universe: str,
    ) -> None:
        self._insecure = insecure
        self._root_pem = _root_certificates(ssl_context)
        self._universe = universe
        self._regional: dict[str, Endpoint] = {}
        self._names: dict[tuple[str, str], Endpoint] = {}
        self._rest_override = None
        if rest_endpoint is not None:
            self._rest_override = self._check_rest_url(rest_endpoint, "rest_endpoint")
        #: The one endpoint of every call (explicit or the emulator), or None: per location.
        self.fixed: Endpoint | None = None
        if endpoint is not None:
            host, port = _split_host_port(endpoint, "endpoint")
            tls = not (insecure or (is_loopback(host) and ssl_context is None))
            target = format_host_port(host, port if port is not None else (443 if tls else 80))
            rest_base = self._rest_override or f"{'https' if tls else 'http'}://{target}"
            self.fixed = self._endpoint(target, tls, rest_base)
        elif emulator != (None, None):
            self.fixed = self._emulator(*emulator)

    def mode(self, transport: TransportMode) -> TransportMode:
        """The client's transport mode: REST only when the emulator variables give no gRPC
        target (refused for ``transport="grpc"``)."""
        if self.fixed is None or self.fixed.grpc_target is not None:
            return transport
        if transport == "grpc":
            raise UsageError(
                f"{EMULATOR_REST_ENV} is set but {EMULATOR_HOST_ENV} is not: gRPC has no "
                "target; use transport='rest' or 'auto'"
            )
        return "rest"

    def for_name(self, row: Row, name: object) -> Endpoint:
        """Validate a resource name for ``row`` (no I/O) and choose its endpoint; cached."""
        kind = _KIND[row.service]
        if not isinstance(name, str):
            raise UsageError(f"name must be {kind} resource name, not {type(name)}")
        key = (row.name, name)
        endpoint = self._names.get(key)
        if endpoint is not None:
            return endpoint
        problem = _expand_problem(row, name)
        if problem is not None:
            other = ROWS[_OTHER_KIND[row.name]]
            if _expand_problem(other, name) is None:
                raise UsageError(
                    f"{_METHOD[row.name]}() takes {kind} name, and {name!r} is "
                    f"{_KIND[other.service]} name: call {_METHOD[other.name]}()"
                )
            raise UsageError(f"invalid {kind.partition(' ')[2]} name: {problem}")
        endpoint = self.fixed
        if endpoint is None:
            segments = name.split("/")
            location = segments[3] if len(segments) > 3 else "global"
            host = f"{_REGIONAL_LABELS.get(location, _DEFAULT_LABEL)}.{self._universe}"
            endpoint = self._regional.get(host)
            if endpoint is None:
                rest = self._rest_override or f"https://{host}"
                endpoint = self._regional[host] = self._endpoint(f"{host}:443", True, rest)
        if len(self._names) >= _NAME_CACHE_SIZE:
            self._names.clear()
        self._names[key] = endpoint
        return endpoint

    def _emulator(self, emulator_host: str | None, emulator_rest: str | None) -> Endpoint:
        # An emulator speaks plaintext and receives the end user's credentials: a variable
        # naming another machine needs its own opt-in, so a stray one cannot send real
        # credentials off this machine.
        target: str | None = None
        used: dict[str, tuple[str, str]] = {}  # variable -> (host, address)
        if emulator_host is not None:
            host, port = _split_host_port(emulator_host, EMULATOR_HOST_ENV)
            if port is None:
                raise UsageError(f"{EMULATOR_HOST_ENV} must be 'host:port'")
            target = format_host_port(host, port)
            used[EMULATOR_HOST_ENV] = (host, target)
        rest = self._rest_override
        if rest is None and emulator_rest is not None:
            rest = self._check_rest_url(emulator_rest, EMULATOR_REST_ENV, emulator=True)
            used[EMULATOR_REST_ENV] = (urlsplit(rest).hostname or "", rest)
        remote = [f"{v}={a}" for v, (host, a) in used.items() if not is_loopback(host)]
        if remote and os.environ.get(EMULATOR_INSECURE_ENV) != "1":
            raise UsageError(
                f"not a loopback address: {', '.join(remote)}; the end user's credentials "
                "would leave this machine for an emulator. Unset the variable, or set "
                f"{EMULATOR_INSECURE_ENV}=1 if that host is an emulator you trust"
            )
        named = ", ".join(f"{v}={address}" for v, (_, address) in used.items())
        _log.warning("using the emulator at %s, not Discovery Engine", named)
        return self._endpoint(target, False, rest or f"http://{target}")

    def _check_rest_url(self, url: str, what: str, *, emulator: bool = False) -> str:
        if not isinstance(url, str):
            raise UsageError(f"{what} must be an 'http(s)://host[:port]' string")
        parts = urlsplit(url)
        # Checked before anything echoes the URL: a password must not reach an error.
        if parts.query or parts.fragment or parts.username or parts.password:
            raise UsageError(f"{what} must not carry credentials, a query or a fragment")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{what} must be an 'http(s)://host[:port]' URL, got {url!r}")
        try:
            _ = parts.port
        except ValueError:
            raise UsageError(f"{what} {url!r} has an invalid port") from None
        plaintext = parts.scheme == "http" and not is_loopback(parts.hostname)
        if plaintext and not self._insecure and not emulator:
            raise UsageError(
                f"{what} {url!r} is plaintext HTTP to a non-loopback host; use https:// or "
                "pass insecure=True"
            )
        return url.rstrip("/")

    def _endpoint(self, grpc_target: str | None, tls: bool, rest_base: str) -> Endpoint:
        options = list(_BASE_CHANNEL_OPTIONS)
        credentials = None
        if grpc_target is not None:
            host, port = _split_host_port(grpc_target, "endpoint")
            proxy = proxy_for("https" if tls else "http", host, port or 443)
            if proxy:
                options.append(("grpc.http_proxy", proxy))
            else:
                # Also stops grpc from reading the proxy variables on its own.
                options.append(("grpc.enable_http_proxy", 0))
            if tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._root_pem)
        parts = urlsplit(rest_base)
        assert parts.hostname is not None
        rest_port = parts.port or (443 if parts.scheme == "https" else 80)
        return Endpoint(
            grpc_target=grpc_target,
            grpc_credentials=credentials,
            grpc_options=tuple(options),
            rest_base=rest_base,
            rest_proxy=proxy_for(parts.scheme, parts.hostname, rest_port),
        )


def _split_host_port(value: str, what: str) -> tuple[str, int | None]:
    if not isinstance(value, str) or not value or value != value.strip():
        raise UsageError(f"{what} must be a 'host[:port]' string")
    if "@" in value:  # user info: a password must not be echoed in the error
        raise UsageError(f"{what} must not carry credentials ('user@'); it takes 'host[:port]'")
    if "://" in value or "/" in value:
        raise UsageError(
            f"{what} takes 'host[:port]', not a URL (got {value!r}); "
            "a REST base URL goes in rest_endpoint="
        )
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{what} {value!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise UsageError(f"{what} {value!r} has no host")
    return host, port


def _root_certificates(context: ssl.SSLContext | None) -> bytes | None:
    """The CA certificates of an SSLContext as PEM, for grpc (None: grpc's own roots)."""
    if context is None:
        return None
    ders = context.get_ca_certs(binary_form=True)
    if not ders:
        return None
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in ders).encode("ascii")
