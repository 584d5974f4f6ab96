"""The gRPC front: ``grpc.aio`` server with rich status details, health and reflection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1._async import HealthServicer  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from agentspace_grpc import _proto
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


_METHODS: Final[tuple[tuple[str, type[message.Message], type[message.Message]], ...]] = (
    ("AcquireAccessToken", _proto.AcquireAccessTokenRequest, _proto.AcquireAccessTokenResponse),
    (
        "AcquireAndStoreRefreshToken",
        _proto.AcquireAndStoreRefreshTokenRequest,
        _proto.AcquireAndStoreRefreshTokenResponse,
    ),
    ("CheckRefreshToken", _proto.CheckRefreshTokenRequest, _proto.CheckRefreshTokenResponse),
)


class _Servicer(_proto.DataConnectorServiceServicer):
    """Hands each RPC to the service; turns ServiceError into a rich status."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def _call(
        self, method: str, request: message.Message | Undecodable, context: Context, kind: type[M]
    ) -> M:
        if isinstance(request, Undecodable):
            status = invalid_argument(
                f"the request is not a valid {method}Request message ({request.reason})"
            ).to_status()
        else:
            try:
                answer = await self._service.handle(method, _authorization(context), request)
                return cast(M, answer)
            except ServiceError as exc:
                status = exc.to_status()
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    async def AcquireAccessToken(
        self, request: _proto.AcquireAccessTokenRequest | Undecodable, context: Context
    ) -> _proto.AcquireAccessTokenResponse:
        """AcquireAccessToken."""
        return await self._call(
            "AcquireAccessToken", request, context, _proto.AcquireAccessTokenResponse
        )

    async def AcquireAndStoreRefreshToken(
        self, request: _proto.AcquireAndStoreRefreshTokenRequest | Undecodable, context: Context
    ) -> _proto.AcquireAndStoreRefreshTokenResponse:
        """AcquireAndStoreRefreshToken."""
        return await self._call(
            "AcquireAndStoreRefreshToken",
            request,
            context,
            _proto.AcquireAndStoreRefreshTokenResponse,
        )

    async def CheckRefreshToken(
        self, request: _proto.CheckRefreshTokenRequest | Undecodable, context: Context
    ) -> _proto.CheckRefreshTokenResponse:
        """CheckRefreshToken."""
        return await self._call(
            "CheckRefreshToken", request, context, _proto.CheckRefreshTokenResponse
        )


async def start_grpc(service: Service, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on ``host:port`` (0: any free port); returns it and its port."""
    server = grpc.aio.server()
    servicer = _Servicer(service)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_lenient(request_class),
            response_serializer=response_class.SerializeToString,
        )
        for name, request_class, response_class in _METHODS
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_proto.SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(_proto.SERVICE.full_name, handlers)
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(_proto.SERVICE.full_name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            _proto.SERVICE.full_name,
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
