"""How a call runs: the acquire path, and the call loop of every RPC's attempts.

:class:`Acquires` checks an acquire's arguments before any I/O, answers from the token cache
when the client has one, and lets identical concurrent acquires share one call (``_flights``).
:class:`CallLoop` runs one RPC's attempts: each resolves the ``authorization`` header
(refreshing the credentials if due), sends over the wire the fallback state picks with the time
left, and after a failure does what :func:`~agentspace_grpc._policy.decide` says: fall back to
REST, refresh the credentials once, retry after a wait, or raise. What a request sent is taken
out of its errors first (:mod:`._redact`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Final

from google.protobuf import message

from agentspace_grpc._cache import CacheKeys, TokenCache
from agentspace_grpc._credentials import (
    DEFAULT_IDENTITY,
    PENDING,
    Authorizer,
    CredentialsLike,
    check_credentials,
)
from agentspace_grpc._endpoints import Endpoints
from agentspace_grpc._errors import (
    CLOSED_MID_CALL,
    AuthorizationRequired,
    Cancelled,
    DataConnectorError,
    DeadlineExceeded,
    UsageError,
)
from agentspace_grpc._headers import Headers, build_headers, check_user_metadata
from agentspace_grpc._loops import Loops, LoopState
from agentspace_grpc._policy import (
    DEFAULT_TIMEOUT,
    REFRESH,
    Fallback,
    RetryPolicy,
    deadline_after,
    decide,
)
from agentspace_grpc._redact import redact, sent_secrets
from agentspace_grpc._telemetry import Call, Observer
from agentspace_grpc._token import AccessToken
from agentspace_grpc._transports import Endpoint
from agentspace_grpc._wire import Row

__all__ = ["Acquires", "CallLoop"]

_log = logging.getLogger("agentspace_grpc")

_HEADER_CACHE_SIZE: Final = 1024
_REQUESTS_KEPT: Final = 4096


class CallLoop:
    """Runs RPCs for one client: its credentials, fallback state, retry policy and headers."""

    __slots__ = ("_auth", "_fallback", "_headers", "_quota_project", "_retry")

    def __init__(
        self,
        auth: Authorizer,
        fallback: Fallback,
        retry: RetryPolicy | None,
        quota_project: str | None,
    ) -> None:
        self._auth = auth
        self._fallback = fallback
        self._retry = retry
        self._quota_project = quota_project
        self._headers: dict[tuple[str | None, str, Headers, str], Headers] = {}

    def forget(self) -> None:
        """Drop the remembered headers (the client is closing)."""
        self._headers.clear()

    async def run(
        self,
        row: Row,
        request: message.Message,
        name: str,
        credentials: CredentialsLike,
        extra: Headers,
        state: LoopState,
        endpoint: Endpoint,
        record: Call | None,
        deadline: float,
    ) -> Any:
        """Send ``request`` until it is answered or the policy gives up; ``record`` observes
        each attempt (None: nothing does)."""
        loop = asyncio.get_running_loop()
        attempt = 1
        refreshed = False
        while True:
            if state.closed:
                raise Cancelled(CLOSED_MID_CALL)
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
            authorization = self._auth.ready(credentials)
            if authorization is PENDING:
                authorization = await self._auth.authorization(credentials, deadline)
                if state.closed:  # closed meanwhile: remember nothing more
                    raise Cancelled(CLOSED_MID_CALL, transport=transport.kind)
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
            span = None
            if record is not None:
                span, headers = record.attempt(transport.kind, headers)
            try:
                response = await transport.call(row, endpoint, request, headers, time_left)
            except DataConnectorError as exc:
                redact(exc, sent_secrets(request, authorization))
                action = None
                if not state.closed:
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
                if span is not None:
                    Call.attempt_ended(span, exc, "raise" if action is None else action.kind)
                if action is None:
                    raise Cancelled(CLOSED_MID_CALL, transport=transport.kind) from exc
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
            except BaseException as exc:  # cancelled
                if span is not None:
                    Call.attempt_ended(span, exc, "raise")
                raise
            if span is not None:
                Call.attempt_ended(span, None, None)
            if self._fallback.rest_until and transport is state.grpc:
                self._fallback.recovered()
                _log.info("gRPC reaches the service again; leaving REST")
            return response


class Acquires:
    """The acquire path of one client: arguments checked before any I/O, then the token
    cache (when the client has one), single-flight (when on) and the call loop.

    Requests are kept per (method, name, scope, action): acquires repeat, and a request is
    never modified once built.
    """

    __slots__ = (
        "_auth",
        "_calls",
        "_endpoints",
        "_keys",
        "_loops",
        "_observer",
        "_requests",
        "_single_flight",
        "token_cache",
    )

    def __init__(
        self,
        calls: CallLoop,
        auth: Authorizer,
        endpoints: Endpoints,
        loops: Loops,
        observer: Observer,
        *,
        token_cache: TokenCache | None,
        single_flight: bool,
    ) -> None:
        self._calls = calls
        self._auth = auth
        self._endpoints = endpoints
        self._loops = loops
        self._observer = observer
        self.token_cache = token_cache
        self._keys = CacheKeys()
        self._single_flight = single_flight
        self._requests: dict[
            tuple[Row, str, str | None, str | None], tuple[Endpoint, message.Message]
        ] = {}

    def forget(self) -> None:
        """Drop the remembered requests and header digests (the client is closing)."""
        self._requests.clear()
        self._keys.clear()

    def _request(
        self, row: Row, name: str, scope: str | None, action: str | None
    ) -> tuple[Endpoint, message.Message]:
        """Check an acquire's arguments (no I/O), choose the endpoint and build the request."""
        if scope is not None and not isinstance(scope, str):
            raise UsageError("scope must be a string or None")
        if action is not None and not isinstance(action, str):
            raise UsageError("action must be a string or None")
        endpoint = self._endpoints.for_name(row, name)
        fields = {row.field: name}
        if scope:  # only AcquireAccessToken has a scope and an action
            fields["scope"] = scope
        if action:
            fields["action"] = action
        request = row.request_class(**fields)
        if len(self._requests) >= _REQUESTS_KEPT:
            self._requests.clear()
        self._requests[row, name, scope, action] = endpoint, request
        return endpoint, request

    async def run(
        self,
        row: Row,
        name: str,
        scope: str | None,
        action: str | None,
        credentials: CredentialsLike,
        timeout: float | None,  # noqa: ASYNC109 - the call's overall deadline
        metadata: Sequence[tuple[str, str]],
    ) -> AccessToken:
        """Either acquire (AcquireAccessToken, AcquireUserAuthorization)."""
        loop = asyncio.get_running_loop()
        loops = self._loops
        state = loops.last_state if loop is loops.last_loop else None
        if state is None:
            state = loops.get(loop)
        if timeout is None:
            deadline = loop.time() + DEFAULT_TIMEOUT
        else:
            deadline = deadline_after(loop.time(), timeout)
        try:
            endpoint, request = self._requests[row, name, scope, action]
        except (KeyError, TypeError):  # not seen yet, or unhashable (refused there)
            endpoint, request = self._request(row, name, scope, action)
        if credentials is not None:
            check_credentials(credentials)
        extra = check_user_metadata(metadata) if metadata else ()
        record = self._observer.start(row)
        try:
            cache = self.token_cache
            if cache is not None:
                # Keyed by the header the call would send: refresh the credentials first if due.
                authorization = self._auth.ready(credentials)
                if authorization is PENDING:
                    authorization = await self._auth.authorization(credentials, deadline)
                    if state.closed:  # closed meanwhile: remember nothing more
                        raise Cancelled(CLOSED_MID_CALL)
                key = self._keys(name, scope, action, authorization)
                cached = cache.get(key)
                if cached is not None:
                    if record is not None:
                        record.ended(None, cached.transport, cached=True)
                    return cached
            if self._single_flight:
                identity = DEFAULT_IDENTITY if credentials is None else credentials
                flight = (row, name, scope, action, key if cache is not None else identity, extra)
                if record is not None and record.span is not None:
                    shared = state.flights.observer(flight)
                    if isinstance(shared, Call):
                        record.joined(shared)
                token: AccessToken = await state.flights.run(
                    flight,
                    deadline,
                    self._calls.run,
                    (row, request, name, credentials, extra, state, endpoint),
                    record,
                )
            else:
                token = await self._calls.run(
                    row, request, name, credentials, extra, state, endpoint, record, deadline
                )
        except BaseException as exc:
            if record is not None:
                record.ended(exc)
            raise
        if record is not None:
            record.ended(None, token.transport)
        if cache is not None:
            cache.put(key, token)
        return token
