"""acquire_user_authorization and store_user_authorization against real servers: results over
both wires and auto, the consent answer, error parity, retries, single-flight, misuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import google.oauth2.credentials
import grpc
import pytest
from aiohttp import web

from agentspace_grpc import (
    AuthorizationRequired,
    DataConnectorClient,
    DataConnectorError,
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    RetryPolicy,
    Unavailable,
    UndecodableAnswer,
    UsageError,
)
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy, closed_port, reset_connection
from tests._servers import AUTHORIZATION, CONNECTOR, RpcFault, Seen, Servers, error_info

FAST = RetryPolicy(max_attempts=100, initial_backoff=0.02, max_backoff=0.1)
CONSENT_URI = "https://consent.example/authorize?client_id=c&state=s%20t"
REDIRECT = "https://vertexaisearch.cloud.google.com/oauth-redirect?code=c-1&state=s"
ACQUIRE, STORE = "AcquireUserAuthorization", "StoreUserAuthorization"


def wires(servers: Servers) -> list[str]:
    return [seen.wire for seen in servers.service.seen]


def rpc(client: DataConnectorClient, method: str, **kwargs: Any) -> Awaitable[object]:
    """One of the two RPCs on the test authorization."""
    if method == ACQUIRE:
        return client.acquire_user_authorization(AUTHORIZATION, **kwargs)
    return client.store_user_authorization(AUTHORIZATION, REDIRECT, **kwargs)


def answer_with(**fields: Any) -> Callable[[Seen], Awaitable[p.AcquireUserAuthorizationResponse]]:
    async def answer(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        return p.AcquireUserAuthorizationResponse(**fields)

    return answer


# ---- results --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest", "auto"])
async def test_acquire_and_store_over_each_wire(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        stored = await client.store_user_authorization(AUTHORIZATION, REDIRECT)
        token = await client.acquire_user_authorization(AUTHORIZATION)
    assert stored is None
    assert token.access_token == "ua:alice:1"
    assert (token.resource, token.connector) == (AUTHORIZATION, AUTHORIZATION)
    assert token.scopes == ("default",)
    wire = "grpc" if transport == "auto" else transport
    assert token.transport == wire
    store, acquire = servers.service.seen
    assert (store.method, store.wire, store.identity) == (STORE, wire, "alice")
    assert (store.request.name, store.request.full_redirect_uri) == (AUTHORIZATION, REDIRECT)
    assert (acquire.method, acquire.wire, acquire.request.name) == (ACQUIRE, wire, AUTHORIZATION)


@pytest.mark.parametrize("transport", ["grpc", "rest", "auto"])
async def test_per_call_credentials_and_metadata(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="agent", **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_user_authorization(
            AUTHORIZATION, credentials="bob", metadata=[("x-trace", "t1")]
        )
        await client.store_user_authorization(AUTHORIZATION, REDIRECT, credentials="carol")
    assert token.access_token == "ua:bob:1"
    acquire, store = servers.service.seen
    assert (acquire.identity, acquire.headers["x-trace"]) == ("bob", "t1")
    assert store.identity == "carol"


# ---- the consent answer -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest", "auto"])
async def test_an_authorization_uri_without_a_token_is_authorization_required(
    servers: Servers, transport: str
) -> None:
    servers.service.on(ACQUIRE, answer_with(authorization_uri=CONSENT_URI))
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token="alice", account="alice@example.com"
    )
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_user_authorization(AUTHORIZATION)
    error = caught.value
    assert isinstance(error, NotFound)
    assert error.authorization_uri == CONSENT_URI
    assert (error.resource, error.connector) == (AUTHORIZATION, AUTHORIZATION)
    assert error.reason is None
    wire = "grpc" if transport == "auto" else transport
    assert (error.transport, error.http_status) == (wire, 200 if wire == "rest" else None)
    assert error.principal == "alice@example.com"
    assert "store_user_authorization()" in error.message
    text = str(error)
    assert text.startswith(f"NOT_FOUND: alice@example.com has not authorized {AUTHORIZATION}: ")
    assert "store_user_authorization()" in text
    assert wires(servers) == [wire]  # a consent answer is not a reason to fall back


async def test_the_consent_answer_is_the_same_over_both_wires(servers: Servers) -> None:
    servers.service.on(ACQUIRE, answer_with(authorization_uri=CONSENT_URI))
    caught = {}
    for transport in ("grpc", "rest"):
        async with DataConnectorClient(
            credentials="alice", **servers.client_kwargs(transport)
        ) as client:
            with pytest.raises(AuthorizationRequired) as info:
                await client.acquire_user_authorization(AUTHORIZATION)
        caught[transport] = info.value
    assert str(caught["grpc"]) == str(caught["rest"])
    assert caught["grpc"].message == caught["rest"].message


async def test_a_token_wins_over_an_authorization_uri(servers: Servers, transport: str) -> None:
    servers.service.on(ACQUIRE, answer_with(access_token="t", authorization_uri=CONSENT_URI))
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_user_authorization(AUTHORIZATION)
    assert token.access_token == "t"


@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_an_answer_with_neither_token_nor_uri_is_an_error(
    servers: Servers, transport: str
) -> None:
    servers.service.on(ACQUIRE, answer_with())
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(UndecodableAnswer, match="neither an access token nor") as caught:
            await client.acquire_user_authorization(AUTHORIZATION)
    assert caught.value.transport == transport
    assert len(servers.service.seen) == 1  # not retried


async def test_auto_moves_to_rest_when_grpc_answers_with_neither(servers: Servers) -> None:
    """What wrong inferred field numbers would decode to: gRPC marked incompatible."""

    async def empty_over_grpc(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        if seen.wire == "grpc":
            return p.AcquireUserAuthorizationResponse()
        return p.AcquireUserAuthorizationResponse(access_token=f"rest-{len(servers.service.seen)}")

    servers.service.on(ACQUIRE, empty_over_grpc)
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("auto")) as client:
        first = await client.acquire_user_authorization(AUTHORIZATION)
        second = await client.acquire_user_authorization(AUTHORIZATION)
    assert (first.access_token, second.access_token) == ("rest-2", "rest-3")
    assert wires(servers) == ["grpc", "rest", "rest"]


async def test_auto_falls_back_when_grpc_cannot_connect(servers: Servers) -> None:
    async with DataConnectorClient(
        transport="auto",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=servers.rest_url,
        credentials="alice",
    ) as client:
        token = await client.acquire_user_authorization(AUTHORIZATION)
        await client.store_user_authorization(AUTHORIZATION, REDIRECT)
    assert token.transport == "rest"
    assert wires(servers) == ["rest", "rest"]


# ---- errors ---------------------------------------------------------------------------------

SERVICE_ERRORS = [
    (grpc.StatusCode.NOT_FOUND, "AUTHORIZATION_NOT_FOUND", NotFound),
    (grpc.StatusCode.PERMISSION_DENIED, None, PermissionDenied),
    (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", Unavailable),
]


@pytest.mark.parametrize("method", [ACQUIRE, STORE])
@pytest.mark.parametrize(("code", "reason", "expected"), SERVICE_ERRORS)
async def test_service_errors_are_the_same_exception_on_both_wires(
    servers: Servers,
    method: str,
    code: grpc.StatusCode,
    reason: str | None,
    expected: type[DataConnectorError],
) -> None:
    details = [error_info(reason, authorization=AUTHORIZATION)] if reason else []
    caught = {}
    for transport in ("grpc", "rest"):
        servers.service.fail_next(RpcFault(code, f"the {code.name} message", *details))
        async with DataConnectorClient(
            credentials="alice", retry=None, **servers.client_kwargs(transport)
        ) as client:
            with pytest.raises(DataConnectorError) as info:
                await rpc(client, method)
        caught[transport] = info.value
    for error in caught.values():
        assert type(error) is expected
        assert (error.code, error.reason) == (code, reason)
        assert error.message == f"the {code.name} message"
        assert dict(error.metadata) == ({"authorization": AUTHORIZATION} if reason else {})
    assert str(caught["grpc"]) == str(caught["rest"])
    assert (caught["grpc"].transport, caught["rest"].transport) == ("grpc", "rest")


async def test_not_found_without_reason_on_acquire_means_authorization_required(
    servers: Servers, transport: str
) -> None:
    servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "Not found"))
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(AuthorizationRequired) as caught:
            await client.acquire_user_authorization(AUTHORIZATION)
        servers.service.fail_next(RpcFault(grpc.StatusCode.NOT_FOUND, "Not found"))
        with pytest.raises(NotFound) as plain:
            await client.store_user_authorization(AUTHORIZATION, REDIRECT)
    assert caught.value.authorization_uri is None
    assert caught.value.resource == AUTHORIZATION
    assert "store_user_authorization()" in str(caught.value)
    assert "store_refresh_token" not in str(caught.value)
    assert not isinstance(plain.value, AuthorizationRequired)


# ---- deadlines and retries: both RPCs change server state ----------------------------------


async def test_one_deadline_against_a_stalled_server(servers: Servers, transport: str) -> None:
    async def stall(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    servers.service.on(ACQUIRE, stall)
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.acquire_user_authorization(AUTHORIZATION, timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert len(servers.service.seen) == 1


@pytest.mark.parametrize("method", [ACQUIRE, STORE])
async def test_unavailable_from_the_service_is_retried(
    servers: Servers, transport: str, method: str
) -> None:
    unavailable = RpcFault(grpc.StatusCode.UNAVAILABLE, "try later")
    servers.service.fail_next(unavailable, unavailable)
    async with DataConnectorClient(
        credentials="alice", retry=FAST, **servers.client_kwargs(transport)
    ) as client:
        if method == ACQUIRE:
            token = await client.acquire_user_authorization(AUTHORIZATION)
            assert token.access_token == "ua:alice:3"
        else:
            await client.store_user_authorization(AUTHORIZATION, REDIRECT)
    assert len(servers.service.calls(method)) == 3


@pytest.mark.parametrize("method", [ACQUIRE, STORE])
async def test_a_dropped_answer_after_the_commit_is_not_retried(
    servers: Servers, transport: str, method: str
) -> None:
    commits: list[str] = []
    async with TcpProxy(servers.grpc_port) as proxy:

        async def commit_then_drop_grpc(seen: Seen) -> Any:
            commits.append(seen.method)  # a refresh token rotated, or a grant filed
            proxy.reset_all()  # ... and the answer is lost on the way back
            await asyncio.Event().wait()

        async def commit_then_drop_rest(request: web.Request) -> web.StreamResponse | None:
            await request.read()
            commits.append(method)
            reset_connection(request)
            return web.Response()

        servers.service.on(method, commit_then_drop_grpc)
        servers.service.rest_hook = commit_then_drop_rest
        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=servers.rest_url,
            credentials="alice",
            retry=FAST,
        ) as client:
            with pytest.raises(Unavailable):
                await rpc(client, method, timeout=5)
    assert commits == [method]


async def test_a_refused_connection_is_retried(servers: Servers, transport: str) -> None:
    """Refused: provably unsent, so even a call that changes server state is retried."""
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port) as proxy:
        await proxy.refuse()
        retried = asyncio.Event()

        class Reopen(RetryPolicy):
            def backoff(self, retry: int, draw: float | None = None) -> float:
                retried.set()
                return 0.05

        async with DataConnectorClient(
            transport=transport,
            endpoint=proxy.address,
            rest_endpoint=proxy.url,
            credentials="alice",
            retry=Reopen(max_attempts=100),
        ) as client:
            call = asyncio.ensure_future(
                client.store_user_authorization(AUTHORIZATION, REDIRECT, timeout=8)
            )
            await retried.wait()
            await proxy.listen()
            await call
    assert [seen.method for seen in servers.service.seen] == [STORE]


# ---- single-flight --------------------------------------------------------------------------


async def test_identical_concurrent_acquires_share_one_rpc(
    servers: Servers, transport: str
) -> None:
    arrivals: asyncio.Queue[Seen] = asyncio.Queue()
    release = asyncio.Event()

    async def held(seen: Seen) -> p.AcquireUserAuthorizationResponse:
        arrivals.put_nowait(seen)
        await release.wait()
        return p.AcquireUserAuthorizationResponse(access_token=f"{seen.identity}-{id(seen)}")

    servers.service.on(ACQUIRE, held)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport)
    ) as client:
        shared = [
            asyncio.ensure_future(client.acquire_user_authorization(AUTHORIZATION))
            for _ in range(20)
        ]
        assert (await arrivals.get()).identity == "alice"
        # While the shared call is held: the connector method and another user do not join it.
        await client.acquire_access_token(CONNECTOR)
        other = asyncio.ensure_future(
            client.acquire_user_authorization(AUTHORIZATION, credentials="bob")
        )
        assert (await arrivals.get()).identity == "bob"
        release.set()
        tokens = await asyncio.gather(*shared)
        bob = await other
    assert len({t.access_token for t in tokens}) == 1
    assert tokens[0].access_token.startswith("alice-")
    assert bob.access_token.startswith("bob-")
    assert len(servers.service.calls(ACQUIRE)) == 2


# ---- misuse: before any I/O ---------------------------------------------------------------


async def test_a_name_of_the_other_kind_names_the_right_method(servers: Servers) -> None:
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("rest")) as client:
        await client.acquire_user_authorization(AUTHORIZATION)  # cached requests stay apart
        calls = [
            (client.acquire_user_authorization(CONNECTOR), "acquire_access_token"),
            (client.store_user_authorization(CONNECTOR, REDIRECT), "store_refresh_token"),
            (client.acquire_access_token(AUTHORIZATION), "acquire_user_authorization"),
            (client.store_refresh_token(AUTHORIZATION, REDIRECT), "store_user_authorization"),
        ]
        for call, right in calls:
            with pytest.raises(UsageError, match=rf"call {right}\(\)"):
                await call
        with (
            pytest.warns(DeprecationWarning, match="deprecated"),
            pytest.raises(UsageError, match=r"call acquire_user_authorization\(\)"),
        ):
            await client.check_refresh_token(AUTHORIZATION)
    assert len(servers.service.seen) == 1


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda c: c.acquire_user_authorization("projects/p/authorizations/a"), "invalid auth"),
        (lambda c: c.acquire_user_authorization(AUTHORIZATION + "/x"), "invalid authorization"),
        (lambda c: c.acquire_user_authorization(None), "an authorization resource name"),
        (lambda c: c.acquire_user_authorization(AUTHORIZATION, timeout=0), "timeout"),
        (lambda c: c.acquire_user_authorization(AUTHORIZATION, metadata=[("a", 1)]), "metadata"),
        (lambda c: c.acquire_user_authorization(AUTHORIZATION, credentials=3), "credentials"),
        (lambda c: c.store_user_authorization(AUTHORIZATION, ""), "full_redirect_uri"),
        (lambda c: c.store_user_authorization(AUTHORIZATION, None), "full_redirect_uri"),
        (lambda c: c.store_user_authorization("x", REDIRECT), "invalid authorization name"),
    ],
)
async def test_bad_arguments_fail_before_any_io(call: Any, words: str) -> None:
    async with DataConnectorClient(
        credentials="alice", endpoint=f"127.0.0.1:{closed_port()}", retry=None
    ) as client:
        with pytest.raises(UsageError, match=words):
            await call(client)
