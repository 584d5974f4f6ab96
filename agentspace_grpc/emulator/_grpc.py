"""The gRPC front: ``grpc.aio`` server with rich status details, health and reflection."""

from __future__ import annotations

from typing import Any, TypeVar, cast

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1._async import HealthServicer  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from agentspace_grpc import _proto
from agentspace_grpc.emulator._errors import ServiceError
from agentspace_grpc.emulator._service import Service


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


M = TypeVar("M", bound=message.Message)
Context = grpc.aio.ServicerContext[Any, Any]


class _Servicer(_proto.DataConnectorServiceServicer):
    """Hands each RPC to the service; turns ServiceError into a rich status."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def _call(
        self, method: str, request: message.Message, context: Context, kind: type[M]
    ) -> M:
        try:
            answer = await self._service.handle(method, _authorization(context), request)
            return cast(M, answer)
        except ServiceError as exc:
            status = exc.to_status()
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    async def AcquireAccessToken(
        self, request: _proto.AcquireAccessTokenRequest, context: Context
    ) -> _proto.AcquireAccessTokenResponse:
        """AcquireAccessToken."""
        return await self._call(
            "AcquireAccessToken", request, context, _proto.AcquireAccessTokenResponse
        )

    async def AcquireAndStoreRefreshToken(
        self, request: _proto.AcquireAndStoreRefreshTokenRequest, context: Context
    ) -> _proto.AcquireAndStoreRefreshTokenResponse:
        """AcquireAndStoreRefreshToken."""
        return await self._call(
            "AcquireAndStoreRefreshToken",
            request,
            context,
            _proto.AcquireAndStoreRefreshTokenResponse,
        )

    async def CheckRefreshToken(
        self, request: _proto.CheckRefreshTokenRequest, context: Context
    ) -> _proto.CheckRefreshTokenResponse:
        """CheckRefreshToken."""
        return await self._call(
            "CheckRefreshToken", request, context, _proto.CheckRefreshTokenResponse
        )


async def start_grpc(service: Service, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on ``host:port`` (0: any free port); returns it and its port."""
    server = grpc.aio.server()
    _proto.add_DataConnectorServiceServicer_to_server(_Servicer(service), server)
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
