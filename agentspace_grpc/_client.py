"""``DataConnectorClient``: the token methods of DataConnectorService and AuthorizationService,
awaited from asyncio.

One client serves many end users: the credentials passed to a call override the client's
default, and every call on a loop shares that loop's channel (gRPC) or session (REST).

Per call, :meth:`DataConnectorClient._invoke` runs the attempts: resolve the ``authorization``
header (refreshing in a thread if needed), send over the chosen wire with the time left, and
on failure decide between falling back to REST (``auto`` mode, when gRPC cannot reach the
service), one credentials refresh (UNAUTHENTICATED), a retry (UNAVAILABLE, within the
deadline) or raising. Identical concurrent acquires share one run of it (single-flight); with
a :class:`~agentspace_grpc.TokenCache`, an acquire the cache can answer sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import ssl
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, final
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import message

from agentspace_grpc import _proto
from agentspace_grpc._cache import TokenCache, cache_key
from agentspace_grpc._credentials import (
    DEFAULT_IDENTITY,
    PENDING,
    Authorizer,
    CredentialsLike,
    check_credentials,
)
from agentspace_grpc._errors import (
    AuthorizationRequired,
    Cancelled,
    ConnectFailed,
    ConnectionBroken,
    DataConnectorError,
    DeadlineExceeded,
    Unauthenticated,
    Unavailable,
    UndecodableAnswer,
    Unimplemented,
    UsageError,
    is_authorization_name,
    redact,
)
from agentspace_grpc._headers import USER_AGENT, Headers, build_headers, check_user_metadata
from agentspace_grpc._options import resolve as resolve_options
from agentspace_grpc._status import ConnectionStatus, status_from_error
from agentspace_grpc._token import AccessToken
from agentspace_grpc._transports import Endpoint, GrpcTransport, RestTransport, Transport
from agentspace_grpc._transports.base import format_host_port, is_loopback, proxy_for
from agentspace_grpc._wire import ROWS, Row, TranscodingError

__all__ = ["DataConnectorClient", "RetryPolicy"]

_log = logging.getLogger("agentspace_grpc")

TransportMode = Literal["grpc", "rest", "auto"]

#: Seconds a call may take, all attempts included, when ``timeout`` is not given.
DEFAULT_TIMEOUT: Final = 60.0
#: Environment variables that point every client at a running emulator.
EMULATOR_HOST_ENV: Final = "AGENTSPACE_EMULATOR_HOST"
EMULATOR_REST_ENV: Final = "AGENTSPACE_EMULATOR_REST"
#: Set to 1 to allow emulator variables that name a non-loopback host.
EMULATOR_INSECURE_ENV: Final = "AGENTSPACE_EMULATOR_INSECURE"

# The service's host is <label>.<universe domain>; the multi-region locations have their own
# labels (the service's documented endpoints).
_DEFAULT_LABEL: Final = "discoveryengine"
_REGIONAL_LABELS: Final = {"us": "us-discoveryengine", "eu": "eu-discoveryengine"}
# After falling back to REST in auto mode, gRPC is tried again after this long (doubling).
_REPROBE_FIRST: Final = 30.0
_REPROBE_MAX: Final = 600.0
# A retry is not started with less time than this left: it could only end in DEADLINE_EXCEEDED
# and hide the error that caused it.
_MIN_ATTEMPT_SECONDS: Final = 0.01
_NAME_CACHE_SIZE: Final = 4096
_HEADER_CACHE_SIZE: Final = 1024

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of UNAVAILABLE answers and connection failures, within the call's deadline.

    The wait before retry *n* (1-based) is drawn uniformly from ``[0, min(max_backoff,
    initial_backoff * multiplier ** (n - 1))]`` ("full jitter"), and is at least the server's
    ``RetryInfo`` delay when it sends one. No retry starts with less than 10 ms of the
    deadline left after the wait: the last error is raised instead. Every RPC but
    CheckRefreshToken changes server state (acquires may rotate a refresh token, stores file
    one), so they are retried only when the request demonstrably did not reach the service
    (connection refused, TLS failure) or the service answered UNAVAILABLE; a connection that
    breaks after the request was sent is retried for CheckRefreshToken only.

    Attributes:
        max_attempts: Attempts in all, the first one included (1 disables retries).
        initial_backoff: Upper bound of the first wait, in seconds.
        max_backoff: Upper bound of any wait, in seconds.
        multiplier: Growth of the bound per retry.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise UsageError("RetryPolicy.max_attempts must be an integer")
        if self.max_attempts < 1:
            raise UsageError("RetryPolicy.max_attempts must be at least 1")
        for field in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"RetryPolicy.{field} must be a number")
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"RetryPolicy.{field} must be a finite number >= 0")
        if self.multiplier < 1:
            raise UsageError("RetryPolicy.multiplier must be at least 1")

    def backoff(self, retry: int) -> float:
        """A jittered wait before retry number ``retry`` (1 for the first retry)."""
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(0.0, bound)


# --------------------------------------------------------------------------------------
# The RPCs (rows of the wire table)
# --------------------------------------------------------------------------------------

_ACQUIRE: Final = ROWS["AcquireAccessToken"]
_STORE: Final = ROWS["AcquireAndStoreRefreshToken"]
_CHECK: Final = ROWS["CheckRefreshToken"]
_ACQUIRE_USER: Final = ROWS["AcquireUserAuthorization"]
_STORE_USER: Final = ROWS["StoreUserAuthorization"]

# The names each service's methods take, and for each RPC the client method that takes a name
# of the other kind, so that a name passed to the wrong method gets an error naming the right one.
_KIND: Final = {
    _proto.SERVICE.full_name: "a data connector",
    _proto.AUTHORIZATION_SERVICE.full_name: "an authorization",
}
_METHOD: Final = {
    _ACQUIRE: "acquire_access_token",
    _STORE: "store_refresh_token",
    _CHECK: "check_refresh_token",
    _ACQUIRE_USER: "acquire_user_authorization",
    _STORE_USER: "store_user_authorization",
}
_OTHER_KIND: Final = {
    _ACQUIRE: _ACQUIRE_USER,
    _STORE: _STORE_USER,
    _CHECK: _ACQUIRE_USER,
    _ACQUIRE_USER: _ACQUIRE,
    _STORE_USER: _STORE,
}


def _retryable(error: DataConnectorError, row: Row) -> bool:
    if isinstance(error, ConnectionBroken):
        # The request may have reached the service, which may have rotated a refresh token.
        return row.idempotent
    return isinstance(error, Unavailable)


def _expand_problem(row: Row, name: str) -> str | None:
    """Why ``name`` cannot be ``row``'s path value, or None when it can."""
    try:
        row.expand(name)
    except TranscodingError as exc:
        return str(exc)
    return None


def _check_redirect_uri(uri: object) -> None:
    if not isinstance(uri, str) or not uri:
        raise UsageError("full_redirect_uri must be the non-empty redirect URI string")


def _sent_secrets(request: message.Message, authorization: str | None) -> list[str]:
    """What a request carried that a server must not be able to echo into an exception."""
    sent = []
    if authorization:
        sent += [authorization, authorization.partition(" ")[2]]
    # The store calls' redirect URI, and the authorization code in it.
    uri = getattr(request, "full_redirect_uri", "")
    if uri:
        sent.append(uri)
        with contextlib.suppress(ValueError):
            sent += parse_qs(urlsplit(uri).query).get("code", [])
    return sent


# --------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------


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


_BASE_CHANNEL_OPTIONS: Final[tuple[tuple[str, str | int], ...]] = (
    ("grpc.primary_user_agent", USER_AGENT["grpc"]),
    # Pings only while calls are in flight, rarely enough not to earn GOAWAY too_many_pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Drop idle connections before typical NAT / proxy idle timeouts do it silently.
    ("grpc.client_idle_timeout_ms", 240_000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How endpoints are chosen: fixed (explicit or emulator) or per region."""

    fixed: Endpoint | None
    rest_override: str | None


# --------------------------------------------------------------------------------------
# Single-flight
# --------------------------------------------------------------------------------------


class _Flight:
    __slots__ = ("deadline", "task", "timers", "waiters")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # the one the shared call runs with
        self.task: asyncio.Task[None] | None = None
        self.waiters: dict[asyncio.Future[Any], float] = {}  # waiter -> its own deadline
        # Timers set when the call ran again for later waiters (None until then).
        self.timers: list[asyncio.TimerHandle] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def stop_timers(self) -> None:
        if self.timers is not None:
            for timer in self.timers:
                timer.cancel()


class _Flights:
    """Concurrent identical calls on one loop share one task; each waiter keeps its deadline.

    The shared call runs with the deadline of the waiter that started it (its retries are
    planned against it). A waiter whose deadline is earlier stops waiting at its own deadline
    (a timer, not a wrapper). When the shared call ends in DEADLINE_EXCEEDED, the waiters whose
    own deadline is later, with time left for an attempt, do not get it: the task runs the call
    once more for them, with the latest of their deadlines (a new call, not a retry), so no
    waiter gets DEADLINE_EXCEEDED because of another's deadline. A waiter that leaves
    (deadline or cancellation) never cancels the task for the others; the task is cancelled
    when no waiter is left. Nothing outlives the call: this is not a cache.
    """

    __slots__ = ("_flights", "_transport_name")

    def __init__(self, transport_name: Callable[[], Literal["grpc", "rest"]]) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._transport_name = transport_name

    async def run(
        self,
        key: Hashable,
        deadline: float,
        start: Callable[..., Coroutine[Any, Any, _T]],
        args: tuple[Any, ...],
    ) -> _T:
        """Join the flight for ``key`` or start one running ``start(*args, deadline)``."""
        loop = asyncio.get_running_loop()
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(deadline)
            flight.task = loop.create_task(self._fly(key, flight, start, args))
            self._flights[key] = flight
        waiter: asyncio.Future[_T] = loop.create_future()
        flight.waiters[waiter] = deadline
        timer = None
        if deadline < flight.deadline:
            timer = loop.call_at(deadline, self._expire, flight, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            flight.waiters.pop(waiter, None)
            task = flight.task
            if not flight.waiters and task is not None and not task.done():
                task.cancel()
                # Like wait_for: return once the shared call has really stopped.
                await asyncio.wait((task,))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _fly(
        self,
        key: Hashable,
        flight: _Flight,
        start: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
    ) -> None:
        # The outcome goes to the waiters from here (not from a done callback), which saves
        # an event-loop turn per call.
        while True:
            try:
                result = await start(*args, flight.deadline)
            except asyncio.CancelledError:
                self._settle(key, flight, None, Cancelled("the call was cancelled"))
                raise
            except DeadlineExceeded as exc:
                if self._again_for_later_waiters(flight, exc):
                    continue
                self._settle(key, flight, None, exc)
            except BaseException as exc:  # handed to every waiter
                self._settle(key, flight, None, exc)
            else:
                self._settle(key, flight, result, None)
            return

    def _again_for_later_waiters(self, flight: _Flight, error: DeadlineExceeded) -> bool:
        """After the shared call ran out of time: True when waiters with a later deadline and
        time for an attempt remain; they stay, with the flight's deadline now the latest of
        theirs, and every other waiter gets ``error``."""
        loop = asyncio.get_running_loop()
        cutoff = max(flight.deadline, loop.time() + _MIN_ATTEMPT_SECONDS)
        later = {w: d for w, d in flight.waiters.items() if d > cutoff and not w.done()}
        if not later:
            return False
        for waiter in flight.waiters:
            if waiter not in later and not waiter.done():
                waiter.set_exception(error)
        flight.waiters = later
        flight.deadline = max(later.values())
        timers = flight.timers if flight.timers is not None else []
        for waiter, deadline in later.items():
            if deadline < flight.deadline:  # they had no timer: their deadline was later
                timers.append(loop.call_at(deadline, self._expire, flight, waiter))
        flight.timers = timers
        _log.debug(
            "a shared call ran out of its deadline; %d waiter(s) with more time share a new one",
            len(later),
        )
        return True

    def _settle(
        self, key: Hashable, flight: _Flight, result: Any, error: BaseException | None
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.timers is not None:
            flight.stop_timers()
        for waiter in flight.waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(result)

    def _expire(self, flight: _Flight, waiter: asyncio.Future[Any]) -> None:
        if waiter.done():
            return
        waiter.set_exception(
            DeadlineExceeded(
                "the call's deadline passed before the answer came",
                transport=self._transport_name(),
            )
        )
        flight.waiters.pop(waiter, None)
        if not flight.waiters:
            flight.cancel()

    def cancel_all(self, reason: str) -> list[asyncio.Task[None]]:
        """Fail every waiter with Cancelled and cancel the tasks (the client is closing)."""
        tasks = []
        for flight in list(self._flights.values()):
            for waiter in flight.waiters:
                if not waiter.done():
                    waiter.set_exception(Cancelled(reason))
            flight.waiters.clear()
            flight.stop_timers()
            flight.cancel()
            if flight.task is not None:
                tasks.append(flight.task)
        self._flights.clear()
        return tasks


# --------------------------------------------------------------------------------------
# Per-loop state
# --------------------------------------------------------------------------------------


class _LoopState:
    """What a client keeps per event loop: the two transports and the flights."""

    __slots__ = ("closed", "fixed", "flights", "grpc", "keeper", "probed", "rest")

    def __init__(self, client: DataConnectorClient, ssl_context: ssl.SSLContext | None) -> None:
        self.grpc = GrpcTransport()
        self.rest = RestTransport(ssl_context=ssl_context)
        # The one transport of a client that is not in auto mode (None in auto mode).
        self.fixed: Transport | None = {"grpc": self.grpc, "rest": self.rest}.get(client._mode)
        self.flights = _Flights(client._transport_name)
        self.closed = False
        self.probed = 0  # the fallback count when gRPC was last probed on this loop
        self.keeper: AsyncGenerator[None, None] | None = None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        tasks = self.flights.cancel_all("the client was closed while the call was in flight")
        await asyncio.gather(self.grpc.aclose(), self.rest.aclose())
        if tasks:
            await asyncio.wait(tasks)


async def _close_at_loop_shutdown(
    client: DataConnectorClient, loop: asyncio.AbstractEventLoop, state: _LoopState
) -> AsyncGenerator[None, None]:
    """An async generator whose ``finally`` runs when ``asyncio.run`` shuts the loop down.

    ``shutdown_asyncgens()`` finalizes every started async generator while the loop still
    runs, so a client left open is closed on its loop (no unclosed session or channel).
    """
    try:
        yield
    finally:
        client._forget_loop(loop, state)
        await state.close()


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


@final
class DataConnectorClient:
    """Async client of the token methods of DataConnectorService (data connectors) and
    AuthorizationService (authorizations), over gRPC or REST.

    Args:
        transport: "auto" (gRPC, falling back to REST when gRPC cannot reach the service),
            "grpc" or "rest".
        credentials: The default credentials: a google-auth ``Credentials`` (synchronous or
            ``google.auth.aio``), an access-token string, or None for Application Default
            Credentials (cloud-platform scope; not looked up when an emulator variable is
            set). Each call may pass its own.
        endpoint: ``host[:port]`` serving both wires (default: the emulator variables when
            set, refused for a non-loopback host unless ``AGENTSPACE_EMULATOR_INSECURE=1``;
            else Discovery Engine, with the ``us`` / ``eu`` hosts chosen from the name).
        rest_endpoint: ``http(s)://host[:port]`` for REST only (the emulator's HTTP port).
        insecure: Allow plaintext to a non-loopback host (loopback is plaintext already,
            unless ``ssl_context`` is given).
        quota_project: The project billed for quota (``x-goog-user-project``).
        retry: The retry policy, or None to make one attempt only.
        single_flight: Share one RPC among identical concurrent acquires.
        ssl_context: TLS trust (a custom CA bundle) for both wires.
        universe_domain: The Google Cloud universe (default: ``GOOGLE_CLOUD_UNIVERSE_DOMAIN``,
            else googleapis.com); it names the default hosts, and credentials of another
            universe are refused.
        client_options: A ``google.api_core`` ``ClientOptions`` or a dict: ``api_endpoint``,
            ``quota_project_id``, ``universe_domain``, ``scopes`` (default cloud-platform) and
            ``credentials_file`` are honoured; any other option that is set is refused.
        token_cache: A :class:`TokenCache` to serve repeated acquires from memory (default
            None: every acquire asks the service).
    """

    def __init__(
        self,
        *,
        transport: TransportMode = "auto",
        credentials: CredentialsLike = None,
        endpoint: str | None = None,
        rest_endpoint: str | None = None,
        insecure: bool = False,
        quota_project: str | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        single_flight: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        universe_domain: str | None = None,
        client_options: object = None,
        token_cache: TokenCache | None = None,
    ) -> None:
        if transport not in ("auto", "grpc", "rest"):
            raise UsageError(f"transport must be 'auto', 'grpc' or 'rest', not {transport!r}")
        if not isinstance(insecure, bool):
            raise UsageError("insecure must be True or False")
        if not isinstance(single_flight, bool):
            raise UsageError("single_flight must be True or False")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise UsageError("retry must be a RetryPolicy or None")
        if quota_project is not None and (not isinstance(quota_project, str) or not quota_project):
            raise UsageError("quota_project must be a non-empty string or None")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise UsageError("ssl_context must be an ssl.SSLContext or None")
        if token_cache is not None and not isinstance(token_cache, TokenCache):
            raise UsageError("token_cache must be a TokenCache or None")
        check_credentials(credentials)
        settings = resolve_options(
            client_options,
            endpoint=endpoint,
            quota_project=quota_project,
            universe_domain=universe_domain,
            credentials=credentials,
        )
        endpoint, quota_project = settings.endpoint, settings.quota_project
        credentials = settings.credentials

        emulator_host = os.environ.get(EMULATOR_HOST_ENV) or None
        emulator_rest = os.environ.get(EMULATOR_REST_ENV) or None
        use_emulator = endpoint is None and (emulator_host or emulator_rest) is not None

        self._mode: TransportMode = transport
        self._insecure = insecure
        self._ssl_context = ssl_context
        self._root_pem = _root_certificates(ssl_context)
        self._quota_project = quota_project
        self._retry = retry
        self._single_flight = single_flight
        self._token_cache = token_cache
        self._universe = settings.universe
        self._auth = Authorizer(
            credentials,
            use_adc=not use_emulator,
            scopes=settings.scopes,
            universe=settings.universe,
        )
        self._plan = self._make_plan(
            endpoint,
            rest_endpoint,
            emulator_host if use_emulator else None,
            emulator_rest if use_emulator else None,
        )
        if self._plan.fixed is not None and self._plan.fixed.grpc_target is None:
            if transport == "grpc":
                raise UsageError(
                    f"{EMULATOR_REST_ENV} is set but {EMULATOR_HOST_ENV} is not: gRPC has no "
                    "target; use transport='rest' or 'auto'"
                )
            self._mode = "rest"
        self._regional: dict[str, Endpoint] = {}
        self._names: dict[tuple[str, str], Endpoint] = {}
        self._acquires: dict[
            tuple[Row, str, str | None, str | None], tuple[Endpoint, message.Message]
        ] = {}
        self._headers: dict[tuple[str | None, str, Headers, str], Headers] = {}
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._last_loop: asyncio.AbstractEventLoop | None = None
        self._last_state: _LoopState | None = None
        self._closed = False
        # auto mode: while time.monotonic() < _rest_until, calls go over REST.
        self._rest_until = 0.0
        self._reprobe = _REPROBE_FIRST
        self._fallbacks = 0

    # ---- construction helpers --------------------------------------------------------

    def _make_plan(
        self,
        endpoint: str | None,
        rest_endpoint: str | None,
        emulator_host: str | None,
        emulator_rest: str | None,
    ) -> _Plan:
        rest_override = None
        if rest_endpoint is not None:
            rest_override = self._check_rest_url(rest_endpoint, "rest_endpoint")
        if endpoint is not None:
            host, port = _split_host_port(endpoint, "endpoint")
            tls = not (self._insecure or (is_loopback(host) and self._ssl_context is None))
            port = port if port is not None else (443 if tls else 80)
            target = format_host_port(host, port)
            rest_base = rest_override or f"{'https' if tls else 'http'}://{target}"
            return _Plan(self._endpoint(target, tls, rest_base), rest_override)
        if emulator_host is not None or emulator_rest is not None:
            # An emulator speaks plaintext and receives the end user's credentials: a variable
            # naming another machine needs its own opt-in, so a stray one cannot send real
            # credentials off this machine.
            emulator_target: str | None = None
            used: dict[str, tuple[str, str]] = {}  # variable -> (host, address)
            if emulator_host is not None:
                host, port = _split_host_port(emulator_host, EMULATOR_HOST_ENV)
                if port is None:
                    raise UsageError(f"{EMULATOR_HOST_ENV} must be 'host:port'")
                emulator_target = format_host_port(host, port)
                used[EMULATOR_HOST_ENV] = (host, emulator_target)
            rest = rest_override
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
            if rest is None:
                rest = f"http://{emulator_target}"
            return _Plan(self._endpoint(emulator_target, False, rest), rest_override)
        return _Plan(None, rest_override)

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
        if (
            parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not self._insecure
            and not emulator
        ):
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

    def _endpoint_for(self, row: Row, name: object) -> Endpoint:
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
            other = _OTHER_KIND[row]
            if _expand_problem(other, name) is None:
                raise UsageError(
                    f"{_METHOD[row]}() takes {kind} name, and {name!r} is "
                    f"{_KIND[other.service]} name: call {_METHOD[other]}()"
                )
            raise UsageError(f"invalid {kind.partition(' ')[2]} name: {problem}")
        endpoint = self._plan.fixed
        if endpoint is None:
            segments = name.split("/")
            location = segments[3] if len(segments) > 3 else "global"
            endpoint = self._regional_endpoint(location)
        if len(self._names) >= _NAME_CACHE_SIZE:
            self._names.clear()
        self._names[key] = endpoint
        return endpoint

    def _acquire_request(
        self, row: Row, name: str, scope: str | None, action: str | None
    ) -> tuple[Endpoint, message.Message]:
        """Validate an acquire's arguments (no I/O), choose the endpoint and build the request.

        Cached: acquires repeat, and a request is never modified once built.
        """
        if scope is not None and not isinstance(scope, str):
            raise UsageError("scope must be a string or None")
        if action is not None and not isinstance(action, str):
            raise UsageError("action must be a string or None")
        endpoint = self._endpoint_for(row, name)
        request: message.Message
        if row is _ACQUIRE:
            request = _proto.AcquireAccessTokenRequest(
                name=name, scope=scope or "", action=action or ""
            )
        else:
            request = _proto.AcquireUserAuthorizationRequest(name=name)
        if len(self._acquires) >= _NAME_CACHE_SIZE:
            self._acquires.clear()
        self._acquires[row, name, scope, action] = endpoint, request
        return endpoint, request

    def _regional_endpoint(self, location: str) -> Endpoint:
        host = f"{_REGIONAL_LABELS.get(location, _DEFAULT_LABEL)}.{self._universe}"
        endpoint = self._regional.get(host)
        if endpoint is None:
            rest = self._plan.rest_override or f"https://{host}"
            endpoint = self._regional[host] = self._endpoint(f"{host}:443", True, rest)
        return endpoint

    # ---- loop state ------------------------------------------------------------------

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        if loop is self._last_loop and self._last_state is not None:
            return self._last_state
        if self._closed:
            raise RuntimeError("this DataConnectorClient is closed")
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(self, self._ssl_context)
            keeper = _close_at_loop_shutdown(self, loop, state)
            # Start the generator so the loop's asyncgen hooks register it (it does not
            # await before its yield, so one synchronous step does it).
            step = keeper.__anext__()
            with contextlib.suppress(StopIteration):
                step.send(None)
            state.keeper = keeper
        self._last_loop, self._last_state = loop, state
        return state

    def _forget_loop(self, loop: asyncio.AbstractEventLoop, state: _LoopState) -> None:
        if self._states.get(loop) is state:
            del self._states[loop]
        if self._last_loop is loop:
            self._last_loop = self._last_state = None

    def _transport_name(self) -> Literal["grpc", "rest"]:
        if self._mode == "grpc":
            return "grpc"
        if self._mode == "rest" or self._rest_until:
            return "rest"
        return "grpc"

    def _pick(self, state: _LoopState) -> Transport:
        """The transport for an attempt in auto mode."""
        if self._rest_until and time.monotonic() < self._rest_until:
            return state.rest
        return state.grpc

    def _fall_back(self, reason: str, *, incompatible: bool = False) -> None:
        now = time.monotonic()
        if self._rest_until and now < self._rest_until:
            return  # a concurrent call did it already
        interval = _REPROBE_MAX if incompatible else self._reprobe
        self._rest_until = now + interval
        self._fallbacks += 1
        self._reprobe = min(self._reprobe * 2, _REPROBE_MAX)
        _log.warning("using REST instead of gRPC for %.0f s: %s", interval, reason)

    # ---- the call loop ---------------------------------------------------------------

    async def _invoke(
        self,
        row: Row,
        request: message.Message,
        name: str,
        credentials: CredentialsLike,
        extra: Headers,
        state: _LoopState,
        endpoint: Endpoint,
        deadline: float,
    ) -> Any:
        loop = asyncio.get_running_loop()
        retry = self._retry
        attempt = 1
        refreshed = False
        while True:
            if state.closed:
                raise Cancelled("the client was closed while the call was in flight")
            transport = state.fixed or self._pick(state)
            if self._rest_until and transport is state.grpc and state.probed != self._fallbacks:
                # The first gRPC call after a REST period probes on a new connection.
                state.probed = self._fallbacks
                await state.grpc.fresh_channel(endpoint)
            ready = self._auth.ready(credentials)
            authorization = (
                await self._auth.authorization(credentials, deadline) if ready is PENDING else ready
            )
            headers_key = (authorization, name, extra, transport.kind)
            headers = self._headers.get(headers_key)
            if headers is None:
                # The quota project follows the credentials; one token comes from one
                # credentials object, so the token identifies it well enough for the cache.
                headers = build_headers(
                    wire=transport.kind,
                    authorization=authorization,
                    name=name,
                    quota_project=self._quota_project or self._auth.quota_project(credentials),
                    extra=extra,
                )
                if len(self._headers) >= _HEADER_CACHE_SIZE:
                    self._headers.clear()
                self._headers[headers_key] = headers
            time_left = deadline - loop.time()
            if time_left <= 0:
                raise DeadlineExceeded(
                    "the call's deadline passed before an attempt could start",
                    transport=transport.kind,
                )
            try:
                response = await transport.call(row, endpoint, request, headers, time_left)
            except DataConnectorError as exc:
                redact(exc, _sent_secrets(request, authorization))
                if state.closed:
                    raise Cancelled(
                        "the client was closed while the call was in flight",
                        transport=transport.kind,
                    ) from exc
                if transport is state.grpc and self._mode == "auto":
                    if isinstance(exc, ConnectFailed | Unimplemented):
                        self._fall_back(f"gRPC cannot reach the service ({exc})")
                        continue
                    if isinstance(exc, UndecodableAnswer):
                        self._fall_back(
                            f"a gRPC answer cannot be used ({exc.message}; the inferred field "
                            "numbers may not match the service)",
                            incompatible=True,
                        )
                        continue
                if isinstance(exc, Unauthenticated) and not refreshed:
                    refreshed = True
                    if await self._auth.refresh_rejected(credentials, authorization, deadline):
                        continue
                if isinstance(exc, AuthorizationRequired) and exc.principal is None:
                    exc.principal = self._auth.principal_hint(credentials)
                if retry is None or attempt >= retry.max_attempts or not _retryable(exc, row):
                    raise
                delay = retry.backoff(attempt)
                if exc.retry_delay is not None:
                    delay = max(delay, exc.retry_delay)
                if loop.time() + delay + _MIN_ATTEMPT_SECONDS >= deadline:
                    raise  # the service's own error says more than a deadline cut short
                _log.debug(
                    "%s attempt %d failed (%s); retrying in %.3f s",
                    row.name,
                    attempt,
                    exc.code.name,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            if self._rest_until and transport is state.grpc:
                self._rest_until = 0.0
                self._reprobe = _REPROBE_FIRST
                _log.info("gRPC reaches the service again; leaving REST")
            return response

    def _deadline(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> float:
        if timeout is None:
            return loop.time() + DEFAULT_TIMEOUT
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise UsageError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return loop.time() + timeout

    # ---- public API ------------------------------------------------------------------

    async def acquire_access_token(
        self,
        name: str,
        *,
        scope: str | None = None,
        action: str | None = None,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AccessToken:
        """A fresh third-party access token for the end user behind ``credentials``.

        Args:
            name: The connector, ``projects/*/locations/*/collections/*/dataConnector``.
            scope: A scope to ask for instead of the connector's default.
            action: The tool or action about to run (the service checks its scopes).
            credentials: The end user's credentials for this call (default: the client's).
            timeout: Seconds for the whole call, retries included (default 60).
            metadata: Extra ``(key, value)`` headers for this call.

        Raises:
            AuthorizationRequired: The user has not authorized the connector yet.
            DataConnectorError: Any other failure (see the exception tree).
            UsageError: Bad arguments, before any I/O.
        """
        return await self._acquire(_ACQUIRE, name, scope, action, credentials, timeout, metadata)

    async def acquire_user_authorization(
        self,
        name: str,
        *,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AccessToken:
        """The end user's access token from an authorization (AuthorizationService).

        Args:
            name: The authorization, ``projects/*/locations/*/authorizations/*``.
            credentials: The end user's credentials for this call (default: the client's).
            timeout: Seconds for the whole call, retries included (default 60).
            metadata: Extra ``(key, value)`` headers for this call.

        Raises:
            AuthorizationRequired: The user must (re)authorize: send them to its
                ``authorization_uri``, then call :meth:`store_user_authorization`.
            DataConnectorError: Any other failure (see the exception tree).
            UsageError: Bad arguments (a data connector's name among them), before any I/O.
        """
        return await self._acquire(_ACQUIRE_USER, name, None, None, credentials, timeout, metadata)

    async def _acquire(
        self,
        row: Row,
        name: str,
        scope: str | None,
        action: str | None,
        credentials: CredentialsLike,
        timeout: float | None,  # noqa: ASYNC109 - the call's overall deadline
        metadata: Sequence[tuple[str, str]],
    ) -> AccessToken:
        """Either acquire: validated before any I/O, identical concurrent ones share a call."""
        loop = asyncio.get_running_loop()
        state = self._last_state if loop is self._last_loop else None
        if state is None:
            state = self._state(loop)
        if timeout is None:
            deadline = loop.time() + DEFAULT_TIMEOUT
        else:
            deadline = self._deadline(loop, timeout)
        try:
            endpoint, request = self._acquires[row, name, scope, action]
        except (KeyError, TypeError):  # not seen yet, or unhashable (refused there)
            endpoint, request = self._acquire_request(row, name, scope, action)
        if credentials is not None:
            check_credentials(credentials)
        extra = check_user_metadata(metadata) if metadata else ()
        cache = self._token_cache
        if cache is not None:
            # Keyed by the header the call would send: refresh the credentials first if due.
            authorization = self._auth.ready(credentials)
            if authorization is PENDING:
                authorization = await self._auth.authorization(credentials, deadline)
            key = cache_key(name, scope, action, authorization)
            cached = cache.get(key)
            if cached is not None:
                return cached
        if self._single_flight:
            identity = DEFAULT_IDENTITY if credentials is None else credentials
            token: AccessToken = await state.flights.run(
                (row, name, scope, action, key if cache is not None else identity, extra),
                deadline,
                self._invoke,
                (row, request, name, credentials, extra, state, endpoint),
            )
        else:
            token = await self._invoke(
                row, request, name, credentials, extra, state, endpoint, deadline
            )
        if cache is not None:
            cache.put(key, token)
        return token

    def invalidate(self, token: AccessToken | str) -> None:
        """Drop ``token`` from the token cache, after the third party rejected it.

        The next acquire asks the service again, which may still answer with the same token
        from its own cache: a second rejection means the user must authorize again. Without
        a token cache this does nothing.
        """
        value = token.access_token if isinstance(token, AccessToken) else token
        if not isinstance(value, str):
            raise UsageError("invalidate() takes the AccessToken (or its token string)")
        if self._token_cache is not None:
            self._token_cache.discard(value)

    async def connection_status(
        self,
        name: str,
        *,
        scope: str | None = None,
        action: str | None = None,
        credentials: CredentialsLike = None,
        consent_uri: Callable[[str, CredentialsLike], Awaitable[str]] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
    ) -> ConnectionStatus:
        """Whether the end user behind ``credentials`` can use ``name`` (a connector or an
        authorization) now.

        Acquires a token and discards it (a cached one counts, as it is what the next acquire
        returns); never calls the deprecated CheckRefreshToken.

        Args:
            consent_uri: ``async (resource, credentials) -> str`` building the URL that
                starts the consent flow; called when the state needs consent, with the
                credentials in effect, and its answer goes in ``authorization_uri``.

        Raises:
            DataConnectorError: An error that says nothing about the connection (bad
                credentials, an unknown connector, ...).
            UsageError: Bad arguments, before any I/O.
        """
        if consent_uri is not None and not callable(consent_uri):
            raise UsageError("consent_uri must be an async callable (resource, credentials)")
        try:
            if isinstance(name, str) and is_authorization_name(name):
                if scope is not None or action is not None:
                    raise UsageError("an authorization takes no scope or action")
                token = await self.acquire_user_authorization(
                    name, credentials=credentials, timeout=timeout
                )
            else:
                token = await self.acquire_access_token(
                    name, scope=scope, action=action, credentials=credentials, timeout=timeout
                )
        except DataConnectorError as exc:
            status = status_from_error(exc)
            if status is None:
                raise
            if consent_uri is None or not status.needs_consent or status.authorization_uri:
                return status
            uri = await consent_uri(name, self._auth.effective(credentials))
            if not isinstance(uri, str) or not uri:
                raise UsageError("consent_uri must return the consent URL as a string") from None
            return replace(status, authorization_uri=uri)
        return ConnectionStatus("connected", scopes=token.scopes)

    async def store_refresh_token(
        self,
        name: str,
        full_redirect_uri: str,
        *,
        scopes: Sequence[str] = (),
        instance_uri: str | None = None,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
    ) -> dict[str, str | int | bool]:
        """Exchange the authorization code in ``full_redirect_uri`` and store the refresh token.

        Call it with the credentials of the end user who consented: the service files the
        token under the caller's identity.

        Returns:
            The third party's extra token-answer fields (``additional_oauth_responses``).
        """
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        deadline = self._deadline(loop, timeout)
        endpoint = self._endpoint_for(_STORE, name)
        _check_redirect_uri(full_redirect_uri)
        if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
            raise UsageError("scopes must be a sequence of strings (not one string)")
        if instance_uri is not None and not isinstance(instance_uri, str):
            raise UsageError("instance_uri must be a string or None")
        if credentials is not None:
            check_credentials(credentials)
        request = _proto.AcquireAndStoreRefreshTokenRequest(
            name=name,
            scopes=list(scopes),
            full_redirect_uri=full_redirect_uri,
            instance_uri=instance_uri or "",
        )
        response: _proto.AcquireAndStoreRefreshTokenResponse
        response = await self._invoke(
            _STORE, request, name, credentials, (), state, endpoint, deadline
        )
        extra: dict[str, str | int | bool] = {}
        for item in response.additional_oauth_responses:
            kind = item.WhichOneof("value")
            if kind is not None:
                extra[item.key] = getattr(item, kind)
        return extra

    async def store_user_authorization(
        self,
        name: str,
        full_redirect_uri: str,
        *,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
    ) -> None:
        """Store the end user's authorization of ``name`` (AuthorizationService).

        Call it, with the credentials of the user who authorized, with the full URI the
        authorization URI redirected them to: the service exchanges the code in it and files
        the result under the caller's identity.
        """
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        deadline = self._deadline(loop, timeout)
        endpoint = self._endpoint_for(_STORE_USER, name)
        _check_redirect_uri(full_redirect_uri)
        if credentials is not None:
            check_credentials(credentials)
        request = _proto.StoreUserAuthorizationRequest(
            name=name, full_redirect_uri=full_redirect_uri
        )
        await self._invoke(_STORE_USER, request, name, credentials, (), state, endpoint, deadline)

    async def check_refresh_token(
        self,
        name: str,
        *,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
    ) -> tuple[str, ...]:
        """Deprecated by the service: the scopes of the user's stored refresh token.

        Raises:
            AuthorizationRequired: Nothing is stored for this user and connector.
        """
        warnings.warn(
            "CheckRefreshToken is deprecated by the service: call acquire_access_token() and "
            "handle AuthorizationRequired instead",
            DeprecationWarning,
            stacklevel=2,
        )
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        deadline = self._deadline(loop, timeout)
        endpoint = self._endpoint_for(_CHECK, name)
        if credentials is not None:
            check_credentials(credentials)
        request = _proto.CheckRefreshTokenRequest(name=name)
        response: _proto.CheckRefreshTokenResponse
        response = await self._invoke(
            _CHECK, request, name, credentials, (), state, endpoint, deadline
        )
        return tuple(response.refresh_token_info.scopes)

    async def aclose(self) -> None:
        """Close connections promptly (calls in flight end with Cancelled); idempotent."""
        self._closed = True
        self._last_loop = self._last_state = None
        loop = asyncio.get_running_loop()
        for state_loop, state in list(self._states.items()):
            if state_loop is loop:
                if state.keeper is not None:
                    await state.keeper.aclose()
                else:
                    self._forget_loop(state_loop, state)
                    await state.close()
            elif not state_loop.is_closed():
                # A loop in another thread: close there (fire and forget).
                asyncio.run_coroutine_threadsafe(state.close(), state_loop)
                self._forget_loop(state_loop, state)
            else:
                self._forget_loop(state_loop, state)
        self._auth.close()

    async def __aenter__(self) -> DataConnectorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        fixed = self._plan.fixed
        where = repr(fixed) if fixed is not None else "Discovery Engine"
        return f"DataConnectorClient(transport={self._mode!r}, endpoint={where})"
