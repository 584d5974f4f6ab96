"""The gRPC wire over ``grpc.aio``: one lazily opened channel per target on this event loop.

The multicallables are built once per channel, one per row of the table, so a call costs what
a generated-stub call costs plus the error translation in :func:`_error_from_rpc`. Headers
(``authorization`` included) travel as call metadata, never as grpc call credentials, which grpc
drops on plaintext channels.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf import message
from google.rpc import status_pb2

from agentspace_grpc._errors import (
    CLOSED_MID_CALL,
    Cancelled,
    ConnectFailed,
    ConnectionBroken,
    DataConnectorError,
    UndecodableAnswer,
    UsageError,
    from_status,
)
from agentspace_grpc._headers import Headers
from agentspace_grpc._transports.base import Endpoint, Transport
from agentspace_grpc._wire import ROWS, Row

__all__ = ["GrpcTransport"]

_DETAILS_KEY: Final = "grpc-status-details-bin"

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


class _Channel:
    """A channel and a multicallable per row."""

    __slots__ = ("calls", "channel")

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
        self.calls: dict[Row, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {
            row: self.channel.unary_unary(
                row.grpc_path,
                request_serializer=row.request_class.SerializeToString,
                response_deserializer=row.response_class.FromString,
            )
            for row in ROWS.values()
        }


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
                raise Cancelled("the client is closed", transport="grpc")
            channel = self._channels[endpoint.grpc_target] = _Channel(endpoint)
        return channel

    async def fresh_channel(self, endpoint: Endpoint) -> None:
        """Make the next call to this endpoint try to connect now.

        Used before probing gRPC again after a fallback: a channel that failed to connect
        waits out grpc's reconnect backoff, or is in the middle of an attempt started before the
        service came back, and would fail the probe; so it is replaced (during a fallback no
        call goes over it, so none is cut short).
        """
        channel = self._channels.get(endpoint.grpc_target)
        if channel is None:
            return
        state = channel.channel.get_state(try_to_connect=False)
        if state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.CONNECTING,
        ):
            del self._channels[endpoint.grpc_target]
            await channel.channel.close(grace=None)

    async def call(
        self,
        row: Row,
        endpoint: Endpoint,
        request: message.Message,
        headers: Headers,
        time_left: float,
    ) -> Any:
        """One unary call of ``row``'s RPC; the answer read by ``row.from_message``."""
        name: str = getattr(request, row.field)
        try:
            response = await self._channel(endpoint).calls[row](
                request, timeout=time_left, metadata=headers
            )
        except grpc.aio.AioRpcError as exc:
            raise _error_from_rpc(exc, name if row.reads_grant else None) from exc
        except asyncio.CancelledError:
            # grpc ends calls with CancelledError when their channel closes: say why instead,
            # unless the awaiting task itself was cancelled.
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                raise Cancelled(CLOSED_MID_CALL, transport="grpc") from None
            raise
        if response is None:  # grpc.aio logs the decoding error and returns None
            raise UndecodableAnswer(
                f"the gRPC answer is not a valid {row.response_class.__name__} message "
                "(it could not be decoded)",
                transport="grpc",
            )
        return row.from_message(response, name)

    async def aclose(self) -> None:
        """Close every channel; calls in flight end with Cancelled."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        if channels:
            await asyncio.gather(*(c.channel.close(grace=None) for c in channels))


def _error_from_rpc(exc: grpc.aio.AioRpcError, connector: str | None) -> DataConnectorError:
    """Translate a grpc.aio error; the one place where grpc exceptions are mapped.

    grpc reports its own failures below the service as UNAVAILABLE with a text: the connection
    phase ones become :class:`ConnectFailed`, the broken connections :class:`ConnectionBroken`.
    """
    code = exc.code()
    text = exc.details() or ""
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a garbled detail must not hide the status
                break
            if status.code == code.value[0]:
                return from_status(status, transport="grpc", connector=connector)
            break
    if code == grpc.StatusCode.UNAVAILABLE:
        if any(phrase in text for phrase in _CONNECT_PHASE):
            return ConnectFailed(text, transport="grpc")
        if any(phrase in text for phrase in _AFTER_CONNECT):
            return ConnectionBroken(text, transport="grpc")
    return from_status(
        status_pb2.Status(code=code.value[0], message=text), transport="grpc", connector=connector
    )
