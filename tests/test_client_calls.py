"""DataConnectorClient against real servers on both wires: results, headers, misuse."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import google.oauth2.credentials
import grpc
import pytest
from aiohttp import web
from google import protobuf

import agentspace_grpc
from agentspace_grpc import (
    AccessToken,
    DataConnectorClient,
    Internal,
    RetryPolicy,
    UsageError,
)
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy
from tests._servers import CONNECTOR, Seen, Servers

TRANSPORTS = ["grpc", "rest"]
# The wire's token in x-goog-api-client and user-agent (Google's format).
WIRE_TOKENS = {"grpc": f"grpc/{grpc.__version__}", "rest": f"rest/aiohttp@{aiohttp.__version__}"}


@pytest.fixture
async def client(servers: Servers, transport: str) -> AsyncIterator[DataConnectorClient]:
    async with DataConnectorClient(
        credentials="alice-token", **servers.client_kwargs(transport)
    ) as made:
        yield made


async def test_acquire_returns_the_servers_token(
    client: DataConnectorClient, servers: Servers, transport: str
) -> None:
    token = await client.acquire_access_token(CONNECTOR)
    assert isinstance(token, AccessToken)
    assert token.access_token == "tp:alice-token:1"
    assert token.connector == CONNECTOR
    assert token.scopes == ("default",)
    (seen,) = servers.service.calls("AcquireAccessToken")
    assert seen.wire == transport
    assert seen.request.name == CONNECTOR


async def test_pitfall_10_scope_and_action_reach_the_server(
    client: DataConnectorClient, servers: Servers
) -> None:
    token = await client.acquire_access_token(CONNECTOR, scope="read:jira", action="search")
    (seen,) = servers.service.calls("AcquireAccessToken")
    assert seen.request.scope == "read:jira"
    assert seen.request.action == "search"
    assert token.scopes == ("read:jira",)


async def test_repeated_acquires_each_send_their_own_request(
    client: DataConnectorClient, servers: Servers
) -> None:
    """The client reuses one request per (name, scope, action) and REST its transcoding:
    interleaved calls must still each carry their own fields."""
    other = CONNECTOR.replace("/collections/", "/collections/other-")
    asked = [
        (CONNECTOR, None, None),
        (CONNECTOR, "s1", None),
        (other, None, "a1"),
        (CONNECTOR, "s1", "a1"),
        (CONNECTOR, "", ""),
    ] * 2
    for name, scope, action in asked:
        await client.acquire_access_token(name, scope=scope, action=action)
    sent = [
        (seen.request.name, seen.request.scope, seen.request.action)
        for seen in servers.service.calls("AcquireAccessToken")
    ]
    assert sent == [(name, scope or "", action or "") for name, scope, action in asked]


async def test_pitfall_10_calls_never_block_the_loop(servers: Servers, transport: str) -> None:
    async def slow(seen: Seen) -> p.AcquireAccessTokenResponse:
        await asyncio.sleep(0.4)
        return p.AcquireAccessTokenResponse(access_token="t")

    servers.service.on("AcquireAccessToken", slow)
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    ticking = asyncio.ensure_future(ticker())
    async with DataConnectorClient(
        credentials="alice", single_flight=False, **servers.client_kwargs(transport)
    ) as client:
        await asyncio.gather(
            *(client.acquire_access_token(CONNECTOR, action=str(i)) for i in range(20))
        )
    stop.set()
    await ticking
    assert len(lags) > 20
    assert max(lags) < 0.3  # a blocking call would hold the loop for 0.4 s


async def test_empty_optional_fields_send_an_empty_request(
    client: DataConnectorClient, servers: Servers
) -> None:
    await client.acquire_access_token(CONNECTOR)
    (seen,) = servers.service.calls("AcquireAccessToken")
    assert seen.request == p.AcquireAccessTokenRequest(name=CONNECTOR)


async def test_store_refresh_token_sends_the_redirect_and_returns_typed_extras(
    client: DataConnectorClient, servers: Servers
) -> None:
    extras = await client.store_refresh_token(
        CONNECTOR,
        "https://app.example/callback?code=abc&state=xyz",
        scopes=["read", "write"],
        instance_uri="https://acme.atlassian.net",
    )
    assert extras == {"instance_url": "https://x", "n_scopes": 2, "stored": True}
    assert type(extras["n_scopes"]) is int
    assert type(extras["stored"]) is bool
    (seen,) = servers.service.calls("AcquireAndStoreRefreshToken")
    assert seen.request.full_redirect_uri == "https://app.example/callback?code=abc&state=xyz"
    assert list(seen.request.scopes) == ["read", "write"]
    assert seen.request.instance_uri == "https://acme.atlassian.net"


async def test_check_refresh_token_is_deprecated_and_returns_scopes(
    client: DataConnectorClient, servers: Servers, transport: str
) -> None:
    with pytest.warns(DeprecationWarning, match="acquire_access_token"):
        scopes = await client.check_refresh_token(CONNECTOR)
    assert scopes == ("read",)
    (seen,) = servers.service.calls("CheckRefreshToken")
    assert seen.wire == transport


async def test_empty_access_token_is_an_error_not_a_token(
    client: DataConnectorClient, servers: Servers, transport: str
) -> None:
    async def tokenless(seen: Seen) -> p.AcquireAccessTokenResponse:
        return p.AcquireAccessTokenResponse(
            refresh_token_info=p.RefreshTokenInfo(name=CONNECTOR, scopes=["x"])
        )

    servers.service.on("AcquireAccessToken", tokenless)
    with pytest.raises(Internal, match="without an access token") as caught:
        await client.acquire_access_token(CONNECTOR)
    assert caught.value.transport == transport


# ---- headers ---------------------------------------------------------------------------


async def test_headers_seen_by_the_server_on_both_wires(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="alice-token",
        quota_project="billing-project",
        **servers.client_kwargs(transport),
    ) as client:
        await client.acquire_access_token(CONNECTOR, metadata=[("x-request-id", "r-1")])
    (seen,) = servers.service.seen
    headers = seen.headers
    assert headers["authorization"] == "Bearer alice-token"
    assert headers["x-goog-request-params"] == urlencode({"name": CONNECTOR}, safe="/")
    assert "/" in headers["x-goog-request-params"]  # left as is, like google-api-core
    api_client = headers["x-goog-api-client"].split()
    assert WIRE_TOKENS[transport] in api_client
    assert WIRE_TOKENS["rest" if transport == "grpc" else "grpc"] not in api_client
    assert f"pb/{protobuf.__version__}" in api_client
    assert any(part.startswith("gl-python/") for part in api_client)
    assert f"agentspace-grpc/{agentspace_grpc.__version__}" in api_client
    assert headers["x-goog-user-project"] == "billing-project"
    assert headers["x-request-id"] == "r-1"


async def test_same_headers_on_both_wires(servers: Servers) -> None:
    for transport in TRANSPORTS:
        async with DataConnectorClient(
            credentials="alice-token", quota_project="q", **servers.client_kwargs(transport)
        ) as client:
            await client.acquire_access_token(CONNECTOR, metadata=[("x-trace", "t")])
    names = ("authorization", "x-goog-request-params", "x-goog-user-project", "x-trace")
    grpc_seen, rest_seen = servers.service.seen
    assert {k: grpc_seen.headers[k] for k in names} == {k: rest_seen.headers[k] for k in names}
    # x-goog-api-client differs in the wire's own token only.
    grpc_client = grpc_seen.headers["x-goog-api-client"]
    rest_client = rest_seen.headers["x-goog-api-client"]
    assert grpc_client.replace(WIRE_TOKENS["grpc"], WIRE_TOKENS["rest"]) == rest_client


async def test_user_agent_names_the_library_with_the_api_client_tokens(
    servers: Servers, transport: str
) -> None:
    user_agents: list[list[str]] = []

    async def record(request: web.Request) -> None:
        user_agents.append(request.headers.getall("User-Agent"))

    servers.service.rest_hook = record
    async with DataConnectorClient(
        credentials="alice-token", **servers.client_kwargs(transport)
    ) as client:
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(CONNECTOR, scope="again")
    first, second = servers.service.seen
    user_agent = first.headers["user-agent"].split()
    assert user_agent[0] == f"agentspace-grpc/{agentspace_grpc.__version__}"
    # The same tokens in both headers (gRPC's own follow on that wire).
    api_client = first.headers["x-goog-api-client"].split()
    assert user_agent[1 : len(api_client)] == api_client[:-1]
    assert api_client[-1] == user_agent[0]
    assert second.headers["user-agent"] == first.headers["user-agent"]
    if transport == "rest":
        assert user_agents == [[first.headers["user-agent"]]] * 2  # not aiohttp's, not twice
    else:
        assert user_agent[len(api_client)].startswith("grpc-python")


async def test_user_agent_metadata_is_refused(client: DataConnectorClient) -> None:
    # gRPC cannot send it per call (grpc drops it): refused on both wires, before any I/O.
    with pytest.raises(UsageError, match="'user-agent' is set by the client"):
        await client.acquire_access_token(CONNECTOR, metadata=[("user-agent", "my-agent/2.0")])


async def test_no_quota_project_header_unless_set(
    client: DataConnectorClient, servers: Servers
) -> None:
    await client.acquire_access_token(CONNECTOR)
    assert "x-goog-user-project" not in servers.service.seen[0].headers


async def test_pitfall_10_quota_project_of_the_credentials_is_sent(
    servers: Servers, transport: str
) -> None:
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token="bob-token", quota_project_id="bob-quota"
    )
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    (seen,) = servers.service.seen
    assert seen.identity == "bob-token"
    assert seen.headers["x-goog-user-project"] == "bob-quota"


async def test_user_api_client_value_is_appended(
    client: DataConnectorClient, servers: Servers
) -> None:
    await client.acquire_access_token(CONNECTOR, metadata=[("x-goog-api-client", "my-agent/2.0")])
    value = servers.service.seen[0].headers["x-goog-api-client"]
    assert value.endswith(" my-agent/2.0")
    assert value.startswith("gl-python/")


# ---- one client, many users ---------------------------------------------------------------


async def test_per_call_credentials_override_the_default_on_one_connection(
    servers: Servers, transport: str
) -> None:
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    async with TcpProxy(port) as proxy:
        kwargs = {
            "transport": transport,
            "endpoint": proxy.address if transport == "grpc" else servers.grpc_target,
            "rest_endpoint": proxy.url if transport == "rest" else servers.rest_url,
        }
        async with DataConnectorClient(credentials="service-default", **kwargs) as client:
            users = ["alice", "bob", "carol"]
            tokens = [
                await client.acquire_access_token(CONNECTOR, credentials=f"{u}-token")
                for u in users
            ]
            default = await client.acquire_access_token(CONNECTOR)
        assert proxy.accepted == 1
    assert [s.identity for s in servers.service.seen] == [
        "alice-token",
        "bob-token",
        "carol-token",
        "service-default",
    ]
    for user, token in zip(users, tokens, strict=True):
        assert token.access_token.startswith(f"tp:{user}-token:")
    assert default.access_token.startswith("tp:service-default:")


# ---- the result object --------------------------------------------------------------------


async def test_access_token_repr_and_str_never_show_the_token(
    client: DataConnectorClient,
) -> None:
    token = await client.acquire_access_token(CONNECTOR, scope="s")
    secret = token.access_token
    for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
        assert secret not in text
        assert "redacted" in text
        assert CONNECTOR in text
    for attribute in dir(token):
        if attribute in ("access_token", "__class__"):
            continue
        value = getattr(token, attribute)
        assert secret not in repr(value), attribute
        assert secret not in str(value), attribute
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(token)


# ---- misuse: clear errors before any I/O --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "projects/p/locations/global/collections/c",
        "projects/p/locations/global/collections/c/dataConnector/extra",
        "projects//locations/global/collections/c/dataConnector",
        "dataConnector",
    ],
)
async def test_malformed_name_is_rejected_before_io_naming_the_patterns(
    client: DataConnectorClient, servers: Servers, name: str
) -> None:
    with pytest.raises(UsageError) as caught:
        await client.acquire_access_token(name)
    text = str(caught.value)
    assert "projects/*/locations/*/collections/*/dataConnector" in text
    assert ":acquireAccessToken" in text
    with pytest.raises(ValueError, match="projects/"):
        await client.store_refresh_token(name, "https://r/?code=1")
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(ValueError, match="projects/"),
    ):
        await client.check_refresh_token(name)
    assert servers.service.seen == []


@pytest.mark.parametrize(
    ("name", "acquire", "store"),
    [
        (
            "projects/p\ud800/locations/global/collections/c/dataConnector",
            "acquire_access_token",
            "store_refresh_token",
        ),
        (
            "projects/p/locations/global/authorizations/a\udfff",
            "acquire_user_authorization",
            "store_user_authorization",
        ),
    ],
)
async def test_a_name_with_a_lone_surrogate_is_a_usage_error(
    client: DataConnectorClient, servers: Servers, name: str, acquire: str, store: str
) -> None:
    with pytest.raises(UsageError, match="not valid Unicode"):
        await getattr(client, acquire)(name)
    with pytest.raises(UsageError, match="not valid Unicode"):
        await getattr(client, store)(name, "https://r/?code=1")
    assert servers.service.seen == []


@pytest.mark.parametrize("name", [None, 42, ["projects/p"], b"projects/p"])
async def test_a_name_that_is_not_a_string_is_a_usage_error(
    client: DataConnectorClient, servers: Servers, name: object
) -> None:
    with pytest.raises(UsageError, match="name must be"):
        await client.acquire_access_token(name)  # type: ignore[arg-type]
    assert servers.service.seen == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"scope": 3}, "scope"),
        ({"action": ["a"]}, "action"),
        ({"scope": ["a"], "action": "b"}, "scope"),
        ({"metadata": [("Upper-Case", "v")]}, "lower-case"),
        ({"metadata": [("authorization", "Bearer x")]}, "credentials="),
        ({"metadata": [("x-data-bin", "v")]}, "-bin"),
        ({"metadata": [("x-ok", "line\nbreak")]}, "printable"),
        ({"metadata": "x-a: b"}, "pairs"),
        ({"credentials": 42}, "credentials"),
        ({"credentials": ""}, "empty"),
        ({"credentials": "Bearer abc"}, "Bearer"),
        ({"credentials": "two words"}, "spaces"),
    ],
)
async def test_bad_arguments_are_rejected_before_io(
    client: DataConnectorClient, servers: Servers, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        await client.acquire_access_token(CONNECTOR, **kwargs)  # type: ignore[arg-type]
    assert servers.service.seen == []


async def test_bad_store_arguments_are_rejected_before_io(
    client: DataConnectorClient, servers: Servers
) -> None:
    with pytest.raises(UsageError, match="full_redirect_uri"):
        await client.store_refresh_token(CONNECTOR, "")
    with pytest.raises(UsageError, match="not one string"):
        await client.store_refresh_token(CONNECTOR, "https://r/?code=1", scopes="read write")
    assert servers.service.seen == []


def test_token_misuse_messages_never_echo_the_token() -> None:
    with pytest.raises(UsageError) as caught:
        DataConnectorClient(credentials="SECRET-CANARY with space")
    assert "SECRET-CANARY" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transport": "http"}, "transport"),
        ({"endpoint": "https://example.com"}, "not a URL"),
        ({"endpoint": "example.com:http"}, "port"),
        ({"rest_endpoint": "ftp://example.com"}, "http"),
        ({"rest_endpoint": "http://example.com"}, "insecure=True"),
        ({"rest_endpoint": "https://user:pw@example.com"}, "credentials"),
        ({"retry": 3}, "RetryPolicy"),
        ({"quota_project": ""}, "quota_project"),
        ({"ssl_context": "ca.pem"}, "SSLContext"),
        ({"insecure": "yes"}, "insecure"),
    ],
)
def test_constructor_misuse_is_a_clear_value_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        DataConnectorClient(**kwargs)  # type: ignore[arg-type]


def test_plaintext_to_a_remote_host_needs_insecure() -> None:
    DataConnectorClient(rest_endpoint="http://emulator.internal:8080", insecure=True)
    DataConnectorClient(rest_endpoint="http://localhost:8080")
    DataConnectorClient(rest_endpoint="http://[::1]:8080")
    with pytest.raises(UsageError, match="non-loopback"):
        DataConnectorClient(rest_endpoint="http://10.0.0.8:8080")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "at least 1"),
        ({"max_attempts": 2.5}, "integer"),
        ({"initial_backoff": -1}, ">= 0"),
        ({"max_backoff": float("inf")}, "finite"),
        ({"multiplier": 0.5}, "at least 1"),
    ],
)
def test_retry_policy_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_backoff_is_full_jitter_within_the_bound() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2)
    waits = [policy.backoff(3) for _ in range(2000)]
    assert 0 <= min(waits) < 0.03
    assert max(waits) <= 0.3
    assert max(waits) > 0.27


# ---- exports ---------------------------------------------------------------------------


def test_public_names_are_exported_with_a_sorted_all() -> None:
    exported = agentspace_grpc.__all__
    assert list(exported) == sorted(exported)
    for name in exported:
        assert hasattr(agentspace_grpc, name), name
    errors = agentspace_grpc._errors
    for name in dir(errors):
        value = getattr(errors, name)
        if (
            isinstance(value, type)
            and issubclass(value, Exception)
            and value.__module__ == errors.__name__
        ):
            assert name in exported, name
    for name in ("DataConnectorClient", "AccessToken", "RetryPolicy", "AuthorizationRequired"):
        assert name in exported


def test_usage_error_is_a_value_error() -> None:
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "user:CANARY-pw@example.com:443"},
        {"endpoint": "u:CANARY-pw@host/x"},
        {"rest_endpoint": "ftp://u:CANARY-pw@example.com"},
        {"rest_endpoint": "http://u:CANARY-pw@127.0.0.1:1"},
        {"rest_endpoint": "https://example.com/?key=CANARY-pw"},
    ],
)
def test_endpoints_with_credentials_are_refused_without_echoing_them(
    kwargs: dict[str, str],
) -> None:
    with pytest.raises(UsageError) as caught:
        DataConnectorClient(credentials="t", **kwargs)  # type: ignore[arg-type]
    assert "CANARY" not in str(caught.value)
    assert "credentials" in str(caught.value)
