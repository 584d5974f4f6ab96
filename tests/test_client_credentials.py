"""Credentials: identity on every wire, refresh off the loop and single-flight, one retry on 401."""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import threading
import time
import traceback
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import google.auth.aio.credentials
import google.oauth2.credentials
import grpc
import pytest

from agentspace_grpc import (
    DataConnectorClient,
    DeadlineExceeded,
    Unauthenticated,
    Unavailable,
)
from agentspace_grpc import _proto as p
from tests._raw import TcpProxy, closed_port
from tests._servers import CLIENT_SECRET, CONNECTOR, RpcFault, Seen, Servers, TokenEndpoint, serve


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    async with serve() as running:
        running.service.strict = True  # only tokens minted by the token endpoint are valid
        yield running


@pytest.fixture
async def idp(servers: Servers) -> AsyncIterator[TokenEndpoint]:
    async with TokenEndpoint(servers.service) as endpoint:
        yield endpoint


async def test_pitfall_6_identity_reaches_the_server_over_plaintext_loopback(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    # grpc drops *call credentials* on insecure channels; the header must still arrive.
    async with DataConnectorClient(
        credentials=idp.credentials("alice"), **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
    (seen,) = servers.service.seen
    assert seen.identity == "alice"
    assert seen.headers["authorization"] == f"Bearer {idp.minted[0]}"
    assert token.access_token == "tp:alice:1"
    assert token.transport == transport


async def test_refresh_against_a_loopback_token_endpoint_ignores_proxy_variables(
    servers: Servers, idp: TokenEndpoint, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both wires never proxy loopback; the credentials' token endpoint must not either.
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(variable, dead_proxy)
    async with DataConnectorClient(
        credentials=idp.credentials("alice"), **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
    assert token.access_token == "tp:alice:1"
    assert len(idp.minted) == 1


async def test_no_credentials_means_unauthenticated_not_a_default_user(
    servers: Servers, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSPACE_EMULATOR_HOST", servers.grpc_target)
    monkeypatch.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
    async with DataConnectorClient(transport=transport) as client:  # type: ignore[arg-type]
        with pytest.raises(Unauthenticated, match="no bearer token"):
            await client.acquire_access_token(CONNECTOR)
    assert "authorization" not in servers.service.seen[0].headers


async def test_pitfall_11_a_slow_refresh_never_blocks_the_loop(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    idp.delay = 1.5
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
        credentials=idp.credentials("alice"), **servers.client_kwargs(transport)
    ) as client:
        started = time.monotonic()
        token = await client.acquire_access_token(CONNECTOR)
        elapsed = time.monotonic() - started
    stop.set()
    await ticking
    assert token.access_token == "tp:alice:1"
    assert elapsed >= 1.5
    assert len(lags) > 50
    assert max(lags) < 0.5  # a blocked loop would show a 1.5 s gap


async def test_pitfall_11_the_deadline_covers_the_refresh(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    idp.delay = 2.0
    async with DataConnectorClient(
        credentials=idp.credentials("alice"), **servers.client_kwargs(transport)
    ) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="refresh"):
            await client.acquire_access_token(CONNECTOR, timeout=0.5)
        assert 0.4 <= time.monotonic() - started < 1.5
    assert servers.service.seen == []


async def test_pitfall_12_a_thousand_callers_cause_one_refresh(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    idp.delay = 0.2
    credentials = idp.credentials("alice")
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        # Distinct actions: 1000 separate RPCs (not merged by single-flight), one credential.
        tokens = await asyncio.gather(
            *(client.acquire_access_token(CONNECTOR, action=f"a{i}") for i in range(1000))
        )
    assert idp.refreshes == 1
    assert len(servers.service.seen) == 1000
    assert {s.identity for s in servers.service.seen} == {"alice"}
    assert len(tokens) == 1000


async def test_pitfall_13_a_rejected_token_gets_one_refresh_and_one_retry(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    # The token looks valid for another hour locally (clock skew, early revocation).
    credentials = idp.credentials("alice", token="skewed-token")
    credentials.expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + (
        datetime.timedelta(hours=1)
    )
    servers.service.rejected.add("skewed-token")
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        token = await client.acquire_access_token(CONNECTOR)
        again = await client.acquire_access_token(CONNECTOR)
    assert idp.refreshes == 1
    assert [s.identity for s in servers.service.seen] == [None, "alice", "alice"]
    assert token.access_token == "tp:alice:2"
    assert again.access_token == "tp:alice:3"


async def test_pitfall_13_no_endless_401_loop(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    async def always_unauthenticated(seen: Seen) -> p.AcquireAccessTokenResponse:
        raise RpcFault(grpc.StatusCode.UNAUTHENTICATED, "token rejected")

    servers.service.on("AcquireAccessToken", always_unauthenticated)
    async with DataConnectorClient(
        credentials=idp.credentials("alice", token="old"), **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(Unauthenticated, match="token rejected"):
            await client.acquire_access_token(CONNECTOR)
    assert idp.refreshes == 1
    assert len(servers.service.seen) == 2


async def test_concurrent_rejections_share_one_refresh(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    servers.service.rejected.add("stale")
    async with DataConnectorClient(
        credentials=idp.credentials("alice", token="stale"), **servers.client_kwargs(transport)
    ) as client:
        await asyncio.gather(
            *(client.acquire_access_token(CONNECTOR, action=f"a{i}") for i in range(50))
        )
    assert idp.refreshes == 1
    assert len(servers.service.seen) == 100


async def test_a_plain_token_string_is_never_refreshed(servers: Servers, transport: str) -> None:
    servers.service.rejected.add("expired")
    async with DataConnectorClient(
        credentials="expired", **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(Unauthenticated):
            await client.acquire_access_token(CONNECTOR)
    assert len(servers.service.seen) == 1


async def test_a_failed_refresh_is_unauthenticated_and_names_no_secret(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="not-a-known-refresh-token",
        token_uri=idp.url,
        client_id="cid",
        client_secret=CLIENT_SECRET,
    )
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(Unauthenticated, match="could not be refreshed") as caught:
            await client.acquire_access_token(CONNECTOR)
    for text in (str(caught.value), repr(caught.value)):
        assert "not-a-known-refresh-token" not in text
        assert CLIENT_SECRET not in text
    assert servers.service.seen == []


async def test_an_unreachable_token_endpoint_is_unavailable(
    servers: Servers, transport: str
) -> None:
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="rt-alice",
        token_uri=f"http://127.0.0.1:{closed_port()}/token",
        client_id="cid",
        client_secret="cs",
    )
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(Unavailable, match="token endpoint"):
            await client.acquire_access_token(CONNECTOR, timeout=10)


async def test_credentials_whose_refresh_failed_are_not_kept_alive(
    servers: Servers, transport: str
) -> None:
    """A failed refresh's traceback holds the credentials (refresh token, client secret): the
    process must not keep them once the caller lets go."""
    token_uri = f"http://127.0.0.1:{closed_port()}/token"
    async with DataConnectorClient(**servers.client_kwargs(transport)) as client:
        users = []
        for n in range(3):
            credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
                token=None,
                refresh_token=f"rt-user-{n}",
                token_uri=token_uri,
                client_id="cid",
                client_secret="cs",
            )
            users.append(weakref.ref(credentials))
            with pytest.raises(Unavailable):
                await client.acquire_access_token(CONNECTOR, credentials=credentials, timeout=10)
            del credentials
        await asyncio.sleep(0)  # one loop turn: the last failure's wake-up is still queued
        gc.collect()
        assert [ref() for ref in users] == [None, None, None]


async def test_per_call_google_credentials_override_the_default(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    alice, bob = idp.credentials("alice"), idp.credentials("bob")
    async with DataConnectorClient(credentials=alice, **servers.client_kwargs(transport)) as client:
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(CONNECTOR, credentials=bob)
        await client.acquire_access_token(CONNECTOR, credentials=alice)
    assert [s.identity for s in servers.service.seen] == ["alice", "bob", "alice"]
    assert idp.refreshes == 2


async def test_with_the_emulator_variables_adc_and_the_metadata_server_are_never_probed(
    servers: Servers, transport: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with TcpProxy(closed_port()) as metadata_server:
        metadata_server.mode = "stall"
        monkeypatch.setenv("AGENTSPACE_EMULATOR_HOST", servers.grpc_target)
        monkeypatch.setenv("AGENTSPACE_EMULATOR_REST", servers.rest_url)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
        monkeypatch.setenv("GCE_METADATA_HOST", metadata_server.address)
        monkeypatch.setenv("GCE_METADATA_IP", metadata_server.address)
        async with DataConnectorClient(transport=transport) as client:  # type: ignore[arg-type]
            with pytest.raises(Unauthenticated, match="no bearer token"):
                await client.acquire_access_token(CONNECTOR, timeout=5)
        assert metadata_server.accepted == 0


async def test_application_default_credentials_are_used_without_credentials(
    servers: Servers,
    idp: TokenEndpoint,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    adc_file = tmp_path / "adc.json"
    adc_file.write_text(
        json.dumps(
            {
                # (an "authorized_user" file always refreshes at Google's token endpoint)
                "type": "external_account_authorized_user",
                "audience": "//iam.googleapis.com/locations/global/workforcePools/p/providers/x",
                "client_id": "cid",
                "client_secret": "cs",
                "refresh_token": "rt-carol",
                "token_url": idp.url,
            }
        )
    )
    monkeypatch.delenv("AGENTSPACE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("AGENTSPACE_EMULATOR_REST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file))
    async with DataConnectorClient(**servers.client_kwargs(transport)) as client:
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(CONNECTOR, action="again")
    assert [s.identity for s in servers.service.seen] == ["carol", "carol"]
    assert idp.refreshes == 1


async def test_missing_adc_is_a_clear_unauthenticated(
    servers: Servers, transport: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AGENTSPACE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("AGENTSPACE_EMULATOR_REST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    async with DataConnectorClient(**servers.client_kwargs(transport)) as client:
        with pytest.raises(Unauthenticated, match="Application Default Credentials"):
            await client.acquire_access_token(CONNECTOR, timeout=5)
    assert servers.service.seen == []


# ---- google.auth.aio credentials -----------------------------------------------------------


async def test_aio_credentials_refresh_on_the_loop_once_for_concurrent_calls(
    servers: Servers, idp: TokenEndpoint, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for synchronous credentials, proxy variables never apply to a loopback token endpoint.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    alice, bob = idp.aio_credentials("alice"), idp.aio_credentials("bob")
    async with DataConnectorClient(credentials=alice, **servers.client_kwargs(transport)) as client:
        await asyncio.gather(
            *(client.acquire_access_token(CONNECTOR, scope=f"s{i}") for i in range(5)),
            *(
                client.acquire_access_token(CONNECTOR, scope=f"s{i}", credentials=bob)
                for i in range(5)
            ),
        )
    assert alice.threads == bob.threads == [threading.get_ident()]  # on the loop, once each
    assert idp.refreshes == 2
    assert (
        sorted(str(seen.identity) for seen in servers.service.seen) == ["alice"] * 5 + ["bob"] * 5
    )


async def test_aio_credentials_are_refreshed_before_their_token_expires(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    credentials = idp.aio_credentials("alice")
    async with DataConnectorClient(
        credentials=credentials, **servers.client_kwargs(transport)
    ) as client:
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(CONNECTOR)
        assert idp.refreshes == 1
        credentials.expiry = datetime.datetime.now(datetime.UTC).replace(
            tzinfo=None
        ) + datetime.timedelta(minutes=1)  # inside the refresh margin
        await client.acquire_access_token(CONNECTOR)
    assert idp.refreshes == 2
    assert [seen.headers["authorization"] for seen in servers.service.seen] == [
        f"Bearer {idp.minted[0]}",
        f"Bearer {idp.minted[0]}",
        f"Bearer {idp.minted[1]}",
    ]


async def test_aio_static_credentials_are_sent_and_never_refreshed(
    servers: Servers, transport: str
) -> None:
    servers.service.users["static-token"] = "carol"
    async with DataConnectorClient(
        credentials=google.auth.aio.credentials.StaticCredentials(token="static-token"),
        **servers.client_kwargs(transport),
    ) as client:
        await client.acquire_access_token(CONNECTOR)
        servers.service.rejected.add("static-token")
        with pytest.raises(Unauthenticated, match="not valid"):
            await client.acquire_access_token(CONNECTOR)
    assert [seen.identity for seen in servers.service.seen] == ["carol", None]


async def test_a_failed_aio_refresh_is_unauthenticated_and_names_no_secret(
    servers: Servers, idp: TokenEndpoint, transport: str
) -> None:
    idp.status = 400
    async with DataConnectorClient(
        credentials=idp.aio_credentials("alice"), **servers.client_kwargs(transport)
    ) as client:
        with pytest.raises(Unauthenticated, match="could not be refreshed") as caught:
            await client.acquire_access_token(CONNECTOR)
    assert CLIENT_SECRET not in "".join(traceback.format_exception(caught.value))
    assert servers.service.seen == []
