"""``agentspace-grpc acquire | store | check`` as subprocesses against a running emulator process.

One emulator process serves the module (started as ``agentspace-grpc emulator``; its JSON ready
line gives the addresses). alice has connected her account, bob connects during a test, carol
never does. Every documented exit status is produced for real, and no test lets a token reach
the terminal unless ``--show-token`` asked for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
import pytest

from agentspace_grpc import _proto, cli
from tests._emulator_helpers import (
    AUTHORIZATION,
    CONNECTOR,
    connect_user,
    consent_over_http,
    follow_like_a_browser,
    mint,
    start_emulator,
    userinfo,
)
from tests._raw import closed_port
from tests._servers import FakeService, RpcFault, Seen, ServersThread

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"  # never consents

_T = TypeVar("_T")


def run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine on a private loop in a worker thread (from sync fixtures and tests)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=60)


@dataclass
class Emu:
    grpc: str
    http: str
    home: Path

    def env(self, *, variables: bool = True) -> dict[str, str]:
        """A clean environment: no real Google credentials, no metadata server, no proxy."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENTSPACE_EMULATOR", "GOOGLE_", "CLOUDSDK_", "GCE_"))
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env.update(
            HOME=str(self.home),
            CLOUDSDK_CONFIG=str(self.home / "gcloud"),
            NO_GCE_CHECK="true",
            GCE_METADATA_HOST="127.0.0.1:9",
            GCE_METADATA_IP="127.0.0.1:9",
        )
        if variables:
            env["AGENTSPACE_EMULATOR_HOST"] = self.grpc
            env["AGENTSPACE_EMULATOR_REST"] = self.http
        return env


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """``agentspace-grpc emulator`` as a process; alice has connected her account."""
    process = run_async(start_emulator(None, log_dir=tmp_path_factory.mktemp("emulator")))
    try:
        home = tmp_path_factory.mktemp("home")
        (home / "gcloud").mkdir()
        found = Emu(process.grpc, process.http, home)
        run_async(connect_user(found.http, ALICE))
        yield found
    finally:
        assert run_async(process.stop()) == 0


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def agentspace(
    emu: Emu, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "agentspace_grpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env) if env is not None else emu.env(),
        input=stdin,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def token_file(directory: Path, content: str, mode: int = 0o600) -> str:
    path = directory / f"token-{abs(hash(content)) % 10**8}"
    path.write_text(content)
    path.chmod(mode)
    return str(path)


@pytest.fixture(scope="module")
def alice_token(emu: Emu) -> str:
    """alice's end-user (Google-side) bearer token, as a user would hold it."""
    return run_async(mint(emu.http, ALICE))


@pytest.fixture(scope="module")
def alice_third_party_token(emu: Emu) -> str:
    """alice's third-party access token, fetched once with --show-token (the service caches
    it for the token's lifetime, an hour here, so every acquire in this module returns it)."""
    result = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--show-token")
    assert result.status == 0, result.stderr
    token = result.stdout.strip()
    status, info = run_async(userinfo(emu.http, token))
    assert status == 200
    assert info["email"] == ALICE
    return token


# ---- help ----------------------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("acquire", "store", "check", "demo", "emulator", "bench"):
        assert command in out


@pytest.mark.parametrize("command", ["acquire", "store", "check", "demo"])
def test_help_of_each_subcommand(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: agentspace-grpc {command}" in out
    if command != "demo":
        assert "exit status:" in out
        for line in ("  3 ", "  4 ", "  5 ", "AGENTSPACE_EMULATOR_HOST", "--token-file"):
            assert line in out


# ---- acquire: success ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest", "auto"])
def test_acquire_over_each_transport_never_prints_the_token(
    emu: Emu, tmp_path: Path, alice_token: str, alice_third_party_token: str, transport: str
) -> None:
    path = token_file(tmp_path, alice_token + "\n")
    result = agentspace(emu, "acquire", CONNECTOR, "--transport", transport, "--token-file", path)
    assert result.status == 0, result.stderr
    expected = "rest" if transport == "rest" else "grpc"
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["connector"] == CONNECTOR
    assert lines["scopes"] == "read write"
    assert lines["transport"] == expected
    fingerprint = hashlib.sha256(alice_third_party_token.encode()).hexdigest()[:8]
    assert lines["token"].startswith(f"sha256:{fingerprint}")
    assert alice_third_party_token not in result.output
    assert alice_token not in result.output


def test_acquire_json_output(emu: Emu, alice_third_party_token: str) -> None:
    result = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--json")
    assert result.status == 0, result.stderr
    data = result.json()
    assert data == {
        "resource": CONNECTOR,
        "connector": CONNECTOR,
        "scopes": ["read", "write"],
        "transport": "grpc",
        "token_sha256": hashlib.sha256(alice_third_party_token.encode()).hexdigest()[:8],
    }
    assert alice_third_party_token not in result.output


def test_show_token_prints_it_alone_on_stdout(emu: Emu, alice_third_party_token: str) -> None:
    plain = agentspace(
        emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--show-token", "--transport", "rest"
    )
    assert plain.status == 0, plain.stderr
    assert plain.stdout == alice_third_party_token + "\n"
    assert "transport  rest" in plain.stderr
    as_json = agentspace(
        emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--show-token", "--json"
    )
    assert as_json.status == 0, as_json.stderr
    assert as_json.json()["access_token"] == alice_third_party_token


def test_flags_instead_of_emulator_variables(emu: Emu) -> None:
    result = agentspace(
        emu,
        "acquire",
        CONNECTOR,
        "--endpoint",
        emu.grpc,
        "--rest-endpoint",
        emu.http,
        "--transport",
        "rest",
        "--emulator-user",
        ALICE,
        "--json",
        env=emu.env(variables=False),
    )
    assert result.status == 0, result.stderr
    assert result.json()["transport"] == "rest"


def test_auto_falls_back_to_rest_and_says_which_wire_answered(emu: Emu) -> None:
    result = agentspace(
        emu,
        "acquire",
        CONNECTOR,
        "--endpoint",
        f"127.0.0.1:{closed_port()}",
        "--rest-endpoint",
        emu.http,
        "--emulator-user",
        ALICE,
        "--json",
        env=emu.env(variables=False),
    )
    assert result.status == 0, result.stderr
    assert result.json()["transport"] == "rest"
    assert "REST instead of gRPC" in result.stderr


def test_token_file_from_stdin(emu: Emu, alice_token: str) -> None:
    result = agentspace(
        emu, "acquire", CONNECTOR, "--token-file", "-", "--json", stdin=f"Bearer {alice_token}\n"
    )
    assert result.status == 0, result.stderr
    assert result.json()["connector"] == CONNECTOR


# ---- store and check -----------------------------------------------------------------------


def test_store_then_acquire_and_check(emu: Emu) -> None:
    async def consent() -> str:
        return await consent_over_http(emu.http, await mint(emu.http, BOB))

    redirect = run_async(consent())
    stored = agentspace(
        emu, "store", CONNECTOR, "--redirect-uri", "-", "--emulator-user", BOB, stdin=redirect
    )
    assert stored.status == 0, stored.stderr
    assert f"stored the refresh token of {BOB}" in stored.stdout
    assert "account_id:" in stored.stdout
    code = redirect.split("code=", 1)[1].split("&", 1)[0]
    assert code not in stored.output

    acquired = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", BOB, "--json")
    assert acquired.status == 0, acquired.stderr

    checked = agentspace(emu, "check", CONNECTOR, "--emulator-user", BOB, "--transport", "rest")
    assert checked.status == 0, checked.stderr
    assert "scopes     read write" in checked.stdout
    assert checked.stderr.count("deprecated") == 1
    assert "Traceback" not in checked.stderr


def test_store_json_output(emu: Emu, tmp_path: Path) -> None:
    user = "dave@example.com"

    async def consent() -> tuple[str, str]:
        token = await mint(emu.http, user)
        return token, await consent_over_http(emu.http, token)

    token, redirect = run_async(consent())
    path = token_file(tmp_path, token)
    result = agentspace(
        emu, "store", CONNECTOR, "--redirect-uri", redirect, "--token-file", path, "--json"
    )
    assert result.status == 0, result.stderr
    data = result.json()
    assert data["stored"] is True
    assert data["connector"] == CONNECTOR
    assert data["transport"] == "grpc"
    assert "account_id" in data["additional_oauth_responses"]


def fp(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


# A Slack-style answer: the user's own tokens ride along, some of them inside JSON text.
SLACK_SECRETS = {
    "user_access": "xoxp-CANARY-user-access",
    "user_refresh": "xoxe-CANARY-user-refresh",
    "webhook_secret": "CANARY-signing-secret",
    "bot": "xoxb-CANARY-bot",
    "client": "CANARY-client-secret",
    "password": "CANARY-password",
    "code": "CANARY-one-time-code",
    "api_key": "CANARY-api-key",
    "tokens": "CANARY-refresh-tokens",
    "webhook": "https://hooks.example/services/CANARY-webhook",
    "assertion": "CANARY-client-assertion",
}
SLACK_EXTRAS = {
    "authed_user": json.dumps(
        {
            "id": "U123",
            "token_type": "user",
            "access_token": SLACK_SECRETS["user_access"],
            "refresh_token": SLACK_SECRETS["user_refresh"],
            "hooks": [
                {"url": "https://hooks.example", "signingSecret": SLACK_SECRETS["webhook_secret"]}
            ],
        }
    ),
    "botToken": SLACK_SECRETS["bot"],
    "CLIENT_SECRET": SLACK_SECRETS["client"],
    "admin_password": SLACK_SECRETS["password"],
    "authorization_code": SLACK_SECRETS["code"],
    "api_key": SLACK_SECRETS["api_key"],
    "refresh_tokens": SLACK_SECRETS["tokens"],
    "incoming_webhook_url": SLACK_SECRETS["webhook"],
    "client_assertion": SLACK_SECRETS["assertion"],
    "token_type": "bot",
    "team": '{"id": "T9", "name": "Acme"}',
    "expires_in": 43200,
}


async def _slack_like_store(seen: Seen) -> Any:
    answer = _proto.AcquireAndStoreRefreshTokenResponse()
    for key, value in SLACK_EXTRAS.items():
        item = answer.additional_oauth_responses.add(key=key)
        if isinstance(value, int):
            item.int_value = value
        else:
            item.string_value = value
    return answer


@pytest.fixture(scope="module")
def slack_like_service() -> Iterator[tuple[str, str]]:
    """A service whose store answer carries a Slack-style provider's fields: (gRPC, REST)."""
    service = FakeService()
    service.on("AcquireAndStoreRefreshToken", _slack_like_store)
    with ServersThread(service) as servers:
        yield servers.grpc_target, servers.rest_url


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_store_shows_the_third_partys_secrets_only_as_fingerprints(
    emu: Emu,
    tmp_path: Path,
    slack_like_service: tuple[str, str],
    transport: str,
    output: str,
) -> None:
    grpc_target, rest_url = slack_like_service
    common = [
        "store",
        CONNECTOR,
        "--redirect-uri",
        "https://vertexaisearch.cloud.google.com/oauth-redirect?code=c0de&state=s",
        "--transport",
        transport,
        "--endpoint",
        grpc_target,
        "--rest-endpoint",
        rest_url,
        "--token-file",
        token_file(tmp_path, "alice-google-token"),
        *(["--json"] if output == "json" else []),
    ]
    result = agentspace(emu, *common, env=emu.env(variables=False))
    assert result.status == 0, result.stderr
    for secret in SLACK_SECRETS.values():
        assert secret not in result.output
        assert fp(secret) in result.output
    assert "U123" in result.stdout  # the rest is shown as is
    assert "Acme" in result.stdout
    if output == "json":
        extras = result.json()["additional_oauth_responses"]
        assert extras["botToken"] == fp(SLACK_SECRETS["bot"])
        assert extras["token_type"] == "bot"
        assert extras["expires_in"] == 43200
        assert extras["team"] == SLACK_EXTRAS["team"]
        user = json.loads(extras["authed_user"])
        assert user["access_token"] == fp(SLACK_SECRETS["user_access"])
        assert user["token_type"] == "user"
        assert user["hooks"][0]["signingSecret"] == fp(SLACK_SECRETS["webhook_secret"])
    else:
        assert "  token_type: bot" in result.stdout

    shown = agentspace(emu, *common, "--show-token", env=emu.env(variables=False))
    assert shown.status == 0, shown.stderr
    for secret in SLACK_SECRETS.values():
        assert secret in shown.stdout
    if output == "json":
        assert shown.json()["additional_oauth_responses"] == SLACK_EXTRAS


# A server that writes to the terminal: clear the screen, retitle the window, reverse the text
# direction, and fake a line of the command's own output.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07 \u202eevil\nagentspace-grpc acquire: all fine\r"
HOSTILE_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil\\nagentspace-grpc acquire: all fine\\r"


def assert_inert(text: str) -> None:
    assert HOSTILE_SHOWN in text
    assert not [c for c in text if c in "\x1b\x07\r\u202e"]
    assert "\nagentspace-grpc acquire: all fine" not in text


async def _hostile_error(seen: Seen) -> Any:
    raise RpcFault(grpc.StatusCode.FAILED_PRECONDITION, HOSTILE)


async def _hostile_store(seen: Seen) -> Any:
    answer = _proto.AcquireAndStoreRefreshTokenResponse()
    answer.additional_oauth_responses.add(key="team", string_value=HOSTILE)
    return answer


async def _hostile_scopes(seen: Seen) -> Any:
    info = _proto.RefreshTokenInfo(name=CONNECTOR, scopes=[HOSTILE])
    return _proto.CheckRefreshTokenResponse(refresh_token_info=info)


@pytest.fixture(scope="module")
def hostile_service() -> Iterator[tuple[str, str]]:
    """A service whose every answer carries control characters: (gRPC, REST)."""
    service = FakeService()
    service.on("AcquireAccessToken", _hostile_error)
    service.on("AcquireAndStoreRefreshToken", _hostile_store)
    service.on("CheckRefreshToken", _hostile_scopes)
    with ServersThread(service) as servers:
        yield servers.grpc_target, servers.rest_url


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_server_text_reaches_the_terminal_with_control_characters_escaped(
    emu: Emu, tmp_path: Path, hostile_service: tuple[str, str], transport: str
) -> None:
    grpc_target, rest_url = hostile_service
    where = ["--transport", transport, "--endpoint", grpc_target, "--rest-endpoint", rest_url]
    who = ["--token-file", token_file(tmp_path, "alice-google-token")]
    env = emu.env(variables=False)
    failed = agentspace(emu, "acquire", CONNECTOR, *where, *who, env=env)
    assert failed.status == 1, failed.output
    assert_inert(failed.stderr)
    redirect = "https://vertexaisearch.cloud.google.com/oauth-redirect?code=c&state=s"
    stored = agentspace(emu, "store", CONNECTOR, "--redirect-uri", redirect, *where, *who, env=env)
    assert stored.status == 0, stored.output
    assert_inert(stored.stdout)
    checked = agentspace(emu, "check", CONNECTOR, *where, *who, env=env)
    assert checked.status == 0, checked.output
    assert_inert(checked.stdout)


def test_the_error_of_a_redirect_is_printed_with_control_characters_escaped(emu: Emu) -> None:
    error = quote(HOSTILE, safe="")
    redirect = f"https://vertexaisearch.cloud.google.com/oauth-redirect?error={error}&state=s"
    result = agentspace(
        emu, "store", CONNECTOR, "--redirect-uri", redirect, "--emulator-user", ALICE
    )
    assert result.status == 3, result.output
    assert_inert(result.stderr)


def test_check_json_output(emu: Emu) -> None:
    result = agentspace(emu, "check", CONNECTOR, "--emulator-user", ALICE, "--json")
    assert result.status == 0, result.stderr
    assert result.json() == {
        "connector": CONNECTOR,
        "stored": True,
        "scopes": ["read", "write"],
        "transport": "grpc",
    }
    assert result.stderr.count("deprecated") == 1


@pytest.mark.parametrize(
    ("where", "expected"),
    [("closed gRPC port", "rest"), ("emulator gRPC port", "grpc"), ("REST only", "rest")],
)
def test_check_says_which_wire_answered_in_auto_mode(emu: Emu, where: str, expected: str) -> None:
    """Without a token to say so, the wire comes from the client itself (not its log)."""
    if where == "REST only":
        endpoint: list[str] = []
        env = {**emu.env(variables=False), "AGENTSPACE_EMULATOR_REST": emu.http}
    else:
        target = f"127.0.0.1:{closed_port()}" if where == "closed gRPC port" else emu.grpc
        endpoint = ["--endpoint", target, "--rest-endpoint", emu.http]
        env = emu.env(variables=False)
    result = agentspace(
        emu, "check", CONNECTOR, *endpoint, "--emulator-user", ALICE, "--json", env=env
    )
    assert result.status == 0, result.stderr
    assert result.json()["transport"] == expected


# ---- exit status 3: the user must authorize ------------------------------------------------


@pytest.mark.parametrize("command", ["acquire", "check"])
def test_exit_3_when_the_user_never_consented(emu: Emu, command: str) -> None:
    result = agentspace(emu, command, CONNECTOR, "--emulator-user", CAROL, "--json")
    assert result.status == 3
    assert f"user {CAROL} has not authorized data connector {CONNECTOR}" in result.stderr
    assert "consent flow" in result.stderr
    assert "agentspace-grpc store" in result.stderr
    assert "Traceback" not in result.stderr
    error = result.json()["error"]
    assert error["exit_status"] == 3
    assert error["status"] == "NOT_FOUND"
    assert error["reason"] == "REFRESH_TOKEN_NOT_FOUND"


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_an_authorization_from_consent_uri_to_token(emu: Emu, transport: str) -> None:
    """acquire exits 3 with the authorization URI on stderr; a browser follows it; store takes
    the URI it ends at; acquire then prints the user's token (the same one twice: cached)."""
    user = f"erin-{transport}@example.com"
    wire = ("--emulator-user", user, "--transport", transport)
    needed = agentspace(emu, "acquire", AUTHORIZATION, *wire)
    assert (needed.status, needed.stdout) == (3, "")
    found = re.search(r"must authorize \S+: open (\S+) in a browser", needed.stderr)
    assert found, needed.stderr
    assert found[1].startswith(f"{emu.http}/emulator/v1/consent?state=")
    assert f"agentspace-grpc store {AUTHORIZATION} --redirect-uri URI" in needed.stderr

    redirect = run_async(follow_like_a_browser(found[1]))[-1]
    stored = agentspace(emu, "store", AUTHORIZATION, "--redirect-uri", "-", *wire, stdin=redirect)
    assert stored.status == 0, stored.stderr
    assert stored.stdout == (
        f"stored the authorization of {user} for {AUTHORIZATION} (transport {transport})\n"
    )

    shown = agentspace(emu, "acquire", AUTHORIZATION, *wire, "--show-token")
    assert shown.status == 0, shown.stderr
    token = shown.stdout.strip()
    assert run_async(userinfo(emu.http, token))[1]["sub"] == user
    again = agentspace(emu, "acquire", AUTHORIZATION, *wire, "--json")
    assert again.status == 0, again.stderr
    assert again.json()["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()[:8]
    assert again.json()["scopes"] == ["read", "write"]
    assert token not in again.output


def test_exit_3_when_scopes_are_missing(emu: Emu) -> None:
    result = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--scope", "admin")
    assert result.status == 3
    assert "admin" in result.stderr
    assert "consent flow again" in result.stderr


# ---- exit status 4: credentials refused ----------------------------------------------------


def test_exit_4_for_a_token_the_service_does_not_accept(emu: Emu, tmp_path: Path) -> None:
    secret = "canary-not-an-emulator-token-0123456789"
    result = agentspace(emu, "acquire", CONNECTOR, "--token-file", token_file(tmp_path, secret))
    assert result.status == 4
    assert "credentials were not accepted" in result.stderr
    assert secret not in result.output


def test_exit_4_without_credentials_against_the_emulator(emu: Emu) -> None:
    result = agentspace(emu, "acquire", CONNECTOR)
    assert result.status == 4
    assert "--emulator-user" in result.stderr


def test_exit_4_without_application_default_credentials(emu: Emu) -> None:
    result = agentspace(
        emu,
        "acquire",
        CONNECTOR,
        "--endpoint",
        emu.grpc,
        "--rest-endpoint",
        emu.http,
        env=emu.env(variables=False),
    )
    assert result.status == 4
    assert "gcloud auth application-default login" in result.stderr


# ---- exit status 5: try again later --------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_exit_5_when_the_service_is_unreachable(emu: Emu, alice_token: str, transport: str) -> None:
    port = closed_port()
    result = agentspace(
        emu,
        "acquire",
        CONNECTOR,
        "--transport",
        transport,
        "--endpoint",
        f"127.0.0.1:{port}",
        "--token-file",
        "-",
        "--timeout",
        "3",
        env=emu.env(variables=False),
        stdin=alice_token,
    )
    assert result.status == 5, result.stderr
    assert f"could not be reached over {transport}" in result.stderr


# ---- exit status 2: usage and bad input ----------------------------------------------------


def test_exit_2_for_a_malformed_name_before_any_call(emu: Emu) -> None:
    result = agentspace(emu, "acquire", "projects/x", "--emulator-user", ALICE)
    assert result.status == 2
    assert "invalid data connector name" in result.stderr


def test_exit_2_for_a_connector_that_does_not_exist(emu: Emu) -> None:
    name = "projects/p/locations/global/collections/c/dataConnector"
    result = agentspace(emu, "acquire", name, "--emulator-user", ALICE)
    assert result.status == 2
    assert name in result.stderr


def test_exit_2_for_an_unknown_action(emu: Emu) -> None:
    result = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", ALICE, "--action", "nope")
    assert result.status == 2
    assert "rejected the request" in result.stderr
    assert "nope" in result.stderr


def test_exit_2_for_missing_arguments(emu: Emu) -> None:
    assert agentspace(emu, "acquire").status == 2
    assert agentspace(emu, "store", CONNECTOR).status == 2  # --redirect-uri is required


def test_exit_2_for_a_world_readable_token_file(emu: Emu, tmp_path: Path, alice_token: str) -> None:
    path = token_file(tmp_path, alice_token, mode=0o644)
    result = agentspace(emu, "acquire", CONNECTOR, "--token-file", path)
    assert result.status == 2
    assert "chmod 600" in result.stderr
    assert alice_token not in result.output


@pytest.mark.parametrize(
    "mode", [0o640, 0o620, 0o660, 0o604, 0o602, 0o610], ids=lambda mode: f"{mode:04o}"
)
def test_exit_2_for_a_token_file_open_to_group_or_others(
    emu: Emu, tmp_path: Path, alice_token: str, mode: int
) -> None:
    target = token_file(tmp_path, alice_token, mode=mode)
    link = tmp_path / "link-to-token"
    link.symlink_to(target)  # the mode that counts is the file's, not the link's
    for path in (target, str(link)):
        result = agentspace(emu, "acquire", CONNECTOR, "--token-file", path)
        assert result.status == 2, result.output
        assert f"mode {mode:04o}" in result.stderr
        assert "chmod 600" in result.stderr
        assert alice_token not in result.output


def other_users_token_file(tmp_path: Path, content: str) -> str:
    """A 0600 file this process can read but does not own (as root: chown it to nobody)."""
    if os.geteuid() != 0:
        return "/etc/passwd"  # root's, readable by everyone: the owner is checked first
    path = token_file(tmp_path, content)
    os.chown(path, 65534, 65534)
    return path


def test_exit_2_for_a_token_file_of_another_user(
    emu: Emu, tmp_path: Path, alice_token: str
) -> None:
    path = other_users_token_file(tmp_path, alice_token)
    result = agentspace(emu, "acquire", CONNECTOR, "--token-file", path)
    assert result.status == 2, result.output
    assert "belongs to another user" in result.stderr
    assert alice_token not in result.output


def test_a_private_file_a_symlink_to_it_and_a_pipe_are_accepted_as_token_files(
    emu: Emu, tmp_path: Path, alice_token: str
) -> None:
    target = token_file(tmp_path, alice_token)
    link = tmp_path / "link-to-token"
    link.symlink_to(target)
    for path in (target, str(link)):
        result = agentspace(emu, "acquire", CONNECTOR, "--token-file", path, "--json")
        assert result.status == 0, result.stderr
    # What bash's <(gcloud auth print-access-token) gives: /dev/fd/N, a pipe.
    command = [sys.executable, "-m", "agentspace_grpc.cli", "acquire", CONNECTOR, "--json"]
    read_end, write_end = os.pipe()
    os.write(write_end, alice_token.encode() + b"\n")
    os.close(write_end)
    try:
        done = subprocess.run(
            [*command, "--token-file", f"/dev/fd/{read_end}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=emu.env(),
            pass_fds=(read_end,),
            check=False,
        )
    finally:
        os.close(read_end)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["connector"] == CONNECTOR


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"type": "authorized_user"}', "GOOGLE_APPLICATION_CREDENTIALS"),
        ("line-one\nline-two", "one line"),
    ],
)
def test_exit_2_for_an_unusable_token_file(
    emu: Emu, tmp_path: Path, content: str | None, complaint: str
) -> None:
    path = str(tmp_path / "missing") if content is None else token_file(tmp_path, content)
    result = agentspace(emu, "acquire", CONNECTOR, "--token-file", path)
    assert result.status == 2
    assert complaint in result.stderr
    if content:
        assert content not in result.output


def test_exit_2_for_a_redirect_uri_without_a_code(emu: Emu) -> None:
    result = agentspace(
        emu,
        "store",
        CONNECTOR,
        "--redirect-uri",
        "https://vertexaisearch.cloud.google.com/oauth-redirect?state=abc",
        "--emulator-user",
        ALICE,
    )
    assert result.status == 2
    assert "no code= parameter" in result.stderr


def test_exit_2_for_emulator_user_without_the_emulator_address(emu: Emu) -> None:
    result = agentspace(
        emu, "acquire", CONNECTOR, "--emulator-user", ALICE, env=emu.env(variables=False)
    )
    assert result.status == 2
    assert "AGENTSPACE_EMULATOR_REST" in result.stderr


# ---- exit status 1: anything else ----------------------------------------------------------


class _InternalErrorHandler(http.server.BaseHTTPRequestHandler):
    """A REST endpoint that answers every call with a Google-shaped INTERNAL error."""

    def do_POST(self) -> None:
        body = json.dumps(
            {"error": {"code": 500, "message": "backend exploded", "status": "INTERNAL"}}
        ).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def internal_error_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _InternalErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_exit_1_for_other_errors(emu: Emu, internal_error_url: str, alice_token: str) -> None:
    result = agentspace(
        emu,
        "acquire",
        CONNECTOR,
        "--transport",
        "rest",
        "--rest-endpoint",
        internal_error_url,
        "--token-file",
        "-",
        "--json",
        env=emu.env(variables=False),
        stdin=alice_token,
    )
    assert result.status == 1, result.stderr
    assert "INTERNAL: backend exploded" in result.stderr
    assert result.json()["error"]["status"] == "INTERNAL"


def test_the_emulators_reason_for_refusing_to_mint_is_shown(emu: Emu) -> None:
    """A user the command line lets through but the emulator refuses: its reason, not HTTP 400."""
    result = agentspace(emu, "acquire", CONNECTOR, "--emulator-user", "a\x01@b")
    assert result.status != 0
    assert "refused to mint" in result.stderr
    assert "not an email address" in result.stderr
