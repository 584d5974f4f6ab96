"""One exception tree for both wires: service-error parity, REST faults, AuthorizationRequired."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import google.oauth2.credentials
import grpc
import pytest
from aiohttp import web
from google.protobuf import any_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from agentspace_grpc import (
    Aborted,
    AccessToken,
    AlreadyExists,
    AuthorizationRequired,
    Cancelled,
    ConnectFailed,
    ConnectionBroken,
    DataConnectorClient,
    DataConnectorError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    UndecodableAnswer,
    Unimplemented,
    Unknown,
)
from agentspace_grpc._errors import from_status
from tests._raw import TcpProxy, closed_port, reset_connection
from tests._servers import CONNECTOR, RpcFault, Seen, Servers, error_info, retry_info

TRANSPORTS = ["grpc", "rest"]


@pytest.fixture
async def client(servers: Servers, transport: str) -> AsyncIterator[DataConnectorClient]:
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs(transport)
    ) as made:
        yield made


# ---- the same service error raises the same exception over gRPC and REST ----------------

SERVICE_ERRORS = [
    (grpc.StatusCode.NOT_FOUND, "CONNECTOR_NOT_FOUND", NotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, "SCOPES_MISSING", FailedPrecondition),
    (grpc.StatusCode.FAILED_PRECONDITION, "REFRESH_TOKEN_REVOKED", FailedPrecondition),
    (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", Unavailable),
    (grpc.StatusCode.PERMISSION_DENIED, None, PermissionDenied),
    (grpc.StatusCode.INVALID_ARGUMENT, None, InvalidArgument),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMIT_EXCEEDED", ResourceExhausted),
    (grpc.StatusCode.ABORTED, None, Aborted),
    (grpc.StatusCode.INTERNAL, None, Internal),
    (grpc.StatusCode.UNKNOWN, None, Unknown),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, DeadlineExceeded),
    (grpc.StatusCode.UNIMPLEMENTED, None, Unimplemented),
    (grpc.StatusCode.CANCELLED, None, Cancelled),
]


@pytest.mark.parametrize(("code", "reason", "expected"), SERVICE_ERRORS)
async def test_service_errors_map_to_the_same_exception_on_both_wires(
    servers: Servers, code: grpc.StatusCode, reason: str | None, expected: type[Exception]
) -> None:
    details = [retry_info(1.5)]
    if reason is not None:
        details.insert(0, error_info(reason, connector=CONNECTOR, missing_scopes="a b"))
    caught: dict[str, DataConnectorError] = {}
    for transport in TRANSPORTS:
        servers.service.fail_next(RpcFault(code, f"the {code.name} message", *details))
        async with DataConnectorClient(
            credentials="alice-token", retry=None, **servers.client_kwargs(transport)
        ) as client:
            with pytest.raises(DataConnectorError) as info:
                await client.acquire_access_token(CONNECTOR)
        caught[transport] = info.value
    on_grpc, on_rest = caught["grpc"], caught["rest"]
    for error in (on_grpc, on_rest):
        assert type(error) is expected
        assert error.code == code
        assert error.message == f"the {code.name} message"
        assert error.reason == reason
        assert error.retry_delay == pytest.approx(1.5)
        assert error.domain == ("discoveryengine.googleapis.com" if reason else None)
        assert dict(error.metadata) == (
            {"connector": CONNECTOR, "missing_scopes": "a b"} if reason else {}
        )
        assert str(error) == str(on_grpc)
    assert on_grpc.transport == "grpc"
    assert on_rest.transport == "rest"
    assert on_grpc.http_status is None
    assert on_rest.http_status is not None
    assert on_rest.http_status >= 400


async def test_known_details_are_unpacked_and_unknown_ones_kept(
    servers: Servers, transport: str, client: DataConnectorClient
) -> None:
    custom = any_pb2.Any(type_url="type.googleapis.com/example.v1.Custom", value=b"\x08\x01")
    fault = RpcFault(
        grpc.StatusCode.PERMISSION_DENIED,
        "denied",
        error_info("IAM_PERMISSION_DENIED", permission="discoveryengine.dataConnectors.use"),
        error_details_pb2.LocalizedMessage(locale="fr", message="refusé"),
    )
    fault.status.details.append(custom)
    servers.service.fail_next(fault)
    with pytest.raises(PermissionDenied) as caught:
        await client.acquire_access_token(CONNECTOR)
    details = caught.value.details
    assert len(details) == 3
    assert isinstance(details[0], error_details_pb2.ErrorInfo)
    assert caught.value.metadata["permission"] == "discoveryengine.dataConnectors.use"
    assert isinstance(details[1], error_details_pb2.LocalizedMessage)
    assert details[1].message == "refusé"
    # The unknown type is kept: packed as is over gRPC, as the JSON it was over REST.
    assert isinstance(details[2], any_pb2.Any | struct_pb2.Value)
    assert "example.v1.Custom" in str(details[2])


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_code_has_its_class(code: grpc.StatusCode) -> None:
    error = from_status(status_pb2.Status(code=code.value[0]), transport="grpc")
    assert error.code == code
    assert type(error).__name__.upper() == code.name.replace("_", "")  # NOT_FOUND: NotFound


def test_a_detail_that_does_not_decode_is_kept_packed() -> None:
    garbled = any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")
    status = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], message="m")
    status.details.append(garbled)
    error = from_status(status, transport="grpc")
    assert type(error) is Aborted
    assert error.details == (garbled,)
    assert error.reason is None


# ---- AuthorizationRequired ----------------------------------------------------------------


async def test_refresh_token_not_found_is_authorization_required_naming_connector_and_user(
    servers: Servers, client: DataConnectorClient, transport: str
) -> None:
    servers.service.fail_next(
        RpcFault(
            grpc.StatusCode.NOT_FOUND,
            "no refresh token stored",
            error_info("REFRESH_TOKEN_NOT_FOUND", connector=CONNECTOR, user="alice@example.com"),
        )
    )
    with pytest.raises(AuthorizationRequired) as caught:
        await client.acquire_access_token(CONNECTOR)
    error = caught.value
    assert isinstance(error, NotFound)
    assert error.connector == CONNECTOR
    assert error.principal == "alice@example.com"
    assert error.reason == "REFRESH_TOKEN_NOT_FOUND"
    text = str(error)
    assert CONNECTOR in text
    assert "alice@example.com" in text
    assert "store_refresh_token" in text
    assert error.transport == transport


async def test_not_found_without_reason_means_authorization_required(
    servers: Servers, client: DataConnectorClient
) -> None:
    servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "Not found"))
    with pytest.raises(AuthorizationRequired, match="the end user has not authorized"):
        await client.acquire_access_token(CONNECTOR)


async def test_connector_not_found_is_not_authorization_required(
    servers: Servers, client: DataConnectorClient
) -> None:
    servers.service.fail_next(
        RpcFault(grpc.StatusCode.NOT_FOUND, "no such connector", error_info("CONNECTOR_NOT_FOUND"))
    )
    with pytest.raises(NotFound) as caught:
        await client.acquire_access_token(CONNECTOR)
    assert not isinstance(caught.value, AuthorizationRequired)
    assert caught.value.reason == "CONNECTOR_NOT_FOUND"


async def test_check_refresh_token_not_found_is_authorization_required(
    servers: Servers, client: DataConnectorClient
) -> None:
    servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "nothing stored"))
    with pytest.warns(DeprecationWarning, match="deprecated"), pytest.raises(AuthorizationRequired):
        await client.check_refresh_token(CONNECTOR)


async def test_store_not_found_stays_a_plain_not_found(
    servers: Servers, client: DataConnectorClient
) -> None:
    servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "no such connector"))
    with pytest.raises(NotFound) as caught:
        await client.store_refresh_token(CONNECTOR, "https://r/?code=c")
    assert not isinstance(caught.value, AuthorizationRequired)


async def test_authorization_required_names_the_account_of_the_credentials(
    servers: Servers, transport: str
) -> None:
    # The classic mistake: calling with the agent's own service account instead of the user.
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token="agent-token", account="agent@project.iam.gserviceaccount.com"
    )
    servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "Not found"))
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_access_token(CONNECTOR)
    assert caught.value.principal == "agent@project.iam.gserviceaccount.com"
    assert "agent@project.iam.gserviceaccount.com has not authorized" in str(caught.value)


# ---- REST: the parity table of pitfall 9 -------------------------------------------------

# What a non-Google answer means, by HTTP status (an independent statement of the mapping). A
# gateway's failure page may come after the request reached the service: ConnectionBroken.
BY_HTTP_STATUS: dict[int, type[DataConnectorError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Aborted,
    412: FailedPrecondition,
    429: ResourceExhausted,
    499: Cancelled,
    500: Internal,
    501: Unimplemented,
    502: ConnectionBroken,
    503: ConnectionBroken,
    504: ConnectionBroken,
}

HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


async def _rest_call(servers: Servers, answer: web.StreamResponse) -> DataConnectorError:
    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        return answer

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
    return caught.value


@pytest.mark.parametrize("status", sorted(BY_HTTP_STATUS))
async def test_pitfall_9_html_error_pages_are_classified_by_http_status(
    servers: Servers, status: int
) -> None:
    error = await _rest_call(
        servers, web.Response(status=status, body=HTML_PAGE, content_type="text/html")
    )
    assert type(error) is BY_HTTP_STATUS[status]
    assert not isinstance(error, AuthorizationRequired)
    assert error.http_status == status
    assert error.transport == "rest"
    assert "text/html" in error.message
    assert "nginx" not in error.message  # the page itself is not dumped into the message


@pytest.mark.parametrize("status", sorted(BY_HTTP_STATUS))
async def test_pitfall_9_empty_error_bodies_are_classified_by_http_status(
    servers: Servers, status: int
) -> None:
    error = await _rest_call(servers, web.Response(status=status))
    assert type(error) is BY_HTTP_STATUS[status]
    assert error.http_status == status
    assert "empty body" in error.message


@pytest.mark.parametrize(
    ("status", "name", "expected"),
    [
        (400, "FAILED_PRECONDITION", FailedPrecondition),
        (400, "OUT_OF_RANGE", OutOfRange),
        (409, "ALREADY_EXISTS", AlreadyExists),
        (500, "UNAVAILABLE", Unavailable),
        (503, "RESOURCE_EXHAUSTED", ResourceExhausted),
        (404, "NOT_FOUND", AuthorizationRequired),
        (429, "NO_SUCH_STATUS", ResourceExhausted),
    ],
)
async def test_pitfall_9_google_errors_are_classified_by_their_status_first(
    servers: Servers, status: int, name: str, expected: type[DataConnectorError]
) -> None:
    body = {
        "error": {
            "code": status,
            "message": f"{name} from the service",
            "status": name,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "SOME_REASON" if name != "NOT_FOUND" else "REFRESH_TOKEN_NOT_FOUND",
                    "domain": "discoveryengine.googleapis.com",
                    "metadata": {"k": "v"},
                }
            ],
        }
    }
    error = await _rest_call(
        servers, web.Response(status=status, text=json.dumps(body), content_type="application/json")
    )
    assert isinstance(error, expected)
    if name in grpc.StatusCode.__members__:
        assert error.code == grpc.StatusCode[name]
    assert error.message == f"{name} from the service"
    assert error.metadata == {"k": "v"}
    assert error.http_status == status


async def test_pitfall_9_connection_reset_mid_call_is_unavailable(servers: Servers) -> None:
    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        reset_connection(request)
        return web.Response()

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(ConnectionBroken) as caught:
            await client.acquire_access_token(CONNECTOR)
    assert caught.value.transport == "rest"


async def test_pitfall_9_oversize_success_is_resource_exhausted(servers: Servers) -> None:
    big = json.dumps({"accessToken": "x" * (5 * 1024 * 1024)})
    error = await _rest_call(servers, web.Response(text=big, content_type="application/json"))
    assert type(error) is ResourceExhausted
    assert "limit" in error.message


async def test_pitfall_9_oversize_chunked_error_page_is_classified_and_bounded(
    servers: Servers,
) -> None:
    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=502, headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"<p>" + b"x" * 65536 + b"</p>"
        for _ in range(80):  # about 5 MiB, without a Content-Length
            await response.write(chunk)
        await response.write_eof()
        return response

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(ConnectionBroken, match="larger than") as caught:
            await client.acquire_access_token(CONNECTOR)
    assert caught.value.http_status == 502


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"accessToken": 42}', "application/json"),
        (b'{"accessToken": "a", "refreshTokenInfo": []}', "application/json"),
        (b"{not json", "application/json"),
        (b"<html>captive portal</html>", "text/html"),
        (b"[]", "application/json"),
    ],
)
async def test_pitfall_9_malformed_success_is_internal(
    servers: Servers, body: bytes, content_type: str
) -> None:
    error = await _rest_call(servers, web.Response(body=body, content_type=content_type))
    assert type(error) is UndecodableAnswer
    assert isinstance(error, Internal)
    assert error.http_status == 200
    assert "AcquireAccessTokenResponse" in error.message


async def test_pitfall_9_truncated_body_is_unavailable(servers: Servers) -> None:
    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Content-Length": "500"}
        )
        await response.prepare(request)
        await response.write(b'{"accessToken": "abc')
        reset_connection(request)
        return response

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(ConnectionBroken):
            await client.acquire_access_token(CONNECTOR)


async def _rest_token(servers: Servers, body: dict[str, Any]) -> AccessToken:
    """What the client makes of a 200 whose JSON body is ``body``."""

    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.json_response(body)

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", **servers.client_kwargs("rest")
    ) as client:
        return await client.acquire_access_token(CONNECTOR)


OTHER = "projects/p/locations/global/collections/other/dataConnector"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The service's own spelling, and the proto names that proto3 JSON also allows.
        (
            {"accessToken": "t1", "refreshTokenInfo": {"name": OTHER, "scopes": ["a", "b"]}},
            ("t1", OTHER, ("a", "b")),
        ),
        (
            {"access_token": "t2", "refresh_token_info": {"name": OTHER, "scopes": ["c"]}},
            ("t2", OTHER, ("c",)),
        ),
        # Absent, empty and null fields take their defaults; the connector is then the one
        # asked for. (The nulls take the full decoding, not the shortcut.)
        ({"accessToken": "t3"}, ("t3", CONNECTOR, ())),
        ({"accessToken": "t4", "refreshTokenInfo": {}}, ("t4", CONNECTOR, ())),
        ({"accessToken": "t5", "refreshTokenInfo": None}, ("t5", CONNECTOR, ())),
        (
            {"accessToken": "t6", "refreshTokenInfo": {"name": None, "scopes": None}},
            ("t6", CONNECTOR, ()),
        ),
        (
            {"accessToken": "t7", "refreshTokenInfo": {"name": "", "scopes": []}},
            ("t7", CONNECTOR, ()),
        ),
    ],
)
async def test_every_proto3_json_spelling_of_a_success_gives_the_same_token(
    servers: Servers, body: dict[str, Any], expected: tuple[str, str, tuple[str, ...]]
) -> None:
    token = await _rest_token(servers, body)
    assert (token.access_token, token.connector, token.scopes) == expected
    assert token.transport == "rest"


async def test_unknown_fields_in_a_success_are_ignored(servers: Servers) -> None:
    body = {
        "accessToken": "tok",
        "refreshTokenInfo": {"name": CONNECTOR, "scopes": ["a"], "futureField": 1},
        "expireTime": "2030-01-01T00:00:00Z",
    }
    token = await _rest_token(servers, body)
    assert token.access_token == "tok"
    assert token.scopes == ("a",)


# ---- where a wire failed is the type (real failures, both wires) -----------------------------


async def _fails_with(transport: str, endpoint: str, rest: str) -> DataConnectorError:
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        endpoint=endpoint,
        rest_endpoint=rest,
        credentials="alice-token",
        retry=None,
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR, timeout=10)
    assert caught.value.transport == transport
    return caught.value


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_closed_port_is_connect_failed(transport: str) -> None:
    port = closed_port()
    error = await _fails_with(transport, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    assert type(error) is ConnectFailed
    assert isinstance(error, Unavailable)


async def test_grpc_to_an_http1_only_port_is_connect_failed(servers: Servers) -> None:
    error = await _fails_with("grpc", f"127.0.0.1:{servers.rest_port}", servers.rest_url)
    assert type(error) is ConnectFailed
    assert servers.service.seen == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reset_mid_call_is_connection_broken(servers: Servers, transport: str) -> None:
    arrived = asyncio.Event()

    async def hang(seen: Seen) -> Any:
        arrived.set()
        await asyncio.Event().wait()  # until the connection is reset (cancelled)

    servers.service.on("AcquireAccessToken", hang)
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port) as proxy:
        asyncio.get_running_loop().create_task(_reset_when(arrived, proxy))
        error = await _fails_with(transport, proxy.address, proxy.url)
    assert type(error) is ConnectionBroken
    assert len(servers.service.seen) == 1  # the request reached the service


async def _reset_when(arrived: asyncio.Event, proxy: TcpProxy) -> None:
    await arrived.wait()
    proxy.reset_all()


async def test_a_compressed_answer_is_never_inflated(servers: Servers) -> None:
    """The client asks for identity; a server that compresses anyway (here a 10 MiB token in
    about 10 KiB of gzip) gets UndecodableAnswer, so the size limit bounds the memory used."""
    asked: list[str | None] = []
    inflated = json.dumps({"accessToken": "x" * (10 * 1024 * 1024)}).encode()

    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        asked.append(request.headers.get("Accept-Encoding"))
        return web.Response(
            body=gzip.compress(inflated),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    servers.service.rest_hook = hook
    async with DataConnectorClient(
        credentials="alice-token", retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(UndecodableAnswer, match="gzip-encoded") as caught:
            await client.acquire_access_token(CONNECTOR)
    assert asked == ["identity"]
    assert caught.value.http_status == 200
    assert str(len(gzip.compress(inflated))) in caught.value.message
