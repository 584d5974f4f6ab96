"""The gRPC front: ``grpc.aio`` server with rich status details, health and reflection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1._async import HealthServicer  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from agentspace_grpc._wire import ROWS, Row
from agentspace_grpc.emulator._errors import ServiceError, invalid_argument
from agentspace_grpc.emulator._service import Service


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


M = TypeVar("M", bound=message.Message)
Context = grpc.aio.ServicerContext[Any, Any]


class Undecodable:
    """Stands for request bytes that are not the method's message.

    grpc answers UNKNOWN when a request deserializer raises; a malformed request is the
    caller's error, so the servicer answers INVALID_ARGUMENT instead (as the REST front does
    for a malformed JSON body).
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(cls: type[M]) -> Callable[[bytes], M | Undecodable]:
    """``cls.FromString`` that returns :class:`Undecodable` instead of raising."""

    def parse(data: bytes) -> M | Undecodable:
        try:
            return cls.FromString(data)
        except message.DecodeError as exc:
            return Undecodable(str(exc))

    return parse


def _handler(service: Service, row: Row) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler of one row: hands the request to the service; ServiceError -> rich status."""

    async def handle(request: message.Message | Undecodable, context: Context) -> message.Message:
        if isinstance(request, Undecodable):
            status = invalid_argument(
                f"the request is not a valid {row.request_class.__name__} message "
                f"({request.reason})"
            ).to_status()
        else:
            try:
                return await service.handle(row.name, _authorization(context), request)
            except ServiceError as exc:
                status = exc.to_status()
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=_lenient(row.request_class),
        response_serializer=row.response_class.SerializeToString,
    )


async def start_grpc(service: Service, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on ``host:port`` (0: any free port); returns it and its port."""
    server = grpc.aio.server()
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    names = sorted({row.service for row in ROWS.values()})
    for name in names:
        handlers = {r.name: _handler(service, r) for r in ROWS.values() if r.service == name}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
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
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    return server, bound
