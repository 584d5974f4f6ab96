"""The generated stubs work over a real socket: a grpc.aio server on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from agentspace_grpc import _proto as p
from agentspace_grpc._wire import ROWS

NAME = "projects/p/locations/global/collections/default_collection/dataConnector"


class EchoServicer(p.DataConnectorServiceServicer):
    """Answers each RPC from its request, so the test sees both directions of the wire."""

    async def AcquireAccessToken(self, request, context):  # type: ignore[no-untyped-def]
        return p.AcquireAccessTokenResponse(
            access_token=f"tok:{request.scope}:{request.action}",
            refresh_token_info=p.RefreshTokenInfo(name=request.name, scopes=[request.scope]),
        )

    async def AcquireAndStoreRefreshToken(self, request, context):  # type: ignore[no-untyped-def]
        return p.AcquireAndStoreRefreshTokenResponse(
            additional_oauth_responses=[
                p.AdditionalOAuthResponse(key="uri", string_value=request.full_redirect_uri),
                p.AdditionalOAuthResponse(key="n", int_value=len(request.scopes)),
                p.AdditionalOAuthResponse(key="instance", bool_value=bool(request.instance_uri)),
            ]
        )

    async def CheckRefreshToken(self, request, context):  # type: ignore[no-untyped-def]
        return p.CheckRefreshTokenResponse(
            refresh_token_info=p.RefreshTokenInfo(name=request.name, scopes=["a", "b"])
        )


@pytest.fixture
async def stub() -> AsyncIterator[p.DataConnectorServiceStub]:
    server = grpc.aio.server()
    p.add_DataConnectorServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield p.DataConnectorServiceStub(channel)
    await server.stop(None)


async def test_acquire_access_token(stub: p.DataConnectorServiceStub) -> None:
    response = await stub.AcquireAccessToken(
        p.AcquireAccessTokenRequest(name=NAME, scope="s1", action="read")
    )
    assert response.access_token == "tok:s1:read"
    assert response.refresh_token_info.name == NAME
    assert list(response.refresh_token_info.scopes) == ["s1"]


async def test_acquire_and_store_refresh_token(stub: p.DataConnectorServiceStub) -> None:
    response = await stub.AcquireAndStoreRefreshToken(
        p.AcquireAndStoreRefreshTokenRequest(
            name=NAME, scopes=["x", "y"], full_redirect_uri="https://r/?code=c", instance_uri="i"
        )
    )
    values = {r.key: r for r in response.additional_oauth_responses}
    assert values["uri"].string_value == "https://r/?code=c"
    assert values["n"].WhichOneof("value") == "int_value"
    assert values["n"].int_value == 2
    assert values["instance"].bool_value is True


async def test_check_refresh_token(stub: p.DataConnectorServiceStub) -> None:
    response = await stub.CheckRefreshToken(p.CheckRefreshTokenRequest(name=NAME))
    assert response.refresh_token_info.name == NAME
    assert list(response.refresh_token_info.scopes) == ["a", "b"]


def test_method_paths_are_the_hosted_service_paths() -> None:
    paths = sorted(row.grpc_path for row in ROWS.values())
    prefix = "/google.cloud.discoveryengine.v1alpha.DataConnectorService/"
    authorizations = "/google.cloud.discoveryengine.v1alpha.AuthorizationService/"
    assert paths == [
        authorizations + "AcquireUserAuthorization",
        authorizations + "StoreUserAuthorization",
        prefix + "AcquireAccessToken",
        prefix + "AcquireAndStoreRefreshToken",
        prefix + "CheckRefreshToken",
    ]
