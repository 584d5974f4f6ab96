"""``DataConnectorClient``: DataConnectorService's token methods, awaited from asyncio.

One client serves many end users: the credentials passed to a call override the client's
default, and every call on a loop shares that loop's channel (gRPC) or session (REST).

The public methods check their arguments (no I/O), choose the endpoint (``_endpoints``) and
the loop's state (``_loops``), and run :meth:`DataConnectorClient._invoke`, the call loop:
resolve the ``authorization`` header, send over the wire with the time left, and after a failure
carry out what :func:`~agentspace_grpc._policy.decide` says (fall back to REST, refresh the
credentials once, retry after a wait, or raise). Identical concurrent acquires share one run of
it (``_flights``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import warnings
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Literal, final

from google.protobuf import message

from agentspace_grpc import _proto
from agentspace_grpc._credentials import (
    DEFAULT_IDENTITY,
    PENDING,
    Authorizer,
    CredentialsLike,
    check_credentials,
)
from agentspace_grpc._endpoints import (
    Endpoints,
    emulator_variables,
)
from agentspace_grpc._errors import (
    AuthorizationRequired,
    Cancelled,
    DataConnectorError,
    DeadlineExceeded,
    UsageError,
)
from agentspace_grpc._headers import Headers, build_headers, check_user_metadata
from agentspace_grpc._loops import Loops, LoopState
from agentspace_grpc._options import resolve as resolve_options
from agentspace_grpc._policy import (
    DEFAULT_TIMEOUT,
    REFRESH,
    Fallback,
    RetryPolicy,
    TransportMode,
    deadline_after,
    decide,
)
from agentspace_grpc._redact import redact, sent_secrets
from agentspace_grpc._token import AccessToken
from agentspace_grpc._transports import Endpoint
from agentspace_grpc._wire import ROWS, Row

__all__ = ["DataConnectorClient", "RetryPolicy"]

_log = logging.getLogger("agentspace_grpc")

_DEFAULT_RETRY: Final = RetryPolicy()
_NAME_CACHE_SIZE: Final = 4096
_HEADER_CACHE_SIZE: Final = 1024
_CLOSED_MID_CALL: Final = "the client was closed while the call was in flight"

_ACQUIRE: Final = ROWS["AcquireAccessToken"]
_STORE: Final = ROWS["AcquireAndStoreRefreshToken"]
_CHECK: Final = ROWS["CheckRefreshToken"]


@final
class DataConnectorClient:
    """Async client of DataConnectorService's token methods, over gRPC or REST.

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
        retry: RetryPolicy | None = _DEFAULT_RETRY,
        single_flight: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        universe_domain: str | None = None,
        client_options: object = None,
    ) -> None:
        settings = resolve_options(
            client_options,
            transport=transport,
            insecure=insecure,
            single_flight=single_flight,
            retry=retry,
            quota_project=quota_project,
            ssl_context=ssl_context,
            credentials=credentials,
            endpoint=endpoint,
            universe_domain=universe_domain,
        )
        endpoint, quota_project = settings.endpoint, settings.quota_project
        credentials = settings.credentials

        emulator = emulator_variables() if endpoint is None else (None, None)
        self._retry = retry
        self._single_flight = single_flight
        self._quota_project = quota_project
        self._auth = Authorizer(
            credentials,
            use_adc=emulator == (None, None),
            scopes=settings.scopes,
            universe=settings.universe,
        )
        self._endpoints = Endpoints(
            endpoint=endpoint,
            rest_endpoint=rest_endpoint,
            emulator=emulator,
            insecure=insecure,
            ssl_context=ssl_context,
            universe=settings.universe,
        )
        # The wire choice (auto mode's fallback), shared by the client's loops.
        self._fallback = Fallback(self._endpoints.mode(transport))
        self._loops = Loops(self._fallback, ssl_context)
        self._acquires: dict[
            tuple[str, str | None, str | None], tuple[Endpoint, _proto.AcquireAccessTokenRequest]
        ] = {}
        self._headers: dict[tuple[str | None, str, Headers, str], Headers] = {}

    # ---- the call loop ---------------------------------------------------------------

    def _acquire_request(
        self, name: str, scope: str | None, action: str | None
    ) -> tuple[Endpoint, _proto.AcquireAccessTokenRequest]:
        """Validate an acquire's arguments (no I/O), choose the endpoint and build the request.

        Cached: acquires repeat, and a request is never modified once built.
        """
        if scope is not None and not isinstance(scope, str):
            raise UsageError("scope must be a string or None")
        if action is not None and not isinstance(action, str):
            raise UsageError("action must be a string or None")
        endpoint = self._endpoints.for_name(_ACQUIRE, name)
        request = _proto.AcquireAccessTokenRequest(
            name=name, scope=scope or "", action=action or ""
        )
        if len(self._acquires) >= _NAME_CACHE_SIZE:
            self._acquires.clear()
        self._acquires[name, scope, action] = endpoint, request
        return endpoint, request

    async def _invoke(
        self,
        row: Row,
        request: message.Message,
        name: str,
        credentials: CredentialsLike,
        extra: Headers,
        state: LoopState,
        endpoint: Endpoint,
        deadline: float,
    ) -> Any:
        loop = asyncio.get_running_loop()
        attempt = 1
        refreshed = False
        while True:
            if state.closed:
                raise Cancelled(_CLOSED_MID_CALL)
            transport = state.fixed or (
                state.rest
                if self._fallback.rest_until and time.monotonic() < self._fallback.rest_until
                else state.grpc
            )
            if (
                self._fallback.rest_until
                and transport is state.grpc
                and state.probed != self._fallback.count
            ):
                # The first gRPC call after a REST period probes on a new connection.
                state.probed = self._fallback.count
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
                redact(exc, sent_secrets(request, authorization))
                if state.closed:
                    raise Cancelled(_CLOSED_MID_CALL, transport=transport.kind) from exc
                action = decide(
                    exc,
                    row=row,
                    attempt=attempt,
                    time_left=deadline - loop.time(),
                    mode=self._fallback.mode,
                    wire=transport.kind,
                    can_refresh=not refreshed and self._auth.refreshable(credentials),
                    retry=self._retry,
                    draw=random.random(),
                )
                if action is REFRESH:
                    refreshed = True
                    await self._auth.refresh_rejected(credentials, authorization, deadline)
                    continue
                if action.kind == "fall back":
                    period = self._fallback.fall_back(
                        time.monotonic(), incompatible=action.incompatible
                    )
                    if period is not None:
                        _log.warning(
                            "using REST instead of gRPC for %.0f s: %s", period, action.reason
                        )
                    continue
                if action.kind == "retry":
                    _log.debug(
                        "%s attempt %d failed (%s); retrying in %.3f s",
                        row.name,
                        attempt,
                        exc.code.name,
                        action.delay,
                    )
                    await asyncio.sleep(action.delay)
                    attempt += 1
                    continue
                if isinstance(exc, AuthorizationRequired) and exc.principal is None:
                    exc.principal = self._auth.principal_hint(credentials)
                raise
            if self._fallback.rest_until and transport is state.grpc:
                self._fallback.recovered()
                _log.info("gRPC reaches the service again; leaving REST")
            return response

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
        loop = asyncio.get_running_loop()
        state = self._loops.last_state if loop is self._loops.last_loop else None
        if state is None:
            state = self._loops.get(loop)
        if timeout is None:
            deadline = loop.time() + DEFAULT_TIMEOUT
        else:
            deadline = deadline_after(loop.time(), timeout)
        try:
            endpoint, request = self._acquires[name, scope, action]
        except (KeyError, TypeError):  # not seen yet, or unhashable (refused there)
            endpoint, request = self._acquire_request(name, scope, action)
        if credentials is not None:
            check_credentials(credentials)
        extra = check_user_metadata(metadata) if metadata else ()
        if self._single_flight:
            identity = DEFAULT_IDENTITY if credentials is None else credentials
            token: AccessToken = await state.flights.run(
                (name, scope, action, identity, extra),
                deadline,
                self._invoke,
                (_ACQUIRE, request, name, credentials, extra, state, endpoint),
            )
            return token
        token = await self._invoke(
            _ACQUIRE, request, name, credentials, extra, state, endpoint, deadline
        )
        return token

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
        state = self._loops.get(loop)
        deadline = deadline_after(loop.time(), timeout)
        endpoint = self._endpoints.for_name(_STORE, name)
        if not isinstance(full_redirect_uri, str) or not full_redirect_uri:
            raise UsageError("full_redirect_uri must be the non-empty redirect URI string")
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
        state = self._loops.get(loop)
        deadline = deadline_after(loop.time(), timeout)
        endpoint = self._endpoints.for_name(_CHECK, name)
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
        await self._loops.aclose()
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

    @property
    def current_transport(self) -> Literal["grpc", "rest"]:
        """The wire calls go over now; in ``auto`` mode, "rest" from a fallback until gRPC
        answers again (a token or an error says which wire carried its own call)."""
        return self._fallback.wire()

    def __repr__(self) -> str:
        fixed = self._endpoints.fixed
        where = repr(fixed) if fixed is not None else "Discovery Engine"
        return f"DataConnectorClient(transport={self._fallback.mode!r}, endpoint={where})"
