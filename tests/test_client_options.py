"""Google's client conventions: ``client_options``, scopes and the universe domain.

Calls go to real servers on 127.0.0.1; Google's hosts in another universe are reached through
a real HTTP CONNECT proxy that tunnels to a local TLS server (the CONNECT targets show the host
the client chose), and service-account tokens come from a local token endpoint.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest
from google.api_core.client_options import ClientOptions

from agentspace_grpc import DataConnectorClient, UsageError
from tests._raw import ConnectProxy
from tests._servers import CONNECTOR, Servers, TokenEndpoint, serve, service_account_file
from tests._tls import TlsMaterial

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
READWRITE = "https://www.googleapis.com/auth/discoveryengine.readwrite"
UNIVERSE = "example-universe.test"
# google-auth's notice on its generic loader, which credentials_file uses (as api-core does).
GENERIC_LOADER = "load_credentials_from_file"


@pytest.fixture
async def idp(servers: Servers) -> AsyncIterator[TokenEndpoint]:
    async with TokenEndpoint(servers.service) as endpoint:
        yield endpoint


def user_credentials(token: str, universe: str | None = None) -> Any:
    kwargs = {} if universe is None else {"universe_domain": universe}
    return google.oauth2.credentials.Credentials(token=token, **kwargs)  # type: ignore[no-untyped-call]


# ---- client_options ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ClientOptions", "dict"])
async def test_client_options_endpoint_and_quota_project_are_honoured(
    servers: Servers, transport: str, kind: str
) -> None:
    values = {"api_endpoint": servers.grpc_target, "quota_project_id": "billing"}
    options = ClientOptions(**values) if kind == "ClientOptions" else values  # type: ignore[arg-type]
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        rest_endpoint=servers.rest_url,
        credentials="alice",
        client_options=options,
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    (seen,) = servers.service.seen
    assert seen.wire == transport
    assert seen.headers["x-goog-user-project"] == "billing"


async def test_client_options_left_none_are_ignored(servers: Servers) -> None:
    async with DataConnectorClient(
        credentials="alice", client_options=ClientOptions(), **servers.client_kwargs("grpc")
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    assert "x-goog-user-project" not in servers.service.seen[0].headers


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("api_key", "AIza-not-used"),
        ("client_cert_source", lambda: (b"cert", b"key")),
        ("client_encrypted_cert_source", lambda: ("cert", "key", b"pass")),
        ("api_audience", "https://audience.test"),
        ("apiEndpoint", "typo.test:443"),  # an unknown dict key
    ],
)
def test_unsupported_client_options_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"client_options '{option}' is not supported"):
        DataConnectorClient(credentials="alice", client_options={option: value})
    if option != "apiEndpoint":
        with pytest.raises(UsageError, match=f"'{option}'"):
            DataConnectorClient(
                credentials="alice", client_options=ClientOptions(**{option: value})
            )


@pytest.mark.parametrize(
    ("keyword", "option"),
    [
        ({"endpoint": "a.test:443"}, {"api_endpoint": "b.test:443"}),
        ({"quota_project": "a"}, {"quota_project_id": "b"}),
        ({"universe_domain": "a.test"}, {"universe_domain": "b.test"}),
    ],
)
def test_a_client_option_conflicting_with_a_keyword_names_both(
    keyword: dict[str, str], option: dict[str, str]
) -> None:
    ((argument, _),) = keyword.items()
    ((key, _),) = option.items()
    with pytest.raises(UsageError, match=rf"client_options {key}=.* conflicts with {argument}="):
        DataConnectorClient(credentials="alice", client_options=option, **keyword)  # type: ignore[arg-type]


def test_credentials_file_and_credentials_are_exclusive(tmp_path: Path) -> None:
    path = service_account_file(tmp_path / "key.json", "http://127.0.0.1:9/token")
    with pytest.raises(UsageError, match=r"credentials_file and credentials= are both set"):
        DataConnectorClient(credentials="alice", client_options={"credentials_file": str(path)})


def test_bad_client_option_values_are_refused() -> None:
    with pytest.raises(UsageError, match="scopes must be a non-empty sequence"):
        DataConnectorClient(client_options={"scopes": READWRITE})  # one string, not a list
    with pytest.raises(UsageError, match="api_endpoint takes 'host\\[:port\\]'"):
        DataConnectorClient(client_options={"api_endpoint": "https://discoveryengine.test"})
    with pytest.raises(UsageError, match="scopes cannot apply to an access-token string"):
        DataConnectorClient(credentials="alice", client_options={"scopes": [READWRITE]})
    with pytest.raises(UsageError, match=r"must be a google\.api_core ClientOptions, a dict"):
        DataConnectorClient(client_options="api_endpoint=x")
    with (
        pytest.raises(UsageError, match=r"credentials_file: File .*missing\.json was not found"),
        pytest.warns(DeprecationWarning, match=GENERIC_LOADER),
    ):
        DataConnectorClient(client_options={"credentials_file": "missing.json"})


def test_a_malformed_credentials_file_stays_out_of_the_error(tmp_path: Path) -> None:
    """google-auth chains the JSON parse error, which holds the whole file: none of it may
    be reachable from ours, not even as its context."""
    path = tmp_path / "key.json"
    path.write_text('{"type": "service_account", "private_key": "PRIVATE-KEY-TEXT", ')
    with (
        pytest.raises(UsageError, match="credentials_file") as caught,
        pytest.warns(DeprecationWarning, match=GENERIC_LOADER),
    ):
        DataConnectorClient(client_options={"credentials_file": str(path)})
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert chain == [caught.value]
    assert "PRIVATE-KEY-TEXT" not in str(caught.value)


@pytest.mark.parametrize("scopes", [None, [READWRITE]])
async def test_credentials_file_is_scoped_as_asked(
    servers: Servers, idp: TokenEndpoint, tmp_path: Path, transport: str, scopes: list[str] | None
) -> None:
    path = service_account_file(tmp_path / "key.json", idp.url, email="robot@demo.test")
    options: dict[str, object] = {"credentials_file": str(path)}
    if scopes is not None:
        options["scopes"] = scopes
    with pytest.warns(DeprecationWarning, match=GENERIC_LOADER):
        client = DataConnectorClient(client_options=options, **servers.client_kwargs(transport))
    async with client:
        await client.acquire_access_token(CONNECTOR)
    (claims,) = idp.assertions
    assert claims["scope"] == (READWRITE if scopes else CLOUD_PLATFORM)
    assert servers.service.seen[0].identity == "robot@demo.test"


async def test_adc_is_scoped_with_the_narrower_scope_when_asked(
    servers: Servers, idp: TokenEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = service_account_file(tmp_path / "adc.json", idp.url, email="adc@demo.test")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    async with DataConnectorClient(
        client_options=ClientOptions(scopes=[READWRITE]), **servers.client_kwargs("rest")
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    (claims,) = idp.assertions
    assert claims["scope"] == READWRITE
    assert servers.service.seen[0].identity == "adc@demo.test"


# ---- universe domain ----------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return TlsMaterial.create(
        tmp_path, (f"discoveryengine.{UNIVERSE}", f"eu-discoveryengine.{UNIVERSE}")
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in (
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "grpc_proxy",
        "AGENTSPACE_EMULATOR_HOST",
        "AGENTSPACE_EMULATOR_REST",
        "GOOGLE_CLOUD_UNIVERSE_DOMAIN",
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("source", ["argument", "client_options", "environment"])
async def test_the_universe_domain_picks_the_default_hosts(
    tls: TlsMaterial, transport: str, clean_env: pytest.MonkeyPatch, source: str
) -> None:
    kwargs: dict[str, Any] = {}
    if source == "argument":
        kwargs["universe_domain"] = UNIVERSE
    elif source == "client_options":
        kwargs["client_options"] = ClientOptions(universe_domain=UNIVERSE)
    else:
        clean_env.setenv("GOOGLE_CLOUD_UNIVERSE_DOMAIN", UNIVERSE)
    async with serve(tls=tls) as servers:
        port = servers.grpc_port if transport == "grpc" else servers.rest_port
        async with ConnectProxy(port) as proxy:
            clean_env.setenv("HTTPS_PROXY", proxy.url)
            async with DataConnectorClient(
                transport=transport,  # type: ignore[arg-type]
                credentials=user_credentials("alice", UNIVERSE),
                ssl_context=tls.client_context(),
                **kwargs,
            ) as client:
                await client.acquire_access_token(CONNECTOR)
                await client.acquire_access_token(CONNECTOR.replace("/global/", "/eu/"))
    assert proxy.targets == [
        f"discoveryengine.{UNIVERSE}:443",
        f"eu-discoveryengine.{UNIVERSE}:443",
    ]
    assert [seen.identity for seen in servers.service.seen] == ["alice", "alice"]


def test_a_malformed_universe_domain_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="universe_domain must be a lower-case domain name"):
        DataConnectorClient(universe_domain="https://example.test")
    clean_env.setenv("GOOGLE_CLOUD_UNIVERSE_DOMAIN", " ")
    with pytest.raises(UsageError, match="GOOGLE_CLOUD_UNIVERSE_DOMAIN must be a lower-case"):
        DataConnectorClient()


@pytest.mark.parametrize(
    ("client_universe", "credentials_universe"),
    [(None, UNIVERSE), (UNIVERSE, None)],
)
async def test_credentials_of_another_universe_are_refused_before_any_request(
    servers: Servers,
    transport: str,
    client_universe: str | None,
    credentials_universe: str | None,
) -> None:
    credentials = user_credentials("alice-secret-token", credentials_universe)
    async with DataConnectorClient(
        universe_domain=client_universe, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(UsageError, match="belong to the universe domain") as per_call:
            await client.acquire_access_token(CONNECTOR, credentials=credentials)
    async with DataConnectorClient(
        credentials=credentials, universe_domain=client_universe, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(UsageError, match="belong to the universe domain") as default:
            await client.acquire_access_token(CONNECTOR)
    assert "alice-secret-token" not in str(per_call.value) + str(default.value)
    assert servers.service.started == 0


async def test_credentials_of_the_same_universe_are_accepted(
    servers: Servers, transport: str
) -> None:
    async with DataConnectorClient(
        credentials=user_credentials("alice", UNIVERSE),
        client_options={"universe_domain": UNIVERSE},
        **servers.client_kwargs(transport),
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    assert servers.service.seen[0].identity == "alice"


class _SlowUniverse(google.oauth2.credentials.Credentials):
    """Credentials whose universe domain takes a blocking lookup (like the metadata server's)."""

    def __init__(self, token: str, started: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(token=token)  # type: ignore[no-untyped-call]
        self.reads: list[int] = []
        self.release = threading.Event()
        self._started = started
        self._loop = loop

    @property
    def universe_domain(self) -> str:
        self.reads.append(threading.get_ident())
        self._loop.call_soon_threadsafe(self._started.set)
        # On the event loop's thread this would wait out its timeout: the loop could not run
        # the test's code that releases it.
        assert self.release.wait(timeout=10), "the universe was read on the event loop"
        return "googleapis.com"


async def test_the_universe_is_read_off_the_loop_once_per_credentials(
    servers: Servers, transport: str
) -> None:
    started = asyncio.Event()
    credentials = _SlowUniverse("alice", started, asyncio.get_running_loop())
    async with DataConnectorClient(**servers.client_kwargs(transport)) as client:
        calls = [
            asyncio.create_task(
                client.acquire_access_token(CONNECTOR, scope=f"s{i}", credentials=credentials)
            )
            for i in range(3)
        ]
        async with asyncio.timeout(10):
            await started.wait()  # the loop runs while the lookup blocks
        credentials.release.set()
        await asyncio.gather(*calls)
        await client.acquire_access_token(CONNECTOR, credentials=credentials)
    assert len(credentials.reads) == 1
    assert credentials.reads[0] != threading.get_ident()
    assert [seen.identity for seen in servers.service.seen] == ["alice"] * 4
