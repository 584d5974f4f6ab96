"""``DataConnectorClient``: the token methods of DataConnectorService and AuthorizationService,
awaited from asyncio. One client serves many end users (per-call credentials), and every call
on a loop shares that loop's channel (gRPC) or session (REST).

The two acquires go to :class:`~agentspace_grpc._calls.Acquires`, which checks their arguments
(no I/O), answers from the opt-in :class:`~agentspace_grpc.TokenCache` when it can, and lets
identical concurrent acquires share one call (``_flights``). The other methods check their
arguments here and choose the endpoint (``_endpoints``) and the loop's state (``_loops``). Every
call then runs in :class:`~agentspace_grpc._calls.CallLoop`, which carries out what
:func:`~agentspace_grpc._policy.decide` says after a failure.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, final

from agentspace_grpc import _proto
from agentspace_grpc._cache import TokenCache
from agentspace_grpc._calls import Acquires, CallLoop
from agentspace_grpc._credentials import (
    Authorizer,
    CredentialsLike,
    check_credentials,
)
from agentspace_grpc._endpoints import Endpoints, emulator_variables
from agentspace_grpc._errors import UsageError
from agentspace_grpc._loops import Loops
from agentspace_grpc._options import resolve as resolve_options
from agentspace_grpc._policy import (
    Fallback,
    RetryPolicy,
    TransportMode,
    deadline_after,
)
from agentspace_grpc._status import ConnectionStatus, connection_status
from agentspace_grpc._telemetry import Observer
from agentspace_grpc._token import AccessToken
from agentspace_grpc._wire import ROWS, Row

__all__ = ["DataConnectorClient", "RetryPolicy"]

_DEFAULT_RETRY: Final = RetryPolicy()

_ACQUIRE: Final = ROWS["AcquireAccessToken"]
_STORE: Final = ROWS["AcquireAndStoreRefreshToken"]
_CHECK: Final = ROWS["CheckRefreshToken"]
_ACQUIRE_USER: Final = ROWS["AcquireUserAuthorization"]
_STORE_USER: Final = ROWS["StoreUserAuthorization"]


def _check_redirect_uri(uri: object) -> None:
    if not isinstance(uri, str) or not uri:
        raise UsageError("full_redirect_uri must be the non-empty redirect URI string")


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
            ``quota_project_id``, ``universe_domain``, ``scopes`` (default cloud-platform),
            ``credentials_file`` and ``tracer_provider`` are honoured; any other option that is
            set is refused.
        token_cache: A :class:`TokenCache` to serve repeated acquires from memory (default
            None: every acquire asks the service).
        tracer_provider, meter_provider: OpenTelemetry providers for the calls' spans and
            metrics (default: the global ones; needs the ``otel`` extra). ``client_options``
            may carry ``tracer_provider`` instead.
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
        token_cache: TokenCache | None = None,
        tracer_provider: object = None,
        meter_provider: object = None,
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
            tracer_provider=tracer_provider,
        )
        endpoint, quota_project = settings.endpoint, settings.quota_project
        credentials = settings.credentials

        if token_cache is not None and not isinstance(token_cache, TokenCache):
            raise UsageError("token_cache must be a TokenCache or None")
        emulator = emulator_variables() if endpoint is None else (None, None)
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
        self._calls = CallLoop(self._auth, self._fallback, retry, quota_project)
        self._observer = Observer(settings.tracer_provider, meter_provider)
        self._acquires = Acquires(
            self._calls,
            self._auth,
            self._endpoints,
            self._loops,
            self._observer,
            token_cache=token_cache,
            single_flight=single_flight,
        )

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
        return await self._acquires.run(
            _ACQUIRE, name, scope, action, credentials, timeout, metadata
        )

    async def acquire_user_authorization(
        self,
        name: str,
        *,
        credentials: CredentialsLike = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's overall deadline
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AccessToken:
        """The end user's access token from authorization ``name``
        (``projects/*/locations/*/authorizations/*``); the other arguments as for
        :meth:`acquire_access_token`.

        Raises:
            AuthorizationRequired: The user must (re)authorize: send them to its
                ``authorization_uri``, then call :meth:`store_user_authorization`.
            DataConnectorError, UsageError: As for :meth:`acquire_access_token`.
        """
        return await self._acquires.run(
            _ACQUIRE_USER, name, None, None, credentials, timeout, metadata
        )

    def invalidate(self, token: AccessToken | str) -> None:
        """Drop ``token`` from the token cache, after the third party rejected it.

        The next acquire asks the service again, which may still answer with the same token
        from its own cache: a second rejection means the user must authorize again. Without
        a token cache this does nothing.
        """
        value = token.access_token if isinstance(token, AccessToken) else token
        if not isinstance(value, str):
            raise UsageError("invalidate() takes the AccessToken (or its token string)")
        if self._acquires.token_cache is not None:
            self._acquires.token_cache.discard(value)

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
        authorization) now, from an acquire whose token is discarded (never CheckRefreshToken).

        ``consent_uri``, an ``async (resource, credentials) -> str``, builds the URL for
        :attr:`ConnectionStatus.authorization_uri` when consent is needed. Errors that say
        nothing about the connection (bad credentials, an unknown name) are raised.
        """
        return await connection_status(
            self,
            name,
            scope=scope,
            action=action,
            credentials=credentials,
            effective=lambda: self._auth.effective(credentials),
            consent_uri=consent_uri,
            timeout=timeout,
        )

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
        _check_redirect_uri(full_redirect_uri)
        if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
            raise UsageError("scopes must be a sequence of strings (not one string)")
        if instance_uri is not None and not isinstance(instance_uri, str):
            raise UsageError("instance_uri must be a string or None")
        response: _proto.AcquireAndStoreRefreshTokenResponse = await self._call(
            _STORE,
            name,
            credentials,
            timeout,
            scopes=list(scopes),
            full_redirect_uri=full_redirect_uri,
            instance_uri=instance_uri or "",
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
        _check_redirect_uri(full_redirect_uri)
        await self._call(
            _STORE_USER, name, credentials, timeout, full_redirect_uri=full_redirect_uri
        )

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
        response: _proto.CheckRefreshTokenResponse = await self._call(
            _CHECK, name, credentials, timeout
        )
        return tuple(response.refresh_token_info.scopes)

    async def _call(
        self,
        row: Row,
        name: str,
        credentials: CredentialsLike,
        timeout: float | None,  # noqa: ASYNC109 - the call's overall deadline
        **fields: object,
    ) -> Any:
        """One call of a method that is not an acquire, after its arguments are checked (the
        name and the credentials here, before any I/O)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        deadline = deadline_after(loop.time(), timeout)
        endpoint = self._endpoints.for_name(row, name)
        if credentials is not None:
            check_credentials(credentials)
        request = row.request_class(**{row.field: name}, **fields)
        record = self._observer.start(row)
        try:
            response = await self._calls.run(
                row, request, name, credentials, (), state, endpoint, record, deadline
            )
        except BaseException as exc:
            if record is not None:
                record.ended(exc)
            raise
        if record is not None:
            record.ended(None)
        return response

    async def aclose(self) -> None:
        """Close connections promptly (calls in flight end with Cancelled); idempotent."""
        await self._loops.aclose()
        self._auth.close()
        self._acquires.forget()
        self._calls.forget()

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
