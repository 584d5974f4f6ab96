"""Tokens are secrets: canary values never appear in logs (DEBUG, every library), exception
messages, reprs or tracebacks, over both wires and through refreshes, errors and fallback."""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import grpc
import pytest
from aiohttp import web
from google.protobuf import any_pb2, json_format, message, wrappers_pb2
from google.rpc import error_details_pb2

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    DataConnectorError,
    Internal,
    Unauthenticated,
)
from agentspace_grpc import _proto as p
from agentspace_grpc._redact import REDACTED
from tests._raw import closed_port, tcp_server
from tests._reliability import LogCapture, debug_logging
from tests._servers import (
    AUTHORIZATION,
    CLIENT_SECRET,
    CONNECTOR,
    RpcFault,
    Seen,
    Servers,
    TokenEndpoint,
    error_info,
)

CANARY = "CANARY"
USER = "CANARYuser"  # its refresh token is rt-CANARYuser, its tokens user-token-CANARYuser-N
STATIC_TOKEN = "ya29.CANARY-static-token"
CODE_URI = "https://app.example/callback?code=CANARY-authorization-code&state=s"
assert CANARY in CLIENT_SECRET


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    with debug_logging() as capture:
        yield capture


def assert_clean(text: str) -> None:
    assert CANARY not in text


def assert_error_clean(error: BaseException) -> None:
    assert_clean(str(error))
    assert_clean(repr(error))
    assert_clean("".join(traceback.format_exception(error)))


async def test_pitfall_14_and_22_no_secret_in_debug_logs_errors_or_reprs(
    servers: Servers, transport: str, captured: LogCapture
) -> None:
    async def canary_tokens(seen: Seen) -> p.AcquireAccessTokenResponse:
        if seen.request.action == "fail":
            raise RpcFault(grpc.StatusCode.PERMISSION_DENIED, "denied")
        if seen.request.action == "missing":
            raise RpcFault(grpc.StatusCode.NOT_FOUND, "nothing stored")
        return p.AcquireAccessTokenResponse(access_token=f"{CANARY}-third-party-{seen.identity}")

    async def canary_user_tokens(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        return p.AcquireUserAuthorizationResponse(access_token=f"{CANARY}-user-{seen.identity}")

    servers.service.on("AcquireAccessToken", canary_tokens)
    servers.service.on("AcquireUserAuthorization", canary_user_tokens)
    servers.service.rejected.add("ya29.CANARY-stale")
    async with TokenEndpoint(servers.service) as idp:
        credentials = idp.credentials(USER, token="ya29.CANARY-stale")
        async with DataConnectorClient(
            credentials=credentials, **servers.client_kwargs(transport)
        ) as client:
            # A 401, a refresh through google-auth, a retry, a success.
            token = await client.acquire_access_token(CONNECTOR)
            assert CANARY in token.access_token
            assert_clean(repr(token))
            assert_clean(str(token))
            assert_clean(repr(client))
            await client.store_refresh_token(CONNECTOR, CODE_URI, scopes=["a"])
            await client.store_user_authorization(AUTHORIZATION, CODE_URI)
            user_token = await client.acquire_user_authorization(AUTHORIZATION)
            assert CANARY in user_token.access_token
            assert_clean(repr(user_token))
            assert_clean(str(user_token))
            for action in ("fail", "missing"):
                with pytest.raises(DataConnectorError) as caught:
                    await client.acquire_access_token(CONNECTOR, action=action)
                assert_error_clean(caught.value)
            # A plain token string, per call.
            await client.acquire_access_token(CONNECTOR, credentials=STATIC_TOKEN)
            # A rejected plain token: no refresh possible.
            servers.service.rejected.add(STATIC_TOKEN)
            with pytest.raises(Unauthenticated) as caught_auth:
                await client.acquire_access_token(CONNECTOR, credentials=STATIC_TOKEN, action="x")
            assert_error_clean(caught_auth.value)
        assert idp.refreshes == 1
    for line in captured.texts:
        assert_clean(line)
    # The capture sees the libraries' DEBUG records.
    assert any(name.startswith(("google", "urllib3")) for name in captured.names)
    if transport == "grpc":
        assert any(name.startswith("grpc") for name in captured.names)


async def test_no_secret_in_logs_of_a_fallback_or_wire_failures(
    servers: Servers, captured: LogCapture
) -> None:
    async with DataConnectorClient(
        transport="auto",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=servers.rest_url,
        credentials=STATIC_TOKEN,
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    async with DataConnectorClient(
        transport="grpc",
        endpoint=f"127.0.0.1:{closed_port()}",
        credentials=STATIC_TOKEN,
        retry=None,
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
        assert_error_clean(caught.value)
    async with DataConnectorClient(
        transport="rest",
        rest_endpoint=f"http://127.0.0.1:{closed_port()}",
        credentials=STATIC_TOKEN,
        retry=None,
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
        assert_error_clean(caught.value)
    assert any("using REST" in line for line in captured.texts)
    for line in captured.texts:
        assert_clean(line)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and every exception attached to it as __cause__ or __context__."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
    yield from seen


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 nonsense\r\n\r\n", b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9"],
    ids=["bad-status-line", "not-http", "cut-headers"],
)
async def test_malformed_http_answers_keep_the_token_out_of_the_exception_chain(
    answer: bytes,
) -> None:
    """aiohttp's parse errors hold the request headers; none may ride along with ours."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with (
        tcp_server(reply) as port,
        DataConnectorClient(
            transport="rest",
            rest_endpoint=f"http://127.0.0.1:{port}",
            credentials=STATIC_TOKEN,
            retry=None,
        ) as client,
    ):
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
    text = "".join(traceback.format_exception(caught.value))
    for error in _chain(caught.value):
        text += repr(error) + str(error) + repr(getattr(error, "__dict__", ""))
        text += repr(getattr(error, "request_info", ""))
    assert CANARY not in text


@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_a_token_answer_without_access_token_stays_out_of_the_exception_chain(
    servers: Servers, transport: str
) -> None:
    """google-auth's RefreshError carries the token endpoint's whole answer."""
    async with TokenEndpoint(servers.service) as idp:
        idp.body = {"refresh_token": "rt-CANARY-rotated", "id_token": "CANARY-id-token"}
        async with DataConnectorClient(
            credentials=idp.credentials(USER), **servers.client_kwargs(transport)
        ) as client:
            with pytest.raises(Unauthenticated) as caught:
                await client.acquire_access_token(CONNECTOR)
    text = "".join(traceback.format_exception(caught.value))
    for error in _chain(caught.value):
        text += repr(error) + str(error) + repr(getattr(error, "args", ""))
    assert CANARY not in text


def exposed(error: BaseException) -> str:
    """Everything an application can reach from an error: the formatted traceback and, for each
    exception along the chain, its str, repr, args and every attribute (details and metadata
    included, private ones too: a structured logger or a debugger shows them)."""
    texts = ["".join(traceback.format_exception(error))]
    for link in _chain(error):
        texts += [str(link), repr(link), repr(link.args), repr(getattr(link, "__dict__", {}))]
        for name in dir(link):
            value = getattr(link, name, None)
            if name.startswith("__") or callable(value):
                continue
            texts.append(repr(value))
            if isinstance(value, tuple):
                texts += [
                    m.SerializeToString().decode("latin-1")
                    for m in value
                    if isinstance(m, message.Message)
                ]
    return "\n".join(texts)


ECHO_TOKEN = "ya29.CANARY-echoed-bearer"
ECHO_CODE = "CANARY-echoed/code"  # the slash makes its percent-encoded form differ
ECHO_URI = f"https://app.example/callback?code={quote(ECHO_CODE, safe='')}&state=s"
ECHO_TYPE = "type.googleapis.com/test.Echo"  # a detail type the client does not know


def echo_of(authorization: str, body: str) -> str:
    """What an echoing server says back: the header, the request, and the redirect URI and its
    code as they came and percent-encoded."""
    uri = ECHO_URI if "callback" in body else ""
    code = parse_qs(urlsplit(uri).query).get("code", [""])[0]
    forms = [authorization, body, quote(uri, safe=""), quote_plus(uri), code, quote(code)]
    return "you sent: " + " | ".join(forms)


def echo_details(said: str, code: grpc.StatusCode) -> list[message.Message]:
    """ErrorInfo (``principal`` becomes AuthorizationRequired.principal), a known detail type,
    all echoing."""
    info = error_info("REFRESH_TOKEN_NOT_FOUND" if code == grpc.StatusCode.NOT_FOUND else "ECHO")
    info.metadata.update({"principal": said, "request": said})
    return [info, error_details_pb2.LocalizedMessage(locale="en", message=said)]


def echo_over_grpc(code: grpc.StatusCode) -> Any:
    async def echo(seen: Seen) -> NoReturn:
        said = echo_of(seen.headers["authorization"], str(seen.request))
        fault = RpcFault(code, said, *echo_details(said, code))
        unknown = wrappers_pb2.StringValue(value=said).SerializeToString()
        fault.status.details.append(any_pb2.Any(type_url=ECHO_TYPE, value=unknown))
        raise fault

    return echo


def echo_over_rest(code: grpc.StatusCode) -> Any:
    async def echo(request: web.Request) -> web.Response:
        said = echo_of(request.headers["Authorization"], await request.text())
        details: list[dict[str, Any]] = [
            {
                "@type": f"type.googleapis.com/{d.DESCRIPTOR.full_name}",
                **json_format.MessageToDict(d),
            }
            for d in echo_details(said, code)
        ]
        details.append({"@type": ECHO_TYPE, "echo": said})
        error = {"code": 400, "message": said, "status": code.name, "details": details}
        return web.json_response({"error": error}, status=400)

    return echo


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND])
@pytest.mark.parametrize("method", ["acquire", "store", "acquire_user", "store_user"])
async def test_a_server_echoing_the_request_puts_no_secret_in_the_exception(
    servers: Servers, transport: str, method: str, code: grpc.StatusCode
) -> None:
    """The bearer token, the redirect URI and its code come back in the message, ErrorInfo, a
    known and an unknown detail type: none of it survives, anywhere along the chain."""
    for name in (
        "AcquireAccessToken",
        "AcquireAndStoreRefreshToken",
        "AcquireUserAuthorization",
        "StoreUserAuthorization",
    ):
        servers.service.on(name, echo_over_grpc(code))
    servers.service.rest_hook = echo_over_rest(code)
    async with DataConnectorClient(
        credentials=ECHO_TOKEN, retry=None, **servers.client_kwargs(transport)
    ) as client:
        call = {
            "acquire": lambda: client.acquire_access_token(CONNECTOR),
            "store": lambda: client.store_refresh_token(CONNECTOR, ECHO_URI),
            "acquire_user": lambda: client.acquire_user_authorization(AUTHORIZATION),
            "store_user": lambda: client.store_user_authorization(AUTHORIZATION, ECHO_URI),
        }[method]()
        with pytest.raises(DataConnectorError) as caught:
            await call
    error = caught.value
    if code == grpc.StatusCode.NOT_FOUND and method.startswith("acquire"):
        assert isinstance(error, AuthorizationRequired)
        assert error.principal is not None
        assert REDACTED in error.principal
    else:
        assert error.code == code
    text = exposed(error)
    assert CANARY not in text
    # What the server said is kept, with the secrets cut out; the unknown type is dropped.
    assert error.message.startswith(f"you sent: {REDACTED}")
    assert error.metadata["request"].startswith(f"you sent: {REDACTED}")
    assert [type(d).__name__ for d in error.details] == ["ErrorInfo", "LocalizedMessage"]
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_an_undecodable_rest_answer_keeps_its_body_out_of_the_exception_chain(
    servers: Servers,
) -> None:
    """JSON decoders keep the whole document (``JSONDecodeError.doc``): here, a token."""

    async def cut_answer(request: web.Request) -> web.Response:
        body = json.dumps({"accessToken": "CANARY-answered-token", "refreshTokenInfo": {}})
        return web.Response(body=body[:-5], content_type="application/json")

    servers.service.rest_hook = cut_answer
    async with DataConnectorClient(
        credentials=STATIC_TOKEN, retry=None, **servers.client_kwargs("rest")
    ) as client:
        with pytest.raises(Internal) as caught:
            await client.acquire_access_token(CONNECTOR)
    assert "not valid JSON" in caught.value.message
    assert CANARY not in exposed(caught.value)


async def test_an_echo_cut_short_by_a_length_limit_leaves_no_part_of_the_token() -> None:
    """A malformed header line echoing the request is quoted up to a length limit: wherever
    the cut falls in the token, the part before it goes too."""
    token = "ya29.CANARY-" + "t" * 60
    padding = [0]

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        # "X... authorization: Bearer ...": a header name with a space, which aiohttp refuses.
        line = b"X" * padding[0] + b" " + head[head.lower().index(b"authorization") :]
        writer.write(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    messages = []
    async with (
        tcp_server(reply) as port,
        DataConnectorClient(
            transport="rest",
            rest_endpoint=f"http://127.0.0.1:{port}",
            credentials=token,
            retry=None,
        ) as client,
    ):
        for padding[0] in range(1, 200, 5):
            with pytest.raises(DataConnectorError) as caught:
                await client.acquire_access_token(CONNECTOR)
            messages.append(exposed(caught.value))
    assert any(REDACTED in m for m in messages)  # the echo was quoted
    assert not [m for m in messages if token[:8] in m]


async def test_an_authorization_uri_echoing_the_bearer_is_redacted(
    servers: Servers, transport: str
) -> None:
    """The authorization URI is no secret, but a server may put the caller's token in it."""

    async def echo_in_uri(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        echoed = quote(seen.headers["authorization"], safe="")
        return p.AcquireUserAuthorizationResponse(
            authorization_uri=f"https://consent.example/?state=s&echo={echoed}"
        )

    servers.service.on("AcquireUserAuthorization", echo_in_uri)
    async with DataConnectorClient(
        credentials=ECHO_TOKEN, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_user_authorization(AUTHORIZATION)
    assert caught.value.authorization_uri == f"https://consent.example/?state=s&echo={REDACTED}"
    assert CANARY not in exposed(caught.value)


async def test_a_token_endpoint_echoing_the_refresh_request_puts_no_secret_in_the_error(
    servers: Servers, transport: str
) -> None:
    """google-auth puts a non-JSON error body in its exception: the refresh token and the
    client secret sent to the token endpoint must not reach ours."""
    async with TokenEndpoint(servers.service) as idp:
        idp.echo = True
        credentials = idp.credentials("CANARY-refresher")
        async with DataConnectorClient(
            credentials=credentials, retry=None, **servers.client_kwargs(transport)
        ) as client:
            with pytest.raises(Unauthenticated) as caught:
                await client.acquire_access_token(CONNECTOR)
    text = exposed(caught.value)
    assert "bad request" in text  # the endpoint's answer is described
    for secret in (credentials.refresh_token, CLIENT_SECRET):
        assert secret not in text
        assert quote(secret, safe="") not in text
