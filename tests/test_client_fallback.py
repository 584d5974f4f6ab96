"""transport="auto": gRPC first, REST when gRPC cannot reach the service, not on its errors."""

from __future__ import annotations

import time
import types
from pathlib import Path

import grpc
import pytest

from agentspace_grpc import (
    DataConnectorClient,
    DataConnectorError,
    Unavailable,
)
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy, closed_port, grpc_bytes_server
from tests._servers import CONNECTOR, RpcFault, Seen, Servers, serve
from tests._tls import TlsMaterial


def wires(servers: Servers) -> list[str]:
    return [seen.wire for seen in servers.service.seen]


async def test_auto_falls_back_when_the_grpc_endpoint_speaks_only_http1(servers: Servers) -> None:
    # One endpoint for both wires, and it is the REST port: gRPC meets an HTTP/1.1 server.
    async with DataConnectorClient(
        transport="auto", endpoint=f"127.0.0.1:{servers.rest_port}", credentials="alice"
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert token.access_token == "tp:alice:1"
    assert token.transport == "rest"
    assert wires(servers) == ["rest"]


async def test_auto_falls_back_when_the_grpc_port_is_closed(servers: Servers) -> None:
    async with DataConnectorClient(
        transport="auto",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=servers.rest_url,
        credentials="alice",
    ) as client:
        assert client.current_transport == "grpc"  # until it fails
        token = await client.acquire_access_token(CONNECTOR)
        extras = await client.store_refresh_token(CONNECTOR, "https://r/?code=1")
        assert client.current_transport == "rest"
    assert token.access_token == "tp:alice:1"
    assert extras["stored"] is True
    assert wires(servers) == ["rest", "rest"]


async def test_grpc_mode_does_not_fall_back(servers: Servers) -> None:
    async with DataConnectorClient(
        transport="grpc",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=servers.rest_url,
        credentials="alice",
        retry=None,
    ) as client:
        with pytest.raises(Unavailable) as caught:
            await client.acquire_access_token(CONNECTOR)
    assert caught.value.transport == "grpc"
    assert "Connection refused" in caught.value.message
    assert servers.service.seen == []


async def test_after_a_fallback_calls_stay_on_rest(servers: Servers) -> None:
    async with TcpProxy(servers.grpc_port) as proxy:
        await proxy.refuse()
        async with DataConnectorClient(
            transport="auto",
            endpoint=proxy.address,
            rest_endpoint=servers.rest_url,
            credentials="alice",
        ) as client:
            await client.acquire_access_token(CONNECTOR)
            await proxy.listen()  # gRPC is reachable again
            for _ in range(3):
                await client.acquire_access_token(CONNECTOR, action="again")
        assert proxy.accepted == 0
    assert wires(servers) == ["rest"] * 4


class _Clock:
    """A monotonic clock the test moves forward (the client's re-probe timer reads it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def test_grpc_is_probed_again_after_a_bounded_interval(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(
        "agentspace_grpc._calls.time", types.SimpleNamespace(monotonic=clock.monotonic)
    )
    async with TcpProxy(servers.grpc_port) as proxy:
        await proxy.refuse()
        async with DataConnectorClient(
            transport="auto",
            endpoint=proxy.address,
            rest_endpoint=servers.rest_url,
            credentials="alice",
        ) as client:
            await client.acquire_access_token(CONNECTOR)
            await proxy.listen()
            clock.offset += 5
            await client.acquire_access_token(CONNECTOR, action="soon")
            clock.offset += 10 * 60  # past any re-probe interval
            await client.acquire_access_token(CONNECTOR, action="later")
            await client.acquire_access_token(CONNECTOR, action="after")
    seen = [(s.wire, s.request.action) for s in servers.service.seen]
    assert wires(servers) == ["rest", "rest", "grpc", "grpc"], seen


async def test_pitfall_5_tls_without_alpn_fails_grpc_fast_and_auto_uses_rest(
    tmp_path: Path,
) -> None:
    tls = TlsMaterial.create(tmp_path)
    # A TLS front that negotiates no ALPN (an intercepting proxy, an HTTP/1.1 load balancer).
    async with serve(tls=tls, rest_alpn=()) as servers:
        started = time.monotonic()
        async with DataConnectorClient(
            transport="grpc",
            endpoint=f"127.0.0.1:{servers.rest_port}",
            ssl_context=tls.client_context(),
            credentials="alice",
            retry=None,
        ) as client:
            with pytest.raises(Unavailable, match="ALPN"):
                await client.acquire_access_token(CONNECTOR, timeout=10)
        assert time.monotonic() - started < 5  # classified at once, not at the deadline
        async with DataConnectorClient(
            transport="auto",
            endpoint=f"127.0.0.1:{servers.rest_port}",
            ssl_context=tls.client_context(),
            credentials="alice",
        ) as client:
            token = await client.acquire_access_token(CONNECTOR)
        assert token.access_token == "tp:alice:1"
        assert wires(servers) == ["rest"]


async def test_unimplemented_over_grpc_falls_back(servers: Servers) -> None:
    async def grpc_lacks_it(seen: Seen) -> p.AcquireAccessTokenResponse:
        if seen.wire == "grpc":
            raise RpcFault(grpc.StatusCode.UNIMPLEMENTED, "unknown method")
        return p.AcquireAccessTokenResponse(access_token="from-rest")

    servers.service.on("AcquireAccessToken", grpc_lacks_it)
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("auto")) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert token.access_token == "from-rest"
    assert wires(servers) == ["grpc", "rest"]


async def test_empty_token_over_grpc_marks_it_incompatible_and_rest_stays_in_use(
    servers: Servers,
) -> None:
    async def mismatched_field_numbers(seen: Seen) -> p.AcquireAccessTokenResponse:
        if seen.wire == "grpc":
            return p.AcquireAccessTokenResponse()  # what wrong field numbers would decode to
        return p.AcquireAccessTokenResponse(access_token=f"rest-{len(servers.service.seen)}")

    servers.service.on("AcquireAccessToken", mismatched_field_numbers)
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("auto")) as client:
        first = await client.acquire_access_token(CONNECTOR)
        second = await client.acquire_access_token(CONNECTOR)
    assert first.access_token == "rest-2"
    assert second.access_token == "rest-3"
    assert wires(servers) == ["grpc", "rest", "rest"]


async def test_undecodable_grpc_answer_marks_it_incompatible_and_rest_answers(
    servers: Servers,
) -> None:
    # Field 2 (access_token) holding invalid UTF-8: what a wire-type or numbering mismatch with
    # the hosted service could send. grpc cannot decode it.
    async with (
        grpc_bytes_server("AcquireAccessToken", lambda request: b"\x12\x02\xff\xfe") as target,
        DataConnectorClient(
            credentials="alice", endpoint=target, rest_endpoint=servers.rest_url
        ) as client,
    ):
        first = await client.acquire_access_token(CONNECTOR)
        second = await client.acquire_access_token(CONNECTOR)
    assert (first.transport, second.transport) == ("rest", "rest")
    assert wires(servers) == ["rest", "rest"]


async def test_service_errors_never_trigger_fallback(servers: Servers) -> None:
    """Which errors move to REST is decide()'s table (test_policy.py); this is the wiring."""
    code = grpc.StatusCode.UNAVAILABLE
    servers.service.fail_next(RpcFault(code, "from the service"))
    async with DataConnectorClient(
        credentials="alice", retry=None, **servers.client_kwargs("auto")
    ) as client:
        with pytest.raises(DataConnectorError) as caught:
            await client.acquire_access_token(CONNECTOR)
        assert caught.value.code == code
        assert caught.value.transport == "grpc"
        await client.acquire_access_token(CONNECTOR)  # the next call is still gRPC
    assert wires(servers) == ["grpc", "grpc"]


async def test_auto_with_both_wires_down_raises_the_rest_failure() -> None:
    async with DataConnectorClient(
        transport="auto",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=f"http://127.0.0.1:{closed_port()}",
        credentials="alice",
        retry=None,
    ) as client:
        with pytest.raises(Unavailable) as caught:
            await client.acquire_access_token(CONNECTOR, timeout=5)
    assert caught.value.transport == "rest"
    assert "cannot connect" in caught.value.message


@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_pitfall_5_proxy_variables_never_apply_to_loopback(
    servers: Servers, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for variable in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "grpc_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.setenv(variable, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with DataConnectorClient(
        credentials="alice", retry=None, **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_access_token(CONNECTOR, timeout=5)
    assert token.access_token == "tp:alice:1"
    assert wires(servers) == [transport]
