"""The emulator as a hostile caller or a careless deployment would meet it.

Who may steer the emulator's outgoing requests (``instance_hosts``), whose grant an
authorization code can become (PKCE and the consent state), what a non-loopback bind says, and
who may read the data directory.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web

from agentspace_grpc.emulator import Emulator
from agentspace_grpc.emulator._config import DEFAULT_REDIRECT_URI, ConfigError, load_config
from agentspace_grpc.emulator._crypto import KeyMaterialError, new_key_text
from agentspace_grpc.emulator._identity import pkce_challenge
from tests._emulator_helpers import CanaryProvider, consent_location, rest, start_emulator
from tests._raw import ConnectProxy, closed_port

INSTANCE_CONNECTOR = "projects/acme/locations/global/collections/snow/dataConnector"
SECRET = "CANARY-INSTANCE-SECRET"


def instance_connector(**extra: Any) -> dict[str, Any]:
    return {
        "name": INSTANCE_CONNECTOR,
        "authorize_url": "https://login.example.com/authorize",
        "token_url": "{instance_uri}/oauth_token.do",
        "client_id": "snow",
        "client_secret": SECRET,
        "instance_hosts": ["acme.example.com", ".service-now.com"],
        **extra,
    }


async def store_with_instance(emu: Emulator, instance_uri: str) -> tuple[int, Any]:
    """AcquireAndStoreRefreshToken over REST with a real consent state and ``instance_uri``."""
    token = emu.user_token("alice@example.com")
    location = await consent_location(emu.http_url, token, connector=INSTANCE_CONNECTOR)
    state = parse_qs(urlsplit(location).query)["state"][0]
    redirect = f"{DEFAULT_REDIRECT_URI}?{urlencode({'code': 'c0de', 'state': state})}"
    return await rest(
        emu.http_url,
        "POST",
        f"/v1alpha/{INSTANCE_CONNECTOR}:acquireAndStoreRefreshToken",
        token,
        {"fullRedirectUri": redirect, "instanceUri": instance_uri},
    )


# ---- 1. instance_hosts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url_key", ["token_url", "authorize_url"], ids=["token_url", "authorize_url"]
)
def test_a_connector_using_instance_uri_must_list_its_hosts(url_key: str) -> None:
    connector = instance_connector()
    del connector["instance_hosts"]
    connector["token_url"] = "https://login.example.com/token"
    connector[url_key] = "{instance_uri}/oauth"
    with pytest.raises(ConfigError, match=r"instance_hosts must list"):
        load_config({"connectors": [connector]})
    connector["instance_hosts"] = ["acme.example.com"]
    assert load_config({"connectors": [connector]}).connectors[INSTANCE_CONNECTOR]
    connector[url_key] = "https://{instance_uri}/oauth"  # the placeholder is https://HOST
    with pytest.raises(ConfigError, match=r"only stand at the start"):
        load_config({"connectors": [connector]})
    connector[url_key] = "{instance_uri}/oauth"
    connector["instance_hosts"] = ["acme.example.com:443"]
    with pytest.raises(ConfigError, match=r"not a host name"):
        load_config({"connectors": [connector]})


@pytest.fixture
async def instance_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Emulator, ConnectProxy]]:
    """An emulator with an instance connector whose HTTPS goes through a recording proxy
    (so every host the emulator tries to reach is seen, and none is reached)."""
    async with ConnectProxy(closed_port()) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        config = {"connectors": [instance_connector()]}
        async with Emulator(data_dir=tmp_path / "data", config=config) as emu:
            yield emu, proxy


@pytest.mark.parametrize(
    "instance_uri",
    [
        "evil.example",
        "https://evil.example",
        "http://acme.example.com",
        "acme.example.com:8443",
        "https://acme.example.com:443",
        "https://user@acme.example.com",
        "https://acme.example.com/path",
        "https://acme.example.com?x=1",
        "https://acme.example.com#frag",
        "acme.example.com.evil.example",
        "service-now.com",
        "evilservice-now.com",
        "ftp://acme.example.com",
        "acme.example.com/../evil",
        "ácme.example.com",
        "",
    ],
)
async def test_instance_uri_outside_the_allowed_hosts_sends_nothing(
    instance_emulator: tuple[Emulator, ConnectProxy], instance_uri: str
) -> None:
    emu, proxy = instance_emulator
    status, body = await store_with_instance(emu, instance_uri)
    assert status == 400, body
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert "instance_uri" in body["error"]["message"]
    assert SECRET not in str(body)
    assert proxy.targets == []


@pytest.mark.parametrize(
    ("instance_uri", "host"),
    [
        ("acme.example.com", "acme.example.com"),
        ("https://ACME.example.com/", "acme.example.com"),
        ("https://dev1.service-now.com", "dev1.service-now.com"),
    ],
)
async def test_an_allowed_instance_uri_is_the_only_host_reached(
    instance_emulator: tuple[Emulator, ConnectProxy], instance_uri: str, host: str
) -> None:
    emu, proxy = instance_emulator
    status, body = await store_with_instance(emu, instance_uri)
    assert status == 503, body
    assert body["error"]["status"] == "UNAVAILABLE", body  # the proxy's tunnel goes nowhere
    assert proxy.targets == [f"{host}:443"]


async def test_the_consent_takes_an_allowed_instance_for_the_authorize_url(
    tmp_path: Path,
) -> None:
    connector = instance_connector(authorize_url="{instance_uri}/oauth_auth.do")
    async with Emulator(data_dir=tmp_path / "data", config={"connectors": [connector]}) as emu:
        token = emu.user_token("alice@example.com")
        location = await consent_location(
            emu.http_url, token, connector=INSTANCE_CONNECTOR, instance_uri="x.service-now.com"
        )
        assert location.startswith("https://x.service-now.com/oauth_auth.do?")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{emu.http_url}/emulator/v1/consent",
                params={"connector": INSTANCE_CONNECTOR, "instance_uri": "evil.example"},
                headers={"Authorization": f"Bearer {token}"},
                allow_redirects=False,
            ) as response,
        ):
            body = await response.json()
        assert response.status == 400, body
        assert "instance_uri" in body["error"]["message"]


# ---- 2. codes are bound to the consent that produced them -----------------------------------

ALICE = "alice@example.com"
MALLORY = "mallory@example.com"
BUILTIN = "projects/pkce/locations/global/collections/c/dataConnector"
BUILTIN_SECRET = "pkce-client-secret"  # given, so that the test can redeem a code itself


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


async def store(emu: Emulator, email: str, redirect: str, connector: str) -> tuple[int, Any]:
    return await rest(
        emu.http_url,
        "POST",
        f"/v1alpha/{connector}:acquireAndStoreRefreshToken",
        emu.user_token(email),
        {"fullRedirectUri": redirect},
    )


async def test_alices_code_with_mallorys_own_consent_state_is_refused(tmp_path: Path) -> None:
    async with Emulator(data_dir=tmp_path / "data") as emu:
        connector = emu.connector
        alices = await emu.consent(ALICE)  # alice's redirect, code and state: mallory saw it
        location = await consent_location(
            emu.http_url, emu.user_token(MALLORY), connector=connector
        )
        mallorys_state = query_of(location)["state"]
        forged = f"{DEFAULT_REDIRECT_URI}?" + urlencode(
            {"code": query_of(alices)["code"], "state": mallorys_state}
        )
        status, body = await store(emu, MALLORY, forged, connector)
        assert status == 400, body
        assert "rejected the authorization code" in body["error"]["message"]
        status, body = await rest(
            emu.http_url,
            "GET",
            f"/v1alpha/{connector}:checkRefreshToken",
            emu.user_token(MALLORY),
        )
        assert status == 404, body  # nothing stored under mallory
        # The wrong verifier did not spend alice's code: she stores her own grant.
        status, body = await store(emu, ALICE, alices, connector)
        assert status == 200, body


async def test_the_provider_consents_only_for_the_user_the_state_names(tmp_path: Path) -> None:
    async with Emulator(data_dir=tmp_path / "data") as emu, aiohttp.ClientSession() as session:
        location = await consent_location(
            emu.http_url, emu.user_token(MALLORY), connector=emu.connector
        )
        assert query_of(location)["login_hint"] == MALLORY
        for swapped in (
            location.replace("login_hint=mallory", "login_hint=alice"),
            location.replace("state=", "state=x"),
        ):
            async with session.get(swapped, allow_redirects=False) as response:
                assert response.status == 302
                answer = query_of(response.headers["Location"])
            assert answer["error"] == "access_denied", answer
            assert "code" not in answer
        assert (await emu.provider_stats())["authorizations"] == 0


async def test_the_builtin_provider_redeems_a_code_only_with_its_verifier(tmp_path: Path) -> None:
    config = {
        "connectors": [{"name": BUILTIN, "client_id": "pkce", "client_secret": BUILTIN_SECRET}]
    }
    async with (
        Emulator(data_dir=tmp_path / "data", config=config) as emu,
        aiohttp.ClientSession() as session,
    ):
        redirect = await emu.consent(ALICE, BUILTIN)
        form = {
            "grant_type": "authorization_code",
            "code": query_of(redirect)["code"],
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "client_id": "pkce",
            "client_secret": BUILTIN_SECRET,
        }
        for verifier in (None, "v" * 43, "ü" * 43):
            sent = form if verifier is None else {**form, "code_verifier": verifier}
            async with session.post(f"{emu.http_url}/provider/token", data=sent) as response:
                body = await response.json()
            assert response.status == 400, body
            assert body["error"] in ("invalid_grant", "invalid_request"), body
            assert "code_verifier" in body["error_description"]
        # The authorize endpoint refuses a client registered for PKCE that sends no challenge.
        location = await consent_location(emu.http_url, emu.user_token(ALICE), connector=BUILTIN)
        plain = {k: v for k, v in query_of(location).items() if not k.startswith("code_")}
        async with session.get(
            f"{emu.http_url}/provider/authorize", params=plain, allow_redirects=False
        ) as response:
            assert query_of(response.headers["Location"])["error"] == "invalid_request"
        status, body = await store(emu, ALICE, redirect, BUILTIN)
        assert status == 200, body


class RecordingProvider(CanaryProvider):
    """The canary provider, remembering each authorize query and token form."""

    def __init__(self) -> None:
        super().__init__()
        self.authorize_queries: list[dict[str, str]] = []
        self.token_forms: list[dict[str, str]] = []

    async def authorize(self, request: web.Request) -> web.Response:
        self.authorize_queries.append(dict(request.query))
        return await super().authorize(request)

    async def token(self, request: web.Request) -> web.Response:
        self.token_forms.append({k: str(v) for k, v in (await request.post()).items()})
        return await super().token(request)


@pytest.mark.parametrize("pkce", [True, False])
async def test_pkce_towards_a_third_party_provider(tmp_path: Path, pkce: bool) -> None:
    name = "projects/acme/locations/global/collections/canary/dataConnector"
    async with RecordingProvider().serve() as provider:
        extra = {} if pkce else {"pkce": False}
        config = {"connectors": [provider.connector_config(name, **extra)]}
        async with Emulator(data_dir=tmp_path / "data", config=config) as emu:
            redirect = await emu.consent(ALICE, name)
            status, body = await store(emu, ALICE, redirect, name)
            assert status == 200, body
    (query,) = provider.authorize_queries
    (form,) = provider.token_forms
    if not pkce:
        assert "code_challenge" not in query
        assert "code_verifier" not in form
        return
    verifier = form["code_verifier"]
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == pkce_challenge(verifier)
    assert 43 <= len(verifier) <= 128
    assert verifier not in redirect  # the verifier never went through the browser


# ---- 8. the emulator says where it listens ----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "exposed"), [("0.0.0.0", True), ("127.0.0.1", False)], ids=["wildcard", "loopback"]
)
async def test_a_non_loopback_bind_warns_and_the_ready_line_shows_it(
    tmp_path: Path, host: str, exposed: bool
) -> None:
    emu = await start_emulator(None, "--host", host, log_dir=tmp_path)
    try:
        assert emu.ready["grpc"].startswith(f"{host}:"), emu.ready
        assert emu.ready["http"].startswith(f"http://{host}:"), emu.ready
        assert emu.ready["token_uri"] == emu.ready["http"] + "/oauth2/token"
    finally:
        assert await emu.stop() == 0
    stderr = emu.stderr()
    assert ("anyone who can reach its ports can mint end-user identities" in stderr) == exposed
    if exposed:
        assert f"listens on {host}" in stderr


# ---- 9. files and directories are private ---------------------------------------------------


async def test_the_data_directory_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Emulator(data_dir=data) as emu:
        await emu.consent(ALICE)  # the provider has written
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        files = sorted(path.name for path in data.iterdir())
        assert {"key", "emulator.sqlite3", "provider.sqlite3"} <= set(files)
        for path in data.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, files)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o602])
@pytest.mark.parametrize("where", ["key-file", "data-dir"])
async def test_a_key_file_open_to_others_is_refused(tmp_path: Path, mode: int, where: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = tmp_path / "key" if where == "key-file" else data / "key"
    key.write_text(new_key_text() + "\n")
    key.chmod(mode)
    with pytest.raises(KeyMaterialError, match=rf"{key}.*open to group or others.*0{mode:o}"):
        await Emulator(data_dir=data, key_file=key if where == "key-file" else None).start()
    key.chmod(0o600)
    async with Emulator(data_dir=data, key_file=key if where == "key-file" else None):
        pass


async def test_a_key_file_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.touch(mode=0o600)
    key.write_text(new_key_text() + "\n")
    owner = key.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # the emulator runs as someone else
    with pytest.raises(KeyMaterialError, match=rf"{key} belongs to uid {owner}, not to this"):
        await Emulator(data_dir=tmp_path / "data", key_file=key).start()


async def test_the_cli_names_a_key_file_open_to_others(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(new_key_text() + "\n")
    key.chmod(0o644)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentspace_grpc.cli",
        "emulator",
        "--key-file",
        str(key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stdout == b""
    assert b"chmod 600" in stderr
