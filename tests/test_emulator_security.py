"""The emulator as a hostile caller or a careless deployment would meet it.

Who may steer the emulator's outgoing requests (``instance_hosts``), whose grant an
authorization code can become (PKCE and the consent state), what a non-loopback bind says, and
who may read the data directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from agentspace_grpc.emulator import Emulator
from agentspace_grpc.emulator._config import DEFAULT_REDIRECT_URI, ConfigError, load_config
from tests._emulator_helpers import rest
from tests._servers import ConnectProxy, closed_port

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


async def consent_location(http: str, token: str, **params: str) -> str:
    """The authorize URL the consent endpoint redirects to (not followed)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{http}/emulator/v1/consent",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 302, await response.text()
        return response.headers["Location"]


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
