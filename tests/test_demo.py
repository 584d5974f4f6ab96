"""``agentspace-grpc demo`` (what ``make demo`` runs) as a subprocess: its steps, its exit status,
and no token in clear anywhere in its output."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from agentspace_grpc import cli
from tests._raw import closed_port

STEPS = (
    "1. Consent",
    "2. Store",
    "3. Acquire over gRPC, then over REST",
    "4. A cache hit",
    "5. Two users, one client, tokens kept apart",
    "6. Expiry and refresh-token rotation",
    "7. An authorization: consent URI, store, acquire, a cache hit",
    "8. An error: a user who never consented",
    "9. An agent: a LangGraph tool call that goes through consent",
)
# Prefixes of everything secret the emulator issues: third-party access and refresh tokens,
# authorization codes, end-user identity tokens.
SECRET_PREFIXES = ("emuat_", "emurt_", "emuac_", "aea1.", "aer1.")


def test_the_demo_walks_the_whole_flow() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSPACE_EMULATOR")}
    # A proxy that refuses everything: the demo stays on loopback and must not use it.
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    env.update(HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy, http_proxy=dead_proxy)
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    done = subprocess.run(
        [sys.executable, "-m", "agentspace_grpc.cli", "demo", "--agent"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    positions = [out.find(step) for step in STEPS]
    assert -1 not in positions, out
    assert positions == sorted(positions)
    for user in ("alice@example.com", "bob@example.com"):
        assert f"the provider says it is {user}" in out
    assert "carol@example.com: AuthorizationRequired" in out
    assert "user carol@example.com has not authorized data connector" in out
    assert "provider refreshes 0 -> 1" in out
    assert "HTTP 401: expired" in out
    unwrapped = re.sub(r"\n +", " ", out)  # step lines wrap at 100 columns
    assert "answers with an authorization URI" in unwrapped
    assert "opens it: /emulator/v1/consent -> /provider/authorize -> back to" in unwrapped
    assert "StoreUserAuthorization over gRPC: grants stored 2 -> 3" in unwrapped
    assert "stops with an authorization_required" in out
    assert re.search(
        r"ran\s+with\s+carol's\s+token\s+\[\w{8}\]:\s+the\s+provider\s+says\s+it\s+is\s+carol", out
    )
    for prefix in SECRET_PREFIXES:
        assert prefix not in out + done.stderr

    # Fingerprints tell the story: alice keeps one token until it expires, then gets another;
    # bob's differs from both.
    first = re.search(r"alice@example.com over gRPC: token \[(\w{8})\]", out)
    rest = re.search(r"alice@example.com over REST: token \[(\w{8})\]", out)
    rotated = re.search(r"alice@example.com acquires: new token \[(\w{8})\]", out)
    bobs = re.search(r"bob@example.com over the same gRPC client: token \[(\w{8})\]", out)
    authorized = re.search(r"AcquireUserAuthorization: token \[(\w{8})\]", out)
    cached = re.search(r"again over REST: token \[(\w{8})\], served from the cache", out)
    assert first, out
    assert rest, out
    assert rotated, out
    assert bobs, out
    assert authorized, out
    assert cached, out
    assert first[1] == rest[1]
    assert authorized[1] == cached[1]
    assert len({first[1], rotated[1], bobs[1], authorized[1]}) == 4


def test_the_demo_rejects_a_bad_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--access-token-lifetime", "0.5"])
    assert exited.value.code == 2
    assert "--access-token-lifetime" in capsys.readouterr().err
