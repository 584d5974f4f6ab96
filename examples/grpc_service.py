"""A ``grpc.aio`` microservice whose servicer acts for each caller with their third-party token.

``example.profile.v1.ProfileService/GetProfile`` (``google.protobuf.Empty`` in,
``google.protobuf.Struct`` out; registered with a generic handler, so no code generation):
the caller sends the end user's Google access token in its metadata (``authorization: Bearer
...``; against the emulator, a token the emulator issued for that user). The servicer asks
Discovery Engine for that user's third-party access token, on one ``DataConnectorClient`` shared
by every call, with the caller's token passed per call and the caller's deadline propagated;
then it calls the third party's API with the token and answers what it said.

Run it against the emulator::

    agentspace-grpc emulator   # prints {"grpc": "127.0.0.1:P1", "http": "http://127.0.0.1:P2", ...}
    export AGENTSPACE_EMULATOR_HOST=127.0.0.1:P1 AGENTSPACE_EMULATOR_REST=http://127.0.0.1:P2
    python examples/grpc_service.py --port 50051
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    DataConnectorError,
    DeadlineExceeded,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    UsageError,
)

SERVICE = "example.profile.v1.ProfileService"
METHOD = f"/{SERVICE}/GetProfile"
DEFAULT_CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"
DEFAULT_TIMEOUT = 10.0


def caller_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The end user's bearer token from the incoming call's metadata."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return token
    return None


class ProfileServicer:
    """GetProfile: the caller's profile at the third party, fetched with their own token."""

    def __init__(
        self,
        client: DataConnectorClient,
        session: aiohttp.ClientSession,
        *,
        connector: str,
        downstream_url: str,
    ) -> None:
        self._client = client
        self._session = session
        self._connector = connector
        self._downstream_url = downstream_url

    async def GetProfile(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[object, object]
    ) -> struct_pb2.Struct:
        """Acquire the caller's token (within the caller's deadline) and call the third party."""
        user_token = caller_token(context.invocation_metadata())
        if user_token is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "send the end user's Google access token as 'authorization: Bearer <token>'",
            )
        remaining = context.time_remaining()
        timeout = DEFAULT_TIMEOUT if remaining is None else max(min(remaining, 60.0), 0.001)
        try:
            third_party = await self._client.acquire_access_token(
                self._connector, credentials=user_token, timeout=timeout
            )
        except AuthorizationRequired as exc:
            who = exc.principal or exc.metadata.get("user") or "the caller"
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{who} must connect their account to {exc.connector} first",
            )
        except FailedPrecondition as exc:  # scopes missing, or the grant was revoked
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
        except (Unauthenticated, PermissionDenied, UsageError):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "the Google credentials were not accepted"
            )
        except (Unavailable, DeadlineExceeded) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"token service: {exc.code.name}")
        except DataConnectorError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"token service: {exc.code.name}")

        async with self._session.get(
            self._downstream_url,
            headers={"Authorization": f"Bearer {third_party.access_token}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if response.status != 200:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"the third party answered {response.status}"
                )
            downstream = await response.json()
        answer = struct_pb2.Struct()
        json_format.ParseDict(
            {
                "connector": third_party.connector,
                "scopes": list(third_party.scopes),
                "downstream": downstream,
            },
            answer,
        )
        return answer


def add_profile_service(servicer: ProfileServicer, server: grpc.aio.Server) -> None:
    """Register the servicer under ``example.profile.v1.ProfileService``."""
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.GetProfile,
        request_deserializer=empty_pb2.Empty.FromString,
        response_serializer=struct_pb2.Struct.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"GetProfile": handler}),)
    )


def profile_method(
    channel: grpc.aio.Channel,
) -> Callable[..., Awaitable[struct_pb2.Struct]]:
    """A callable for GetProfile on ``channel`` (what a caller of this service uses)."""
    return channel.unary_unary(
        METHOD,
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )


async def serve(
    servicer: ProfileServicer, host: str = "127.0.0.1", port: int = 0
) -> tuple[grpc.aio.Server, int]:
    """Start a server for the servicer; returns it and its port (0 picks a free one)."""
    server = grpc.aio.server()
    add_profile_service(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def main() -> None:
    """Serve until interrupted."""
    emulator_rest = os.environ.get("AGENTSPACE_EMULATOR_REST", "")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    parser.add_argument(
        "--downstream-url",
        default=f"{emulator_rest}/provider/userinfo" if emulator_rest else None,
        help="the third party's API (default: the emulator's /provider/userinfo)",
    )
    args = parser.parse_args()
    if not args.downstream_url:
        parser.error("--downstream-url is required when AGENTSPACE_EMULATOR_REST is not set")
    async with DataConnectorClient() as client, aiohttp.ClientSession() as session:
        servicer = ProfileServicer(
            client, session, connector=args.connector, downstream_url=args.downstream_url
        )
        server, port = await serve(servicer, args.host, args.port)
        print(f"serving {SERVICE} on {args.host}:{port}", flush=True)
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
