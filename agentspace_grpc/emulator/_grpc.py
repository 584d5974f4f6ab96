"""The gRPC front: ``grpc.aio`` handlers for every row, rich status details, health, reflection.

:func:`add_api` puts a :class:`~._call.Handler` behind every row of the wire table on a server
(the emulator's service, or a test or benchmark handler); :func:`start_grpc` is the emulator's
server, with health and reflection too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1._async import HealthServicer  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from agentspace_grpc._transports.base import format_host_port
from agentspace_grpc._wire import ROWS, Row
from agentspace_grpc.emulator._call import Call, Handler
from agentspace_grpc.emulator._errors import ServiceError, internal

log = logging.getLogger("agentspace_grpc.emulator")

M = TypeVar("M", bound=message.Message)
Context = grpc.aio.ServicerContext[Any, Any]


class _Undecodable:
    """Stands for request bytes that are not the method's message.

    grpc answers UNKNOWN when a request deserializer raises; a malformed request is the
    caller's error, so the handler is given a call whose request is INVALID_ARGUMENT (as the
    REST front does for a malformed JSON body).
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(cls: type[M]) -> Callable[[bytes], M | _Undecodable]:
    """``cls.FromString`` that returns :class:`_Undecodable` instead of raising."""

    def parse(data: bytes) -> M | _Undecodable:
        try:
            return cls.FromString(data)
        except message.DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _metadata(context: Context) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata() or ()
    }


def _method_handler(handler: Handler, row: Row) -> grpc.RpcMethodHandler[Any, Any]:
    """One row: the request to the handler; ServiceError -> rich status, else INTERNAL."""

    async def handle(request: message.Message | _Undecodable, context: Context) -> message.Message:
        if isinstance(request, _Undecodable):
            problem = f"the request is not a valid {row.request_class.__name__} message "
            call = Call(row, "grpc", _metadata(context), None, f"{problem}({request.reason})")
        else:
            call = Call(row, "grpc", _metadata(context), request)
        try:
            return await handler.handle(call)
        except ServiceError as exc:
            status = exc.to_status()
        except Exception:
            incident = secrets.token_hex(4)
            log.exception("internal error in %s (incident %s)", row.name, incident)
            status = internal(incident).to_status()
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=_lenient(row.request_class),
        response_serializer=row.response_class.SerializeToString,
    )


def add_api(server: grpc.aio.Server, handler: Handler) -> list[str]:
    """Serves every row on ``server`` with ``handler``; returns the services' full names."""
    names = sorted({row.service for row in ROWS.values()})
    for name in names:
        handlers = {r.name: _method_handler(handler, r) for r in ROWS.values() if r.service == name}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
    return names


async def start_grpc(handler: Handler, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on ``host:port`` (0: any free port); returns it and its port."""
    server = grpc.aio.server()
    names = add_api(server, handler)
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = format_host_port(host, port)
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    return server, bound
