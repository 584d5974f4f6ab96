"""The call loop: one RPC's attempts, carrying out what the failure policy decides.

Each attempt resolves the ``authorization`` header (refreshing the credentials if due), sends
over the wire the fallback state picks with the time left, and after a failure does what
:func:`~agentspace_grpc._policy.decide` says: fall back to REST, refresh the credentials once,
retry after a wait, or raise. What a request sent is taken out of its errors first
(:mod:`._redact`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Final

from google.protobuf import message

from agentspace_grpc._credentials import PENDING, Authorizer, CredentialsLike
from agentspace_grpc._errors import (
    CLOSED_MID_CALL,
    AuthorizationRequired,
    Cancelled,
    DataConnectorError,
    DeadlineExceeded,
)
from agentspace_grpc._headers import Headers, build_headers
from agentspace_grpc._loops import LoopState
from agentspace_grpc._policy import REFRESH, Fallback, RetryPolicy, decide
from agentspace_grpc._redact import redact, sent_secrets
from agentspace_grpc._telemetry import Call
from agentspace_grpc._transports import Endpoint
from agentspace_grpc._wire import Row

__all__ = ["CallLoop"]

_log = logging.getLogger("agentspace_grpc")

_HEADER_CACHE_SIZE: Final = 1024


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
