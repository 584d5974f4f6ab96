"""Endpoints: regional hosts, proxies, custom CAs and the emulator variables, on both wires.

Google's hosts are reached through a real HTTP CONNECT proxy (HTTPS_PROXY) that tunnels every
connection to a local TLS server holding a test certificate for those names: the CONNECT
targets show which host the client chose, and the TLS handshake checks ``ssl_context``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentspace_grpc import DataConnectorClient, DeadlineExceeded, Unavailable, UsageError
from agentspace_grpc._transports.base import is_loopback, proxy_for
from tests._servers import CONNECTOR, ConnectProxy, Servers, closed_port, serve
from tests._tls import TlsMaterial

HOSTS = (
    "discoveryengine.googleapis.com",
    "us-discoveryengine.googleapis.com",
    "eu-discoveryengine.googleapis.com",
    "svc.agentspace.invalid",
    "127.0.0.1",
)


def name_in(location: str) -> str:
    return f"projects/p/locations/{location}/collections/default_collection/dataConnector"


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return TlsMaterial.create(tmp_path, HOSTS)


@pytest.fixture
async def tls_servers(tls: TlsMaterial) -> AsyncIterator[Servers]:
    async with serve(tls=tls) as running:
        yield running


@pytest.fixture
async def proxy(tls_servers: Servers, transport: str) -> AsyncIterator[ConnectProxy]:
    port = tls_servers.grpc_port if transport == "grpc" else tls_servers.rest_port
    async with ConnectProxy(port) as running:
        yield running


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "grpc_proxy",
        "AGENTSPACE_EMULATOR_HOST",
        "AGENTSPACE_EMULATOR_REST",
        "AGENTSPACE_EMULATOR_INSECURE",
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


async def test_regional_hosts_are_chosen_from_the_name_through_https_proxy(
    tls: TlsMaterial,
    tls_servers: Servers,
    proxy: ConnectProxy,
    transport: str,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    no_proxy_variables.setenv("HTTPS_PROXY", proxy.url)
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        credentials="alice",
        ssl_context=tls.client_context(),
    ) as client:
        for location in ("us", "eu", "global", "europe-west1", "us"):
            token = await client.acquire_access_token(name_in(location))
            assert token.connector == name_in(location)
    assert proxy.targets == [
        "us-discoveryengine.googleapis.com:443",
        "eu-discoveryengine.googleapis.com:443",
        "discoveryengine.googleapis.com:443",
    ]  # one connection per host, reused
    assert [s.wire for s in tls_servers.service.seen] == [transport] * 5


async def test_no_proxy_sends_the_host_direct(
    tls: TlsMaterial,
    tls_servers: Servers,
    proxy: ConnectProxy,
    transport: str,
    no_proxy_variables: pytest.MonkeyPatch,
) -> None:
    no_proxy_variables.setenv("HTTPS_PROXY", proxy.url)
    kwargs = {
        "transport": transport,
        "endpoint": "svc.agentspace.invalid:443",
        "credentials": "alice",
        "ssl_context": tls.client_context(),
        "retry": None,
    }
    async with DataConnectorClient(**kwargs) as client:  # type: ignore[arg-type]
        await client.acquire_access_token(CONNECTOR)
    assert proxy.targets == ["svc.agentspace.invalid:443"]
    no_proxy_variables.setenv("NO_PROXY", "localhost,.agentspace.invalid")
    async with DataConnectorClient(**kwargs) as client:  # type: ignore[arg-type]
        with pytest.raises((Unavailable, DeadlineExceeded)):  # .invalid never resolves
            await client.acquire_access_token(CONNECTOR, timeout=5)
    assert proxy.targets == ["svc.agentspace.invalid:443"]


async def test_a_custom_ca_is_trusted_on_both_wires(
    tls: TlsMaterial, tls_servers: Servers, transport: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    async with DataConnectorClient(
        credentials="alice",
        ssl_context=tls.client_context(),
        **tls_servers.client_kwargs(transport),
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert token.access_token == "tp:alice:1"


async def test_without_the_ca_the_handshake_fails_as_unavailable(
    tls_servers: Servers, transport: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    async with DataConnectorClient(
        credentials="alice",
        ssl_context=ssl.create_default_context(),  # the system's CAs only
        retry=None,
        **tls_servers.client_kwargs(transport),
    ) as client:
        with pytest.raises(Unavailable) as caught:
            await client.acquire_access_token(CONNECTOR, timeout=5)
    assert "certificate" in caught.value.message.lower() or "CERTIFICATE" in caught.value.message
    assert tls_servers.service.seen == []


async def test_the_emulator_variables_point_clients_at_an_emulator(
    servers: Servers, transport: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_HOST", servers.grpc_target)
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
    async with DataConnectorClient(transport=transport, credentials="alice") as client:  # type: ignore[arg-type]
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(name_in("us"))  # no regional host with an emulator
    assert [s.wire for s in servers.service.seen] == [transport, transport]


async def test_auto_mode_with_the_emulator_variables(
    servers: Servers, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_HOST", servers.grpc_target)
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
    async with DataConnectorClient(credentials="alice") as client:
        await client.acquire_access_token(CONNECTOR)
    assert [s.wire for s in servers.service.seen] == ["grpc"]


async def test_only_the_rest_variable_means_rest(
    servers: Servers, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
    async with DataConnectorClient(credentials="alice") as client:
        await client.acquire_access_token(CONNECTOR)
    assert [s.wire for s in servers.service.seen] == ["rest"]


async def test_an_explicit_endpoint_wins_over_the_variables(
    servers: Servers, transport: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_HOST", f"127.0.0.1:{closed_port()}")
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_REST", f"http://127.0.0.1:{closed_port()}")
    async with DataConnectorClient(
        credentials="alice", retry=None, **servers.client_kwargs(transport)
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    assert [s.wire for s in servers.service.seen] == [transport]


@pytest.mark.parametrize(
    ("host", "rest", "named"),
    [
        ("emulator:8080", None, "AGENTSPACE_EMULATOR_HOST=emulator:8080"),
        ("10.1.2.3:8080", "http://127.0.0.1:8081", "AGENTSPACE_EMULATOR_HOST=10.1.2.3:8080"),
        ("127.0.0.1:8080", "http://emulator:8081", "AGENTSPACE_EMULATOR_REST=http://emulator:8081"),
        (None, "https://evil.localhost:8081", "AGENTSPACE_EMULATOR_REST=https://evil.localhost"),
    ],
)
def test_a_remote_emulator_variable_needs_its_own_opt_in(
    host: str | None, rest: str | None, named: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("network I/O before the emulator address was checked")

    for variable, value in (("AGENTSPACE_EMULATOR_HOST", host), ("AGENTSPACE_EMULATOR_REST", rest)):
        if value is not None:
            no_proxy_variables.setenv(variable, value)
    no_proxy_variables.setattr(socket, "getaddrinfo", no_io)
    no_proxy_variables.setattr(socket.socket, "connect", no_io)
    with pytest.raises(UsageError, match="AGENTSPACE_EMULATOR_INSECURE=1") as caught:
        DataConnectorClient(credentials="alice-secret-token")
    assert named in str(caught.value)
    assert "alice-secret-token" not in str(caught.value)
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_INSECURE", "true")  # only 1 opts in
    with pytest.raises(UsageError):
        DataConnectorClient(credentials="alice-secret-token")
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_INSECURE", "1")
    DataConnectorClient(credentials="alice-secret-token")  # a compose network's "emulator"
    # An explicit endpoint ignores the variables, and so their check.
    no_proxy_variables.delenv("AGENTSPACE_EMULATOR_INSECURE")
    DataConnectorClient(endpoint="127.0.0.1:1", credentials="alice-secret-token")


async def test_a_client_that_uses_the_emulator_variables_logs_one_warning_naming_them(
    servers: Servers, no_proxy_variables: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_HOST", servers.grpc_target)
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
    with caplog.at_level(logging.DEBUG, logger="agentspace_grpc"):
        async with DataConnectorClient(credentials="alice") as client:
            await client.acquire_access_token(CONNECTOR)
            await client.acquire_access_token(CONNECTOR, action="again")
        async with DataConnectorClient(credentials="alice", **servers.client_kwargs("grpc")):
            pass  # an explicit endpoint: no emulator variable picked up
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "agentspace_grpc"
    assert servers.grpc_target in warnings[0].getMessage()
    assert servers.rest_url in warnings[0].getMessage()


def test_a_bad_emulator_variable_is_a_clear_error(no_proxy_variables: pytest.MonkeyPatch) -> None:
    no_proxy_variables.setenv("AGENTSPACE_EMULATOR_HOST", "http://localhost:8080")
    with pytest.raises(ValueError, match="AGENTSPACE_EMULATOR_HOST"):
        DataConnectorClient()


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.8.9.10", "::1", "[::1]"]
)
def test_loopback_is_a_literal_loopback_address_or_localhost_itself(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["evil.localhost", "a.b.localhost", "evil.localhost.", "localhost.evil.example"]
)
def test_names_under_localhost_are_remote_hosts(
    host: str, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    assert not is_loopback(host)
    no_proxy_variables.setenv("HTTP_PROXY", "http://proxy.agentspace.invalid:3128")
    assert proxy_for("http", host, 8080) == "http://proxy.agentspace.invalid:3128"
    with pytest.raises(UsageError, match="plaintext HTTP to a non-loopback host"):
        DataConnectorClient(rest_endpoint=f"http://{host}:8080", credentials="alice")
