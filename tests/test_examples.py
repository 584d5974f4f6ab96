"""The examples in ``examples/``, served on real sockets against the emulator.

Each example runs as it would in production: its own DataConnectorClient built from the
emulator variables, callers sending their own end-user token, and a real downstream call to the
emulator's built-in provider, whose userinfo says whose third-party token the example used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import empty_pb2, json_format

from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import connect_user

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"  # never consents


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    module_name = f"agentspace_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def emulator_env(agentspace_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The emulator, with the variables that point every client at it set."""
    monkeypatch.setenv("AGENTSPACE_EMULATOR_HOST", agentspace_emulator.grpc_target)
    monkeypatch.setenv("AGENTSPACE_EMULATOR_REST", agentspace_emulator.http_url)
    return agentspace_emulator


@pytest.fixture
async def users(emulator_env: Emulator) -> dict[str, str]:
    """End-user bearer tokens: alice and bob have connected their accounts, carol has not."""
    http = emulator_env.http_url
    tokens = {user: await connect_user(http, user) for user in (ALICE, BOB)}
    tokens[CAROL] = emulator_env.user_token(CAROL)
    return tokens


# ---- the aiohttp web service ---------------------------------------------------------------


@pytest.fixture
async def web_service(emulator_env: Emulator) -> AsyncIterator[str]:
    example = load_example("aiohttp_service")
    settings = example.Settings(
        connector=emulator_env.connector,
        downstream_url=f"{emulator_env.http_url}/provider/userinfo",
    )
    runner = web.AppRunner(example.create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def get_profile(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/profile", headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_web_service_calls_downstream_as_each_caller(
    web_service: str, users: dict[str, str], emulator_env: Emulator
) -> None:
    callers = [ALICE, BOB] * 10
    answers = await asyncio.gather(*(get_profile(web_service, users[u]) for u in callers))
    for user, (status, body) in zip(callers, answers, strict=True):
        assert status == 200, body
        assert body["downstream"]["email"] == user
        assert body["connector"] == emulator_env.connector
        assert body["scopes"] == ["read", "write"]
    assert "emuat_" not in repr(answers)  # the third-party token is used, never returned


async def test_web_service_says_when_the_caller_must_connect_first(
    web_service: str, users: dict[str, str]
) -> None:
    status, body = await get_profile(web_service, users[CAROL])
    assert status == 403
    assert body["error"] == "authorization_required"
    assert CAROL in body["message"]


@pytest.mark.parametrize("token", [None, "not-a-token-from-the-emulator"])
async def test_web_service_rejects_missing_or_foreign_credentials(
    web_service: str, users: dict[str, str], token: str | None
) -> None:
    status, body = await get_profile(web_service, token)
    assert status == 401
    assert body["error"] in ("unauthenticated", "invalid_credentials")


# ---- the grpc.aio microservice -------------------------------------------------------------


@pytest.fixture
async def grpc_service(emulator_env: Emulator) -> AsyncIterator[Any]:
    example = load_example("grpc_service")
    async with example.DataConnectorClient() as client, aiohttp.ClientSession() as session:
        servicer = example.ProfileServicer(
            client,
            session,
            connector=emulator_env.connector,
            downstream_url=f"{emulator_env.http_url}/provider/userinfo",
        )
        server, port = await example.serve(servicer, "127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield example.profile_method(channel)
        finally:
            await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_grpc_service_calls_downstream_as_each_caller(
    grpc_service: Any, users: dict[str, str], emulator_env: Emulator
) -> None:
    callers = [ALICE, BOB] * 10
    answers = await asyncio.gather(
        *(grpc_service(empty_pb2.Empty(), metadata=bearer(users[u]), timeout=30) for u in callers)
    )
    for user, answer in zip(callers, answers, strict=True):
        body = json_format.MessageToDict(answer)
        assert body["downstream"]["email"] == user
        assert body["connector"] == emulator_env.connector
        assert body["scopes"] == ["read", "write"]


async def test_grpc_service_says_when_the_caller_must_connect_first(
    grpc_service: Any, users: dict[str, str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_service(empty_pb2.Empty(), metadata=bearer(users[CAROL]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert CAROL in (caught.value.details() or "")


@pytest.mark.parametrize("token", [None, "not-a-token-from-the-emulator"])
async def test_grpc_service_rejects_missing_or_foreign_credentials(
    grpc_service: Any, users: dict[str, str], token: str | None
) -> None:
    metadata = bearer(token) if token is not None else ()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_service(empty_pb2.Empty(), metadata=metadata, timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- the agents --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"), [("adk_agent", "ScriptedModel"), ("langgraph_agent", "ScriptedChatModel")]
)
async def test_agent_goes_through_consent_then_calls_as_each_user(
    emulator_env: Emulator, name: str, model: str
) -> None:
    example = load_example(name)
    async with example.DataConnectorClient() as client:
        for user in (ALICE, BOB):
            replies = await example.run(
                client,
                emulator_env.http_url,
                user,
                getattr(example, model)(),
                emulator_env.connector,
            )
            assert len(replies) == 2
            for reply in replies:
                assert "'status': 200" in reply or '"status": 200' in reply
                assert f"'sub': '{user}'" in reply or f'"sub": "{user}"' in reply
    assert (await emulator_env.stats())["grants_stored"] == 2  # one consent per user


@pytest.mark.parametrize("name", ["adk_agent", "langgraph_agent"])
async def test_agent_example_runs_as_a_script(emulator_env: Emulator, name: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / f"{name}.py"),
        "--user",
        CAROL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 2
    assert all(CAROL in line for line in lines)
