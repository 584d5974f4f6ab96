"""The emulator over both wires: answers, identity, Google-shaped errors, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentspace_grpc import _proto
from agentspace_grpc.emulator import Emulator
from tests._clock import ManualClock
from tests._emulator_helpers import (
    CONNECTOR,
    bearer,
    channel_to,
    grpc_acquire,
    grpc_fail,
    provider_stats,
    rest,
    userinfo,
)

ACQUIRE = f"/v1alpha/{CONNECTOR}:acquireAccessToken"
STORE = f"/v1alpha/{CONNECTOR}:acquireAndStoreRefreshToken"
CHECK = f"/v1alpha/{CONNECTOR}:checkRefreshToken"
ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "data") as emulator:
        yield emulator


async def _store_grpc(emu: Emulator, email: str, scopes: list[str] | None = None) -> Any:
    redirect = await emu.consent(email, scopes=scopes)
    async with channel_to(emu.grpc_target) as stub:
        return await stub.AcquireAndStoreRefreshToken(
            _proto.AcquireAndStoreRefreshTokenRequest(name=CONNECTOR, full_redirect_uri=redirect),
            metadata=bearer(emu.user_token(email)),
        )


async def test_grpc_store_acquire_check_end_to_end(emu: Emulator) -> None:
    stored = await _store_grpc(emu, ALICE)
    extra = {item.key: item.WhichOneof("value") for item in stored.additional_oauth_responses}
    assert extra == {
        "account_id": "string_value",
        "consented": "bool_value",
        "issued_at": "int_value",
    }
    async with channel_to(emu.grpc_target) as stub:
        answer = await grpc_acquire(stub, emu.user_token(ALICE))
        assert answer.refresh_token_info.name == CONNECTOR
        assert list(answer.refresh_token_info.scopes) == ["read", "write"]
        checked = await stub.CheckRefreshToken(
            _proto.CheckRefreshTokenRequest(name=CONNECTOR), metadata=bearer(emu.user_token(ALICE))
        )
        assert list(checked.refresh_token_info.scopes) == ["read", "write"]
    status, info = await userinfo(emu.http_url, answer.access_token)
    assert status == 200
    assert info["sub"] == ALICE


async def test_rest_store_acquire_check_end_to_end(emu: Emulator) -> None:
    token = emu.user_token(BOB)
    redirect = await emu.consent(BOB, scopes=["read"])
    status, body = await rest(emu.http_url, "POST", STORE, token, {"fullRedirectUri": redirect})
    assert status == 200, body
    assert {item["key"] for item in body["additionalOauthResponses"]} == {
        "account_id",
        "consented",
        "issued_at",
    }
    status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {})
    assert status == 200, body
    assert body["refreshTokenInfo"] == {"name": CONNECTOR, "scopes": ["read"]}
    assert (await userinfo(emu.http_url, body["accessToken"]))[1]["sub"] == BOB
    status, body = await rest(emu.http_url, "GET", CHECK, token)
    assert status == 200
    assert body["refreshTokenInfo"]["scopes"] == ["read"]


async def test_rest_accepts_snake_case_camel_case_and_an_empty_body(emu: Emulator) -> None:
    token = emu.user_token(ALICE)
    redirect = await emu.consent(ALICE)
    status, body = await rest(emu.http_url, "POST", STORE, token, {"full_redirect_uri": redirect})
    assert status == 200, body
    for payload in ({"scope": "read"}, {"action": "read_items"}, None):
        status, body = await rest(emu.http_url, "POST", ACQUIRE, token, payload)
        assert status == 200, (payload, body)
        assert body["accessToken"]
    status, body = await rest(emu.http_url, "POST", ACQUIRE, token, raw_body=b"")
    assert status == 200, body


@pytest.mark.parametrize("payload", [{"bogus": 1}, {"scope": 5}, {"refreshTokenInfo": {}}], ids=str)
async def test_rest_unknown_or_mistyped_fields_are_invalid_argument(
    emu: Emulator, payload: dict[str, Any]
) -> None:
    status, body = await rest(emu.http_url, "POST", ACQUIRE, emu.user_token(ALICE), payload)
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["code"] == 400
    assert body["error"]["message"]


async def test_rest_unknown_path_and_wrong_method(emu: Emulator) -> None:
    status, body = await rest(emu.http_url, "POST", "/v1alpha/nothing:here", emu.user_token(ALICE))
    assert status == 404
    assert body["error"]["status"] == "NOT_FOUND"
    status, body = await rest(emu.http_url, "GET", ACQUIRE, emu.user_token(ALICE))
    assert status == 405


@pytest.mark.parametrize("wire", ["grpc", "rest"])
async def test_unknown_user_gets_not_found_with_reason(emu: Emulator, wire: str) -> None:
    token = emu.user_token("nobody@example.com")
    if wire == "grpc":
        async with channel_to(emu.grpc_target) as stub:
            failure = await grpc_fail(grpc_acquire(stub, token))
        assert failure.code == grpc.StatusCode.NOT_FOUND
        info = failure.error_info()
        assert info is not None
        reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        message = failure.message
    else:
        status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {})
        assert status == 404
        assert body["error"]["status"] == "NOT_FOUND"
        (detail,) = body["error"]["details"]
        assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        reason, domain, metadata = detail["reason"], detail["domain"], detail["metadata"]
        message = body["error"]["message"]
    assert reason == "REFRESH_TOKEN_NOT_FOUND"
    assert domain == "discoveryengine.googleapis.com"
    assert metadata == {"connector": CONNECTOR, "user": "nobody@example.com"}
    assert "nobody@example.com" in message


@pytest.mark.parametrize("wire", ["grpc", "rest"])
async def test_missing_unknown_and_foreign_identity_is_unauthenticated(
    emu: Emulator, wire: str, tmp_path: Path
) -> None:
    async with Emulator(data_dir=tmp_path / "other") as other:
        foreign = other.user_token(ALICE)  # signed with another data directory's key
    for token in (None, "garbage", "aea1.Zm9v.YmFy", foreign):
        if wire == "grpc":
            async with channel_to(emu.grpc_target) as stub:
                failure = await grpc_fail(grpc_acquire(stub, token))
            assert failure.code == grpc.StatusCode.UNAUTHENTICATED, token
        else:
            status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {})
            assert status == 401, token
            assert body["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("wire", ["grpc", "rest"])
async def test_expired_identity_is_unauthenticated(tmp_path: Path, wire: str) -> None:
    clock = ManualClock()
    config = {"identity": {"token_lifetime": 60}}
    async with Emulator(data_dir=tmp_path, config=config, clock=clock) as emu:
        token = emu.user_token(ALICE)
        clock.advance(60)
        if wire == "grpc":
            async with channel_to(emu.grpc_target) as stub:
                failure = await grpc_fail(grpc_acquire(stub, token))
            assert failure.code == grpc.StatusCode.UNAUTHENTICATED
            assert "expired" in failure.message
        else:
            status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {})
            assert status == 401
            assert "expired" in body["error"]["message"]


async def test_google_auth_user_credentials_refresh_against_the_emulator(emu: Emulator) -> None:
    credentials = emu.user_credentials(ALICE)
    assert not credentials.valid
    await asyncio.to_thread(credentials.refresh, google.auth.transport.requests.Request())
    assert credentials.valid
    assert credentials.expiry is not None
    await _store_grpc(emu, ALICE)
    async with channel_to(emu.grpc_target) as stub:
        answer = await grpc_acquire(stub, credentials.token)
    assert (await userinfo(emu.http_url, answer.access_token))[1]["sub"] == ALICE


async def test_identity_token_endpoint_rejects_foreign_refresh_tokens(emu: Emulator) -> None:
    credentials = emu.user_credentials(ALICE)
    credentials._refresh_token = credentials.refresh_token[:-4] + "AAAA"  # tampered
    with pytest.raises(google.auth.exceptions.RefreshError):
        await asyncio.to_thread(credentials.refresh, google.auth.transport.requests.Request())


async def test_unknown_and_malformed_connectors(emu: Emulator) -> None:
    token = emu.user_token(ALICE)
    async with channel_to(emu.grpc_target) as stub:
        other = "projects/x/locations/global/collections/c/dataConnector"
        failure = await grpc_fail(grpc_acquire(stub, token, name=other))
        assert failure.code == grpc.StatusCode.NOT_FOUND
        info = failure.error_info()
        assert info is not None
        assert info.reason == "CONNECTOR_NOT_FOUND"
        for bad in ("", "projects/x"):
            failure = await grpc_fail(grpc_acquire(stub, token, name=bad))
            assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, bad


@pytest.mark.parametrize("wire", ["grpc", "rest"])
async def test_missing_scopes_name_the_scopes(emu: Emulator, wire: str) -> None:
    await _store_grpc(emu, ALICE, scopes=["read"])
    token = emu.user_token(ALICE)
    for kwargs, missing in (
        ({"action": "write_items"}, "write"),
        ({"scope": "read admin"}, "admin"),
    ):
        if wire == "grpc":
            async with channel_to(emu.grpc_target) as stub:
                failure = await grpc_fail(grpc_acquire(stub, token, **kwargs))
            assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
            info = failure.error_info()
            assert info is not None
            reason, metadata = info.reason, dict(info.metadata)
        else:
            status, body = await rest(emu.http_url, "POST", ACQUIRE, token, kwargs)
            assert status == 400
            assert body["error"]["status"] == "FAILED_PRECONDITION"
            reason = body["error"]["details"][0]["reason"]
            metadata = body["error"]["details"][0]["metadata"]
        assert reason == "SCOPES_MISSING"
        assert metadata["missing_scopes"] == missing
    async with channel_to(emu.grpc_target) as stub:
        failure = await grpc_fail(grpc_acquire(stub, token, action="no_such_action"))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_action" in failure.message


async def test_store_checks_code_and_state(emu: Emulator) -> None:
    redirect = await emu.consent(ALICE)
    async with channel_to(emu.grpc_target) as stub:

        async def store(uri: str, email: str = ALICE) -> Any:
            return await stub.AcquireAndStoreRefreshToken(
                _proto.AcquireAndStoreRefreshTokenRequest(name=CONNECTOR, full_redirect_uri=uri),
                metadata=bearer(emu.user_token(email)),
            )

        cases = {
            "": "full_redirect_uri is required",
            redirect.split("?")[0] + "?state=x": "no code",
            redirect.replace("state=", "state=x"): "not issued by this emulator",
            redirect.split("&state=")[0]: "no state",
            redirect.replace("https://", "http://"): "redirect URI",
            redirect + "&error=access_denied": "did not consent",
        }
        for uri, words in cases.items():
            failure = await grpc_fail(store(uri))
            assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, uri
            assert words in failure.message, (uri, failure.message)
        # The state binds the consent to the user who started it.
        failure = await grpc_fail(store(redirect, BOB))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert ALICE in failure.message
        assert BOB in failure.message
        await store(redirect)
        # A code is single use: the provider refuses it the second time.
        failure = await grpc_fail(store(redirect))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "run the consent again" in failure.message
    stats = await provider_stats(emu.http_url)
    assert stats["code_exchanges"] == 1
    assert stats["invalid_grant"] == 1


async def test_health_and_reflection_answer(emu: Emulator) -> None:
    async with grpc.aio.insecure_channel(emu.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", _proto.SERVICE.full_name):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=_proto.SERVICE.full_name),
        ]
        answers = [answer async for answer in reflection.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in answers[0].list_services_response.service}
    assert _proto.SERVICE.full_name in names
    assert answers[1].file_descriptor_response.file_descriptor_proto
    status, body = await rest(emu.http_url, "GET", "/healthz", None)
    assert status == 200
    assert body == {"status": "SERVING"}


@pytest.mark.parametrize("wire", ["grpc", "rest"])
async def test_an_internal_failure_is_internal_and_carries_no_secret(
    tmp_path: Path, wire: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupted row (a ciphertext moved to another user's row) is an emulator bug to the
    caller: INTERNAL, never a client error; the AES-GCM binding refuses to decrypt it."""
    async with Emulator(data_dir=tmp_path) as emu:
        await _store_grpc(emu, ALICE)
        await _store_grpc(emu, BOB)
    # closing(): a connection's own "with" commits but does not close it.
    with contextlib.closing(sqlite3.connect(tmp_path / "emulator.sqlite3")) as db, db:
        (alice_ct,) = db.execute(
            "SELECT refresh_ct FROM grants WHERE user = ?", (ALICE,)
        ).fetchone()
        db.execute("UPDATE grants SET refresh_ct = ? WHERE user = ?", (alice_ct, BOB))
        db.execute("DELETE FROM access_tokens")
    async with Emulator(data_dir=tmp_path) as emu:
        token = emu.user_token(BOB)
        if wire == "grpc":
            async with channel_to(emu.grpc_target) as stub:
                failure = await grpc_fail(grpc_acquire(stub, token))
            assert failure.code == grpc.StatusCode.INTERNAL
            message = failure.message
        else:
            status, body = await rest(emu.http_url, "POST", ACQUIRE, token, {})
            assert status == 500
            assert body["error"]["status"] == "INTERNAL"
            message = body["error"]["message"]
        assert "incident" in message
        assert "DecryptionError" in caplog.text  # the operator's log has the cause
        assert token not in caplog.text
        assert token not in message
        # Alice's own row still works.
        async with channel_to(emu.grpc_target) as stub:
            answer = await grpc_acquire(stub, emu.user_token(ALICE))
        assert (await userinfo(emu.http_url, answer.access_token))[1]["sub"] == ALICE


async def test_pitfall_20_users_isolated_under_interleaved_rotations(tmp_path: Path) -> None:
    """Every acquire rotates (no expires_in, so nothing is cached); users A, B and C
    interleave; every token belongs to its caller and no grant is lost."""
    config = {"provider": {"send_expires_in": False}}
    users = [f"user{i}@example.com" for i in range(3)]
    async with Emulator(data_dir=tmp_path, config=config) as emu:
        for user in users:
            await _store_grpc(emu, user)
        async with channel_to(emu.grpc_target) as stub:

            async def one(user: str, scope: str) -> tuple[str, str]:
                answer = await grpc_acquire(stub, emu.user_token(user), scope=scope)
                return user, answer.access_token

            calls = [one(users[i % 3], ["", "read", "write"][i % 2]) for i in range(30)]
            results = await asyncio.gather(*calls)
        for user, access in results:
            status, info = await userinfo(emu.http_url, access)
            assert status == 200
            assert info["sub"] == user
        stats = await provider_stats(emu.http_url)
        assert stats["refreshes"] >= 6
        assert stats["invalid_grant"] == 0
        assert stats["families_revoked"] == 0


@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_the_client_end_to_end(emu: Emulator, transport: str) -> None:
    credentials = emu.user_credentials(ALICE)
    async with emu.client(transport=transport, credentials=credentials) as client:
        redirect = await emu.consent(ALICE)
        await client.store_refresh_token(CONNECTOR, redirect)
        token = await client.acquire_access_token(CONNECTOR)
        assert token.connector == CONNECTOR
        assert (await userinfo(emu.http_url, token.access_token))[1]["sub"] == ALICE
        assert token.access_token not in repr(token)
