"""Tokens are secrets: canary values never appear in logs (DEBUG, every library), exception
messages, reprs or tracebacks, over both wires and through refreshes, errors and fallback."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator

import grpc
import pytest

from agentspace_grpc import DataConnectorClient, DataConnectorError, Unauthenticated
from agentspace_grpc import _proto as p
from tests._reliability import LogCapture, debug_logging
from tests._servers import (
    CLIENT_SECRET,
    CONNECTOR,
    RpcFault,
    Seen,
    Servers,
    TokenEndpoint,
    closed_port,
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

    servers.service.on("AcquireAccessToken", canary_tokens)
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

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DataConnectorClient(
            transport="rest",
            rest_endpoint=f"http://127.0.0.1:{port}",
            credentials=STATIC_TOKEN,
            retry=None,
        ) as client:
            with pytest.raises(DataConnectorError) as caught:
                await client.acquire_access_token(CONNECTOR)
    finally:
        server.close()
        await server.wait_closed()
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
