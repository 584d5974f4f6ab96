"""``agentspace-grpc acquire | store`` with an authorization's name, against the scripted servers
(the RPC is chosen from the name; consent prints the authorization URI and exits 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentspace_grpc import _proto, cli
from tests._servers import AUTHORIZATION, FakeService, Seen, Servers, ServersThread

REDIRECT = "https://vertexaisearch.cloud.google.com/oauth-redirect?code=c0de&state=s"
# A server that writes to the terminal through the URI: clear the screen, fake a line of output.
CONSENT_URI = "https://consent.example/authorize?state=s\x1b[2J\nagentspace-grpc: all fine"
CONSENT_SHOWN = "https://consent.example/authorize?state=s\\x1b[2J\\nagentspace-grpc: all fine"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """One scripted service for the module; each test sets its handlers."""
    with ServersThread(FakeService()) as running:
        yield running


@pytest.fixture
def service(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> FakeService:
    for variable in ("AGENTSPACE_EMULATOR_HOST", "AGENTSPACE_EMULATOR_REST"):
        monkeypatch.delenv(variable, raising=False)
    servers.service.seen.clear()
    servers.service.handlers.clear()
    return servers.service


def run(
    servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """The command in this process, pointed at the scripted servers as user alice."""
    token = tmp_path / "token"
    token.write_text("alice")
    token.chmod(0o600)
    where = ["--endpoint", servers.grpc_target, "--rest-endpoint", servers.rest_url]
    status = cli.main([*args, *where, "--token-file", str(token)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("transport", ["grpc", "rest", "auto"])
def test_acquire_with_an_authorization_name_calls_acquire_user_authorization(
    servers: Servers,
    service: FakeService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    transport: str,
) -> None:
    status, out, err = run(
        servers, tmp_path, capsys, "acquire", AUTHORIZATION, "--transport", transport
    )
    assert status == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["resource"] == AUTHORIZATION
    assert lines["transport"] == ("rest" if transport == "rest" else "grpc")
    assert "ua:alice:1" not in out + err
    (seen,) = service.seen
    assert (seen.method, seen.request.name) == ("AcquireUserAuthorization", AUTHORIZATION)

    status, out, err = run(servers, tmp_path, capsys, "acquire", AUTHORIZATION, "--json")
    assert status == 0, err
    data = json.loads(out)
    assert (data["resource"], data["connector"], data["scopes"]) == (
        AUTHORIZATION,
        AUTHORIZATION,
        ["default"],
    )
    assert "ua:alice:2" not in out + err

    status, out, err = run(servers, tmp_path, capsys, "acquire", AUTHORIZATION, "--show-token")
    assert (status, out) == (0, "ua:alice:3\n")


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_consent_prints_the_authorization_uri_on_stderr_and_exits_3(
    servers: Servers,
    service: FakeService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    transport: str,
) -> None:
    async def consent(seen: Seen) -> _proto.AcquireUserAuthorizationResponse:
        return _proto.AcquireUserAuthorizationResponse(authorization_uri=CONSENT_URI)

    service.on("AcquireUserAuthorization", consent)
    args = ("acquire", AUTHORIZATION, "--transport", transport)
    status, out, err = run(servers, tmp_path, capsys, *args)
    assert (status, out) == (3, "")
    assert CONSENT_SHOWN in err  # control characters escaped
    assert "\x1b" not in err
    assert err.count("\n") == 1
    assert f"agentspace-grpc store {AUTHORIZATION} --redirect-uri URI" in err

    status, out, err = run(servers, tmp_path, capsys, *args, "--json")
    error = json.loads(out)["error"]
    assert (status, error["exit_status"], error["status"]) == (3, 3, "NOT_FOUND")
    assert error["authorization_uri"] == CONSENT_URI


@pytest.mark.parametrize("output", ["text", "json"])
def test_store_with_an_authorization_name_calls_store_user_authorization(
    servers: Servers,
    service: FakeService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
) -> None:
    args = ("store", AUTHORIZATION, "--redirect-uri", REDIRECT)
    status, out, err = run(servers, tmp_path, capsys, *args, *(["--json"] * (output == "json")))
    assert status == 0, err
    (seen,) = service.seen
    assert seen.method == "StoreUserAuthorization"
    assert (seen.request.name, seen.request.full_redirect_uri) == (AUTHORIZATION, REDIRECT)
    assert "c0de" not in out + err
    if output == "json":
        assert json.loads(out) == {
            "resource": AUTHORIZATION,
            "connector": AUTHORIZATION,
            "stored": True,
            "transport": "grpc",
        }
    else:
        assert out == f"stored the authorization for {AUTHORIZATION} (transport grpc)\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("acquire", AUTHORIZATION, "--scope", "s"), "--scope and --action apply to data"),
        (("acquire", AUTHORIZATION, "--action", "a"), "--scope and --action apply to data"),
        (("store", AUTHORIZATION, "--redirect-uri", REDIRECT, "--scopes", "s"), "--scopes and"),
        (("store", AUTHORIZATION, "--redirect-uri", REDIRECT, "--instance-uri", "i"), "--scopes"),
    ],
)
def test_exit_2_for_the_connector_flags_with_an_authorization_before_any_call(
    servers: Servers,
    service: FakeService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    words: str,
) -> None:
    status, _, err = run(servers, tmp_path, capsys, *args)
    assert status == 2
    assert words in err
    assert service.seen == []


def test_status_names_an_authorization_as_a_resource(
    servers: Servers, service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(servers, tmp_path, capsys, "status", AUTHORIZATION)
    assert status == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert (lines["resource"], lines["state"]) == (AUTHORIZATION, "connected")
    assert "connector" not in lines
    assert "ua:alice" not in out + err
    (seen,) = service.seen
    assert seen.method == "AcquireUserAuthorization"

    status, out, err = run(servers, tmp_path, capsys, "status", AUTHORIZATION, "--json")
    assert status == 0, err
    data = json.loads(out)
    assert (data["resource"], data["connector"], data["state"]) == (
        AUTHORIZATION,
        AUTHORIZATION,
        "connected",
    )


def test_status_of_an_authorization_needing_consent_prints_its_uri(
    servers: Servers, service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def consent(seen: Seen) -> _proto.AcquireUserAuthorizationResponse:
        return _proto.AcquireUserAuthorizationResponse(authorization_uri=CONSENT_URI)

    service.on("AcquireUserAuthorization", consent)
    status, out, err = run(servers, tmp_path, capsys, "status", AUTHORIZATION)
    assert status == 3, err
    assert "state      not_connected" in out
    assert CONSENT_SHOWN in err  # control characters escaped
    assert "\x1b" not in out + err
    assert f"agentspace-grpc store {AUTHORIZATION} --redirect-uri -" in err
