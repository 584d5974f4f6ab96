"""The gRPC wire over ``grpc.aio``: one lazily opened channel per target on this event loop.

The multicallables are built once per channel, so a call costs what a generated-stub call
costs plus the error translation in :func:`_error_from_rpc`. Headers (``authorization``
included) travel as call metadata, never as grpc call credentials, which grpc drops on
plaintext channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from google.protobuf import message
from google.rpc import status_pb2

from agentspace_grpc import _proto
from agentspace_grpc._errors import (
    Cancelled,
    DataConnectorError,
    Failure,
    Internal,
    UsageError,
    from_status,
    wire_failure,
)
from agentspace_grpc._errors import error_class as _error_class
from agentspace_grpc._headers import Headers
from agentspace_grpc._token import AccessToken, token_from_response
from agentspace_grpc._transports.base import Endpoint, Transport

__all__ = ["GrpcTransport"]

_M = TypeVar("_M", bound=message.Message)
_Q = TypeVar("_Q", bound=message.Message)
_T = TypeVar("_T")

_DETAILS_KEY: Final = "grpc-status-details-bin"
_UNAVAILABLE: Final = grpc.StatusCode.UNAVAILABLE

# grpc core's texts for failures below the service. The connection-phase ones mean that the
# request never left the client (grpc sends nothing before the connection is ready).
_CONNECT_PHASE: Final = (
    "failed to connect to all addresses",
    "DNS resolution failed",
    "Name resolution failure",
    "empty address list",
)
_AFTER_CONNECT: Final = (
    "Socket closed",
    "Connection reset",
    "Broken pipe",
    "GOAWAY",
    "Stream removed",
    "keepalive",
    "Transport closed",
    "connection closed",
    "Connection closed",
    "End of TCP stream",
    "recvmsg",
    "sendmsg",
    "Endpoint closing",
    "Connection aborted",
    "Delayed close",
)


def _path(name: str) -> str:
    return _proto.method_path(_proto.SERVICE.methods_by_name[name])


_ACQUIRE_PATH: Final = _path("AcquireAccessToken")
_STORE_PATH: Final = _path("AcquireAndStoreRefreshToken")
_CHECK_PATH: Final = _path("CheckRefreshToken")


class _Channel:
    """A channel and its three multicallables."""

    __slots__ = ("acquire", "channel", "check", "store")

    def __init__(self, endpoint: Endpoint) -> None:
        target = endpoint.grpc_target
        if target is None:
            raise UsageError("gRPC is not configured for this endpoint; use transport='rest'")
        options = list(endpoint.grpc_options)
        if endpoint.grpc_credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(
                target, endpoint.grpc_credentials, options=options
            )
        self.acquire = self.channel.unary_unary(
            _ACQUIRE_PATH,
            request_serializer=_proto.AcquireAccessTokenRequest.SerializeToString,
            response_deserializer=_proto.AcquireAccessTokenResponse.FromString,
        )
        self.store = self.channel.unary_unary(
            _STORE_PATH,
            request_serializer=_proto.AcquireAndStoreRefreshTokenRequest.SerializeToString,
            response_deserializer=_proto.AcquireAndStoreRefreshTokenResponse.FromString,
        )
        self.check = self.channel.unary_unary(
            _CHECK_PATH,
            request_serializer=_proto.CheckRefreshTokenRequest.SerializeToString,
            response_deserializer=_proto.CheckRefreshTokenResponse.FromString,
        )


class GrpcTransport(Transport):
    """gRPC over ``grpc.aio``; create and use it on one event loop."""

    kind = "grpc"

    def __init__(self) -> None:
        self._channels: dict[str | None, _Channel] = {}
        self._closed = False

    def _channel(self, endpoint: Endpoint) -> _Channel:
        channel = self._channels.get(endpoint.grpc_target)
        if channel is None:
            if self._closed:
                raise wire_failure(
                    Cancelled, "the client is closed", transport="grpc", failure=None
                )
            channel = self._channels[endpoint.grpc_target] = _Channel(endpoint)
        return channel

    async def fresh_channel(self, endpoint: Endpoint) -> None:
        """Make the next call to this endpoint try to connect now.

        Used before probing gRPC again after a fallback: a channel that failed to connect
        waits out grpc's reconnect backoff and would fail the probe without trying, so it is
        replaced (calls fail fast in that state, so none is cut short).
        """
        channel = self._channels.get(endpoint.grpc_target)
        if channel is None:
            return
        state = channel.channel.get_state(try_to_connect=False)
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            del self._channels[endpoint.grpc_target]
            await channel.channel.close(grace=None)

    def acquire_access_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAccessTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, AccessToken]:
        """AcquireAccessToken over gRPC."""
        call = self._channel(endpoint).acquire
        return self._unary(
            call,
            request,
            headers,
            time_left,
            request.name,
            _proto.AcquireAccessTokenResponse,
            _token,
        )

    def acquire_and_store_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.AcquireAndStoreRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, _proto.AcquireAndStoreRefreshTokenResponse]:
        """AcquireAndStoreRefreshToken over gRPC."""
        call = self._channel(endpoint).store
        return self._unary(
            call,
            request,
            headers,
            time_left,
            None,
            _proto.AcquireAndStoreRefreshTokenResponse,
            _decoded,
        )

    def check_refresh_token(
        self,
        endpoint: Endpoint,
        request: _proto.CheckRefreshTokenRequest,
        headers: Headers,
        time_left: float,
    ) -> Coroutine[Any, Any, _proto.CheckRefreshTokenResponse]:
        """CheckRefreshToken over gRPC."""
        call = self._channel(endpoint).check
        return self._unary(
            call,
            request,
            headers,
            time_left,
            request.name,
            _proto.CheckRefreshTokenResponse,
            _decoded,
        )

    async def _unary(
        self,
        call: grpc.aio.UnaryUnaryMultiCallable[_Q, _M],
        request: _Q,
        headers: Headers,
        time_left: float,
        connector: str | None,
        response_class: type[_M],
        finish: Callable[[_M | None, type[_M], str], _T],
    ) -> _T:
        """One unary call; the per-RPC methods hand back this coroutine (no extra frame).

        ``finish`` makes the result of the response (None when grpc could not decode it).
        """
        try:
            response = await call(request, timeout=time_left, metadata=headers)
        except grpc.aio.AioRpcError as exc:
            raise _error_from_rpc(exc, connector=connector) from exc
        except asyncio.CancelledError:
            self._closed_under_call()
            raise
        return finish(response, response_class, connector or "")

    def _closed_under_call(self) -> None:
        """grpc ends calls with CancelledError when their channel closes: say why instead.

        A CancelledError is passed on as is when the awaiting task itself was cancelled.
        """
        task = asyncio.current_task()
        if self._closed and (task is None or not task.cancelling()):
            raise wire_failure(
                Cancelled,
                "the client was closed while the call was in flight",
                transport="grpc",
                failure=None,
            ) from None

    async def aclose(self) -> None:
        """Close every channel; calls in flight end with Cancelled."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        if channels:
            await asyncio.gather(*(c.channel.close(grace=None) for c in channels))


def _decoded(response: _M | None, cls: type[_M], connector: str = "") -> _M:
    """The response, or Internal when grpc could not decode it: grpc.aio logs the decoding
    error and returns None instead of raising. (``connector`` only fits ``_unary``'s
    ``finish``.)"""
    if response is None:
        raise wire_failure(
            Internal,
            f"the gRPC answer is not a valid {cls.__name__} message (it could not be decoded)",
            transport="grpc",
            failure="decode",
        )
    return response


def _token(
    response: _proto.AcquireAccessTokenResponse | None,
    cls: type[_proto.AcquireAccessTokenResponse],
    connector: str,
) -> AccessToken:
    return token_from_response(_decoded(response, cls), connector, "grpc")


def _error_from_rpc(exc: grpc.aio.AioRpcError, *, connector: str | None) -> DataConnectorError:
    """Translate a grpc.aio error; the one place where grpc exceptions are mapped."""
    code = exc.code()
    text = exc.details() or ""
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a garbled detail must not hide the status
                break
            if status.code == code.value[0]:
                return from_status(status, transport="grpc", connector=connector)
            break
    failure: Failure | None = None
    if code == _UNAVAILABLE:
        if text.startswith(_CONNECT_PHASE) or any(p in text for p in _CONNECT_PHASE):
            failure = "connect"
        elif any(p in text for p in _AFTER_CONNECT):
            failure = "io"
    if failure is not None:
        return wire_failure(
            _error_class(code), text or code.name, transport="grpc", failure=failure
        )
    return from_status(
        status_pb2.Status(code=code.value[0], message=text), transport="grpc", connector=connector
    )
