"""``agentspace-grpc emulator`` as real processes: the ready line, signals, several processes
on one data directory, the crash point, logs (docs/failure-modes.md 15, 17, 22), and the
pytest plugin."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import (
    AUTHORIZATION,
    CONNECTOR,
    CanaryProvider,
    channel_to,
    connect_user,
    grpc_acquire,
    grpc_fail,
    mint,
    provider_stats,
    rest,
    start_process,
    userinfo,
)

ALICE = "alice@example.com"
CANARY = "projects/canary/locations/global/collections/c/dataConnector"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_ready_line_then_exit_0_on_signal(tmp_path: Path, signum: int) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    emu = await start_process(None, env={"TMPDIR": str(scratch)}, log_dir=tmp_path)
    keys = {"grpc", "http", "token_uri", "authorize_uri", "connector", "authorization"}
    assert set(emu.ready) == keys
    assert emu.ready["grpc"].startswith("127.0.0.1:")
    assert emu.ready["http"].startswith("http://127.0.0.1:")
    assert emu.ready["token_uri"] == emu.ready["http"] + "/oauth2/token"
    assert emu.ready["authorize_uri"] == emu.ready["http"] + "/provider/authorize"
    assert emu.ready["connector"] == CONNECTOR
    assert emu.ready["authorization"] == AUTHORIZATION
    assert any(scratch.iterdir())  # the temporary data directory
    token = await connect_user(emu.http, ALICE)
    async with channel_to(emu.grpc) as stub:
        answer = await grpc_acquire(stub, token)
    assert (await userinfo(emu.http, answer.access_token))[1]["sub"] == ALICE
    assert await emu.stop(signum) == 0
    assert emu.process.stdout is not None
    assert await emu.process.stdout.read() == b""  # exactly one line on stdout
    assert "emulator ready" in emu.stderr()
    assert not any(scratch.iterdir())  # removed at exit


def test_a_bad_config_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "emulator.toml"
    config.write_text("[provider]\naccess_token_lifetym = 5\n")
    done = subprocess.run(
        [sys.executable, "-m", "agentspace_grpc.cli", "emulator", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "provider.access_token_lifetym" in done.stderr


async def test_pitfall_15_two_processes_1000_acquires_one_refresh(tmp_path: Path) -> None:
    """1000 concurrent acquires for one user with an expired access token, spread over two
    emulator processes on one data directory: one upstream refresh, zero invalid_grant."""
    data = tmp_path / "data"
    async with Emulator(data_dir=data, config={"provider": {"access_token_lifetime": 1}}) as emu:
        redirect = await emu.consent(ALICE)
        async with emu.client(transport="grpc", credentials=emu.user_credentials(ALICE)) as c:
            await c.store_refresh_token(CONNECTOR, redirect)
    await asyncio.sleep(1.05)  # the cached access token expires
    first, second = await asyncio.gather(
        start_process(data, log_dir=tmp_path), start_process(data, log_dir=tmp_path)
    )
    try:
        token = await mint(first.http, ALICE)
        async with channel_to(first.grpc) as one, channel_to(second.grpc) as two:
            calls = [grpc_acquire(one if i % 2 else two, token) for i in range(1000)]
            answers = await asyncio.gather(*calls)
        assert len({a.access_token for a in answers}) == 1
        counts = await provider_stats(second.http)
        assert counts["refresh_requests"] == 1
        assert counts["refreshes"] == 1
        assert counts["invalid_grant"] == 0
        assert counts["families_revoked"] == 0
        assert (await userinfo(first.http, answers[0].access_token))[1]["sub"] == ALICE
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0


@pytest.mark.parametrize("grace", [60, 0])
async def test_pitfall_17_crash_between_upstream_rotation_and_commit(
    tmp_path: Path, grace: int
) -> None:
    """SIGKILL after the provider rotated the refresh token and before the store committed
    it; restarted within the grace window, the user still acquires and nothing is revoked
    (without a grace window the provider sees reuse: the grant is reported revoked)."""
    data = tmp_path / "data"
    flags = ("--access-token-lifetime", "1", "--grace-seconds", str(grace))
    crashing = await start_process(
        data,
        *flags,
        env={"AGENTSPACE_EMULATOR_CRASH_AT": "after-upstream-refresh"},
        log_dir=tmp_path,
    )
    token = await connect_user(crashing.http, ALICE)
    await asyncio.sleep(1.05)  # the access token from the consent expires
    async with channel_to(crashing.grpc) as stub:
        failure = await grpc_fail(grpc_acquire(stub, token))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.wait_for(crashing.process.wait(), 20) == -signal.SIGKILL
    restarted = await start_process(data, *flags, log_dir=tmp_path)
    try:
        async with channel_to(restarted.grpc) as stub:
            if grace:
                answer = await grpc_acquire(stub, token)
                assert (await userinfo(restarted.http, answer.access_token))[1]["sub"] == ALICE
            else:
                failure = await grpc_fail(grpc_acquire(stub, token))
                assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
                info = failure.error_info()
                assert info is not None
                assert info.reason == "REFRESH_TOKEN_REVOKED"
        counts = await provider_stats(restarted.http)
        assert counts["refreshes"] == (2 if grace else 1)
        assert counts["grace_accepts"] == (1 if grace else 0)
        assert counts["families_revoked"] == (0 if grace else 1)
    finally:
        assert await restarted.stop() == 0


async def test_pitfall_22_no_secret_in_the_debug_log(tmp_path: Path) -> None:
    canary = CanaryProvider(expires_in=0)
    async with canary.serve():
        config = tmp_path / "emulator.toml"
        connector = canary.connector_config(CANARY)
        lines = [f"{key} = {json.dumps(value)}" for key, value in connector.items()]
        config.write_text("[[connectors]]\n" + "\n".join(lines) + "\n")
        emu = await start_process(
            tmp_path / "data", "--config", str(config), "--log-level", "DEBUG", log_dir=tmp_path
        )
        try:
            token = await connect_user(emu.http, ALICE, CANARY)
            async with channel_to(emu.grpc) as stub:
                seen = [(await grpc_acquire(stub, token, name=CANARY)).access_token]
                await grpc_fail(grpc_acquire(stub, token + "x", name=CANARY))
            path = f"/v1alpha/{CANARY}:acquireAccessToken"
            status, _ = await rest(emu.http, "POST", path, token, {"bogus": token})
            assert status == 400
        finally:
            assert await emu.stop() == 0
        log = emu.stderr()
    assert "stored a refresh token" in log  # the log is there ...
    for value in (*canary.issued_refresh, *canary.issued_access, *seen, canary.client_secret):
        assert value not in log  # ... without secrets
    assert token not in log
    assert "CANARY-" not in log


EXTRA_ONLY = ("grpc_status", "grpc_health", "grpc_reflection")  # cryptography: google-auth


def test_the_pytest_plugin_imports_nothing_heavy() -> None:
    probe = (
        "import sys, agentspace_grpc; before = set(sys.modules); "
        "import agentspace_grpc.pytest_plugin; "
        "print(sorted(set(sys.modules) - before))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    added = json.loads(done.stdout.replace("'", '"'))
    assert not [m for m in added if m.split(".")[0] in EXTRA_ONLY or "emulator" in m], added


def _run_pytest(
    directory: Path, *, block_extra: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    blocker = "".join(f"sys.modules[{name!r}] = None; " for name in EXTRA_ONLY)
    script = (
        f"import sys; {blocker if block_extra else ''}import pytest; "
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-o', 'asyncio_mode=auto', "
        "'-o', 'asyncio_default_fixture_loop_scope=function', '-W', 'error', '.']))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=directory,
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTSPACE_EMULATOR")}
        | (env or {}),
    )


def test_the_pytest_plugin_gives_working_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_user_code.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def agentspace_emulator_config():
                return {"provider": {"access_token_lifetime": 120}}

            def test_sync_use(agentspace_emulator):
                assert agentspace_emulator.grpc_target.startswith("127.0.0.1:")
                assert agentspace_emulator.user_token("a@example.com")

            async def test_client_fixture(agentspace_emulator, agentspace_client, agentspace_user):
                redirect = await agentspace_emulator.consent(agentspace_user)
                await agentspace_client.store_refresh_token(agentspace_emulator.connector, redirect)
                token = await agentspace_client.acquire_access_token(agentspace_emulator.connector)
                assert token.access_token

            OLD = ["emulator", "emulator_config", "emulator_user", "client"]

            @pytest.mark.parametrize("old", OLD)
            def test_the_old_names_are_gone(request, old):
                with pytest.raises(pytest.FixtureLookupError):
                    request.getfixturevalue(old)
            """
        )
    )
    done = _run_pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


async def test_with_the_emulator_variables_the_fixtures_use_that_emulator(tmp_path: Path) -> None:
    (tmp_path / "test_user_code.py").write_text(
        textwrap.dedent(
            """
            import os

            import pytest

            USERS = []

            @pytest.mark.parametrize("run", [1, 2])
            async def test_each_test_has_its_own_user(
                agentspace_emulator, agentspace_client, agentspace_user, run
            ):
                assert agentspace_emulator.grpc_target == os.environ["AGENTSPACE_EMULATOR_HOST"]
                assert agentspace_emulator.http_url == os.environ["AGENTSPACE_EMULATOR_REST"]
                USERS.append(agentspace_user)
                assert len(set(USERS)) == run  # a new user: nothing stored for them yet
                with pytest.raises(Exception, match="has not authorized"):
                    await agentspace_client.acquire_access_token(agentspace_emulator.connector)
                redirect = await agentspace_emulator.consent(agentspace_user)
                await agentspace_client.store_refresh_token(agentspace_emulator.connector, redirect)
                token = await agentspace_client.acquire_access_token(agentspace_emulator.connector)
                assert token.access_token
            """
        )
    )
    emu = await start_process(None, log_dir=tmp_path)
    try:
        before = await provider_stats(emu.http)
        env = {"AGENTSPACE_EMULATOR_HOST": emu.grpc, "AGENTSPACE_EMULATOR_REST": emu.http}
        done = await asyncio.to_thread(_run_pytest, tmp_path, block_extra=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 passed" in done.stdout
        after = await provider_stats(emu.http)
        assert after["code_exchanges"] == before["code_exchanges"] + 2  # both ran on it
    finally:
        assert await emu.stop() == 0


def test_without_the_emulator_extra_only_emulator_tests_fail(tmp_path: Path) -> None:
    (tmp_path / "test_user_code.py").write_text(
        textwrap.dedent(
            """
            def test_plain():
                assert True

            def test_wants_the_emulator(agentspace_emulator):
                pass
            """
        )
    )
    done = _run_pytest(tmp_path, block_extra=True)
    assert "1 passed, 1 error" in done.stdout, done.stdout + done.stderr
    assert "agentspace-grpc[emulator]" in done.stdout
