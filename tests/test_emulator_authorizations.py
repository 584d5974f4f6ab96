"""The emulator's AuthorizationService and consent URIs, over both wires.

The REST tests speak plain HTTP exactly as the public reference describes the methods (an empty
body for acquireUserAuthorization, ``{"fullRedirectUri": ...}`` for storeUserAuthorization);
the gRPC test builds its client from the descriptors the server serves by reflection, not from
this package's stubs. Consent URIs are opened the way a browser opens them: plain GETs that
follow redirects, with no credentials.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agentspace_grpc import InvalidArgument, NotFound, Unauthenticated, _proto
from agentspace_grpc.emulator import Emulator, EmulatorError
from agentspace_grpc.emulator._store import DB_FILE_NAME
from agentspace_grpc.pytest_plugin import RunningEmulator
from tests._clock import ManualClock
from tests._emulator_helpers import (
    AUTHORIZATION,
    CONNECTOR,
    REDIRECT,
    CanaryProvider,
    bearer,
    failure_of,
    follow_like_a_browser,
    mint,
    provider_stats,
    rest,
    start_emulator,
    store_over_rest,
    userinfo,
)

ACQUIRE = f"/v1alpha/{AUTHORIZATION}:acquireUserAuthorization"
STORE = f"/v1alpha/{AUTHORIZATION}:storeUserAuthorization"
SERVICE = "google.cloud.discoveryengine.v1alpha.AuthorizationService"
ALICE = "alice@example.com"
BOB = "bob@example.com"
FIXTURE = Path(__file__).parent / "data" / "store-schema-1"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "data") as emulator:
        yield emulator


async def acquire_over_rest(http: str, token: str, name: str = AUTHORIZATION) -> Any:
    """acquireUserAuthorization with an empty request body, as the reference has it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{http}/v1alpha/{name}:acquireUserAuthorization",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def store_authorization(http: str, token: str, redirect: str) -> None:
    status, body = await rest(http, "POST", STORE, token, {"fullRedirectUri": redirect})
    assert (status, body) == (200, {})


async def authorize(http: str, email: str) -> str:
    """``email`` consents through the URI the service hands out and stores it; the bearer."""
    token = await mint(http, email)
    answer = await acquire_over_rest(http, token)
    redirect = (await follow_like_a_browser(answer["authorizationUri"]))[-1]
    await store_authorization(http, token, redirect)
    return token


# ---- peers: REST as the reference describes it, gRPC from the served descriptors ------------


async def test_rest_consent_uri_to_token_as_the_reference_describes(emu: Emulator) -> None:
    http = emu.http_url
    token = await mint(http, ALICE)
    first = await acquire_over_rest(http, token)
    assert set(first) == {"authorizationUri"}  # a success, with no token
    uri = first["authorizationUri"]
    assert uri.startswith(f"{http}/emulator/v1/consent?state=")
    assert token not in uri
    visited = await follow_like_a_browser(uri)
    authorize = parse_qs(urlsplit(visited[1]).query)
    assert visited[1].startswith(f"{http}/provider/authorize?")
    assert authorize["code_challenge_method"] == ["S256"]
    assert authorize["login_hint"] == [ALICE]
    redirect = visited[-1]
    assert redirect.startswith(f"{REDIRECT}?code=")
    await store_authorization(http, token, redirect)
    answer = await acquire_over_rest(http, token)
    assert set(answer) == {"accessToken", "refreshTokenInfo"}
    assert answer["refreshTokenInfo"] == {"scopes": ["read", "write"]}
    assert (await userinfo(http, answer["accessToken"]))[1]["sub"] == ALICE
    before = await provider_stats(http)
    assert await acquire_over_rest(http, token) == answer  # the service's cache
    after = await provider_stats(http)
    assert after["refresh_requests"] == before["refresh_requests"]
    status, body = await rest(http, "POST", ACQUIRE, token, {})  # `{}` is an empty body too
    assert (status, body) == (200, answer)


def served_client(target: str) -> tuple[set[str], dict[str, tuple[Any, Any]]]:
    """The services the server lists and the AuthorizationService's message classes, built
    from the descriptors it serves by reflection (sync: grpc-reflection's database is)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        service = descriptor_pool.DescriptorPool(database).FindServiceByName(SERVICE)
        classes = {
            m.name: (
                message_factory.GetMessageClass(m.input_type),
                message_factory.GetMessageClass(m.output_type),
            )
            for m in service.methods
        }
    return services, classes


async def test_grpc_through_reflection_with_a_client_from_the_served_descriptors(
    emu: Emulator,
) -> None:
    services, classes = await asyncio.to_thread(served_client, emu.grpc_target)
    assert SERVICE in services
    assert set(classes) == {"AcquireUserAuthorization", "StoreUserAuthorization"}
    assert classes["AcquireUserAuthorization"][0] is not _proto.AcquireUserAuthorizationRequest
    metadata = bearer(emu.user_token(ALICE))
    async with grpc.aio.insecure_channel(emu.grpc_target) as channel:

        def rpc(method: str) -> Any:
            request, response = classes[method]
            call = channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            return lambda **fields: call(request(**fields), metadata=metadata, timeout=30)

        acquire, store = rpc("AcquireUserAuthorization"), rpc("StoreUserAuthorization")
        first = await acquire(name=AUTHORIZATION)
        assert first.access_token == ""
        redirect = (await follow_like_a_browser(first.authorization_uri))[-1]
        stored = await store(name=AUTHORIZATION, full_redirect_uri=redirect)
        assert stored.ByteSize() == 0
        answer = await acquire(name=AUTHORIZATION)
        assert answer.authorization_uri == ""
        assert list(answer.refresh_token_info.scopes) == ["read", "write"]
        assert (await userinfo(emu.http_url, answer.access_token))[1]["sub"] == ALICE
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_configured_authorization_with_its_own_provider(tmp_path: Path) -> None:
    name = "projects/acme/locations/global/authorizations/canary"
    async with CanaryProvider().serve() as canary:
        config = {
            "authorizations": [
                canary.connector_config(name, display_name="Canary", pkce=False),
            ]
        }
        async with Emulator(data_dir=tmp_path, config=config) as emu:
            token = emu.user_token(ALICE)
            answer = await acquire_over_rest(emu.http_url, token, name)
            redirect = (await follow_like_a_browser(answer["authorizationUri"]))[-1]
            status, body = await rest(
                emu.http_url,
                "POST",
                f"/v1alpha/{name}:storeUserAuthorization",
                token,
                {"fullRedirectUri": redirect},
            )
            assert (status, body) == (200, {})
            answer = await acquire_over_rest(emu.http_url, token, name)
    assert answer == {
        "accessToken": canary.issued_access[0],
        "refreshTokenInfo": {"scopes": ["read"]},
    }


# ---- when the user must (re)authorize ----------------------------------------------------------


async def test_missing_scopes_ask_for_consent_again(emu: Emulator) -> None:
    """A grant without one of the authorization's scopes is not enough: the answer is a URI,
    and the consent it starts asks for every scope."""
    token = emu.user_token(ALICE)
    redirect = await emu.consent(ALICE, emu.authorization, scopes=["read"])
    await store_authorization(emu.http_url, token, redirect)
    answer = await acquire_over_rest(emu.http_url, token)
    assert set(answer) == {"authorizationUri"}
    visited = await follow_like_a_browser(answer["authorizationUri"])
    assert parse_qs(urlsplit(visited[1]).query)["scope"] == ["read write"]
    await store_authorization(emu.http_url, token, visited[-1])
    answer = await acquire_over_rest(emu.http_url, token)
    assert answer["refreshTokenInfo"]["scopes"] == ["read", "write"]


async def test_a_revoked_grant_asks_for_consent_again(tmp_path: Path) -> None:
    clock = ManualClock()
    config = {"provider": {"access_token_lifetime": 60}}
    async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
        token = await authorize(emu.http_url, ALICE)
    clock.advance(60)  # the cached access token expires: the next acquire refreshes
    config = {"provider": {"faults": {"invalid_grant_rate": 1.0}}}
    async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
        answer = await acquire_over_rest(emu.http_url, token)
        assert set(answer) == {"authorizationUri"}
        assert (await emu.stats())["grants_revoked"] == 1


async def test_store_only_from_the_user_the_consent_names(emu: Emulator) -> None:
    alice, bob = emu.user_token(ALICE), emu.user_token(BOB)
    answer = await acquire_over_rest(emu.http_url, alice)
    redirect = (await follow_like_a_browser(answer["authorizationUri"]))[-1]
    status, body = await rest(emu.http_url, "POST", STORE, bob, {"fullRedirectUri": redirect})
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert f"started by {ALICE}, but the caller is {BOB}" in body["error"]["message"]
    assert set(await acquire_over_rest(emu.http_url, bob)) == {"authorizationUri"}
    # A consent for the data connector is not one for the authorization, nor the reverse.
    for_connector = await emu.consent(ALICE)
    status, body = await rest(
        emu.http_url, "POST", STORE, alice, {"fullRedirectUri": for_connector}
    )
    assert status == 400
    assert f"started for {CONNECTOR}, not {AUTHORIZATION}" in body["error"]["message"]
    status, body = await rest(
        emu.http_url,
        "POST",
        f"/v1alpha/{CONNECTOR}:acquireAndStoreRefreshToken",
        alice,
        {"fullRedirectUri": redirect},
    )
    assert status == 400
    assert f"started for {AUTHORIZATION}, not {CONNECTOR}" in body["error"]["message"]
    await store_authorization(emu.http_url, alice, redirect)  # still good for Alice


async def test_a_tampered_consent_uri_starts_nothing(emu: Emulator) -> None:
    uri = (await acquire_over_rest(emu.http_url, emu.user_token(ALICE)))["authorizationUri"]
    body, mac = uri.rsplit(".", 1)
    tampered = f"{body}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(tampered, allow_redirects=False) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["message"] == "the state was not issued by this emulator"
    assert (await provider_stats(emu.http_url)).get("authorizations", 0) == 0


# ---- errors --------------------------------------------------------------------------------------


async def test_unknown_authorization_and_wrong_names_over_both_wires(emu: Emulator) -> None:
    token = emu.user_token(ALICE)
    unknown = "projects/demo/locations/global/authorizations/nope"
    status, body = await rest(
        emu.http_url, "POST", f"/v1alpha/{unknown}:acquireUserAuthorization", token
    )
    assert (status, body["error"]["status"]) == (404, "NOT_FOUND")
    assert body["error"]["details"][0]["reason"] == "AUTHORIZATION_NOT_FOUND"
    status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {"bogus": 1})
    assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "unknown field 'bogus'" in body["error"]["message"]
    async with grpc.aio.insecure_channel(emu.grpc_target) as channel:
        stub = _proto.AuthorizationServiceStub(channel)
        for name, code, text in (
            (unknown, grpc.StatusCode.NOT_FOUND, f"authorization {unknown} does not exist"),
            (
                CONNECTOR,
                grpc.StatusCode.INVALID_ARGUMENT,
                "is not an authorization: expected projects/*/locations/*/authorizations/* (a "
                "data connector is served by AcquireAccessToken and AcquireAndStoreRefreshToken)",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.AcquireUserAuthorization(
                    _proto.AcquireUserAuthorizationRequest(name=name), metadata=bearer(token)
                )
            failure = failure_of(caught.value)
            assert failure.code == code
            assert text in failure.message
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StoreUserAuthorization(
                _proto.StoreUserAuthorizationRequest(name=AUTHORIZATION, full_redirect_uri="x")
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- one store, one refresh protocol -----------------------------------------------------------


async def test_two_processes_and_both_wires_refresh_an_authorization_once(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    consenting = await start_emulator(data, "--access-token-lifetime", "1", log_dir=tmp_path)
    try:
        token = await authorize(consenting.http, ALICE)
    finally:
        assert await consenting.stop() == 0
    await asyncio.sleep(1.1)  # the access token from the consent expires
    first, second = await asyncio.gather(
        start_emulator(data, log_dir=tmp_path), start_emulator(data, log_dir=tmp_path)
    )
    try:
        before = await provider_stats(first.http)
        async with grpc.aio.insecure_channel(first.grpc) as channel:
            stub = _proto.AuthorizationServiceStub(channel)
            request = _proto.AcquireUserAuthorizationRequest(name=AUTHORIZATION)

            async def over_grpc() -> str:
                answer = await stub.AcquireUserAuthorization(
                    request, metadata=bearer(token), timeout=30
                )
                return str(answer.access_token)

            async def over_rest() -> str:
                return str((await acquire_over_rest(second.http, token))["accessToken"])

            tokens = await asyncio.gather(
                *((over_grpc if i % 2 else over_rest)() for i in range(200))
            )
        after = await provider_stats(second.http)
        assert len(set(tokens)) == 1
        assert (await userinfo(first.http, tokens[0]))[1]["sub"] == ALICE
        assert after["refresh_requests"] - before["refresh_requests"] == 1
        assert after["invalid_grant"] == 0
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0


async def test_a_data_directory_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    """tests/data/store-schema-1 was written by the emulator before authorizations: Alice's
    grant on the default connector survives the migration (its refresh token still decrypts
    and refreshes), and authorizations work on the same directory."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    (data / "key").chmod(0o600)
    with closing(sqlite3.connect(data / DB_FILE_NAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    async with Emulator(data_dir=data) as emu:
        alice = emu.user_token(ALICE)
        status, answer = await rest(
            emu.http_url, "POST", f"/v1alpha/{CONNECTOR}:acquireAccessToken", alice
        )
        assert status == 200, answer
        assert (await userinfo(emu.http_url, answer["accessToken"]))[1]["sub"] == ALICE
        assert (await provider_stats(emu.http_url))["refreshes"] == 1
        await authorize(emu.http_url, BOB)
        assert (await acquire_over_rest(emu.http_url, alice))["authorizationUri"]
    with closing(sqlite3.connect(data / DB_FILE_NAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        rows = db.execute("SELECT resource, user FROM grants ORDER BY user").fetchall()
    assert rows == [(CONNECTOR, ALICE), (AUTHORIZATION, BOB)]


# ---- consent URIs for data connectors ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["google-auth", "token"])
async def test_a_connector_consent_uri_for_the_user_the_credentials_name(
    emu: Emulator, kind: str
) -> None:
    credentials: Any = emu.user_credentials(ALICE) if kind == "google-auth" else None
    credentials = credentials or emu.user_token(ALICE)
    consent_uri = emu.consent_uri  # what `consent_uri=` arguments take
    uri = await consent_uri(CONNECTOR, credentials)
    assert uri.startswith(f"{emu.http_url}/emulator/v1/consent?state=")
    redirect = (await follow_like_a_browser(uri))[-1]
    status, body = await rest(
        emu.http_url,
        "POST",
        f"/v1alpha/{CONNECTOR}:acquireAndStoreRefreshToken",
        emu.user_token(BOB),
        {"fullRedirectUri": redirect},
    )
    assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")  # only Alice may
    token = emu.user_token(ALICE)
    await store_over_rest(emu.http_url, token, redirect)
    status, answer = await rest(
        emu.http_url, "POST", f"/v1alpha/{CONNECTOR}:acquireAccessToken", token
    )
    assert status == 200
    assert (await userinfo(emu.http_url, answer["accessToken"]))[1]["sub"] == ALICE


async def test_the_consent_uri_endpoint_over_http(emu: Emulator) -> None:
    token = emu.user_token(ALICE)
    path = "/emulator/v1/consent-uri"
    status, body = await rest(emu.http_url, "POST", path, token, {"resource": AUTHORIZATION})
    assert status == 200
    assert body["consentUri"].startswith(f"{emu.http_url}/emulator/v1/consent?state=")
    redirect = (await follow_like_a_browser(body["consentUri"]))[-1]
    await store_authorization(emu.http_url, token, redirect)
    for sent, expected in (
        (None, 401),
        ({"resource": "projects/p/locations/l/authorizations/nope"}, 404),
        ({"resource": "nonsense"}, 400),
        ({"resource": CONNECTOR, "scopes": ["x"]}, 400),
        ([CONNECTOR], 400),
    ):
        status, body = await rest(emu.http_url, "POST", path, token if sent else None, sent)
        assert status == expected, body
    with pytest.raises(Unauthenticated):
        await emu.consent_uri(CONNECTOR, None)
    with pytest.raises(NotFound):
        await emu.consent_uri("projects/p/locations/l/authorizations/nope", token)
    with pytest.raises(InvalidArgument):
        await emu.consent_uri("nonsense", token)


# ---- the pytest plugin -----------------------------------------------------------------------


async def test_the_plugin_fixture_serves_authorizations(
    agentspace_emulator: Emulator, agentspace_user: str
) -> None:
    emu = agentspace_emulator
    token = emu.user_token(agentspace_user)
    redirect = await emu.consent(agentspace_user, emu.authorization)
    await store_authorization(emu.http_url, token, redirect)
    answer = await acquire_over_rest(emu.http_url, token, emu.authorization)
    assert (await userinfo(emu.http_url, answer["accessToken"]))[1]["sub"] == agentspace_user


async def test_a_running_emulator_offers_authorizations_and_consent_uris(
    agentspace_emulator: Emulator,
) -> None:
    """The plugin's stand-in for an emulator that the variables point at (its helpers block,
    so the emulator runs on the fixture's own thread)."""
    emu = agentspace_emulator
    running = RunningEmulator(emu.grpc_target, emu.http_url)
    assert running.authorization == AUTHORIZATION
    token = running.user_token(ALICE)
    redirect = await running.consent(ALICE, running.authorization)
    await store_authorization(emu.http_url, token, redirect)
    uri = await running.consent_uri(CONNECTOR, running.user_credentials(BOB))
    redirect = (await follow_like_a_browser(uri))[-1]
    await store_over_rest(emu.http_url, running.user_token(BOB), redirect)


async def test_a_refused_consent_names_the_emulators_reason(tmp_path: Path) -> None:
    unknown = "projects/p/locations/global/collections/nope/dataConnector"
    async with Emulator(data_dir=tmp_path) as emu:
        with pytest.raises(EmulatorError, match="does not exist in this emulator"):
            await emu.consent(ALICE, unknown)
