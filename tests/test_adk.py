"""agentspace_grpc.adk: a real ADK runner, a scripted model, the in-process emulator.

The model is a ``BaseLlm`` that calls the tool and then reports the tool's answer; everything
else is ADK's own flow: the credential request, the application's answer, the tool's re-run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.artifacts import InMemoryArtifactService
from google.adk.events import Event
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentspace_grpc import AuthorizationRequired, DataConnectorClient, TokenCache, UsageError
from agentspace_grpc.adk import connector_tool
from agentspace_grpc.emulator import Emulator
from tests._agents import ALICE, BOB, Probe, browse, probe_for
from tests._reliability import debug_logging, find_secrets
from tests.test_client_cache import count_rpcs

APP = "agents-test"
REQUEST = "adk_request_credential"


NO_USAGE = types.GenerateContentResponseUsageMetadata(prompt_token_count=0, total_token_count=0)


class ScriptedModel(BaseLlm):
    """Calls ``whoami`` once per user turn, then answers with what the tool returned."""

    model: str = "scripted"
    calls: int = 1

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        parts = llm_request.contents[-1].parts or []
        answers = [p.function_response.response for p in parts if p.function_response]
        if answers:
            text = json.dumps(answers, sort_keys=True)
            yield LlmResponse(
                content=types.Content(role="model", parts=[types.Part(text=text)]),
                usage_metadata=NO_USAGE,
            )
            return
        calls = [
            types.Part(function_call=types.FunctionCall(name="whoami", args={"detail": str(n)}))
            for n in range(self.calls)
        ]
        yield LlmResponse(content=types.Content(role="model", parts=calls), usage_metadata=NO_USAGE)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """ADK's OpenTelemetry spans, kept in memory while this module runs.

    The global provider stays set for the rest of the session (it cannot be unset), so every
    later client traces through it: the exporter stops keeping spans when the module ends.
    """
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()
    exporter.clear()


class Agent:
    """One ADK app: a runner with in-memory sessions and artifacts around one tool."""

    def __init__(self, tool: Any, calls: int = 1) -> None:
        self.sessions = InMemorySessionService()
        self.artifacts = InMemoryArtifactService()
        agent = LlmAgent(name="assistant", model=ScriptedModel(calls=calls), tools=[tool])
        self.runner = Runner(
            agent=agent,
            app_name=APP,
            session_service=self.sessions,
            artifact_service=self.artifacts,
        )

    async def session(self, user: str) -> str:
        return (await self.sessions.create_session(app_name=APP, user_id=user)).id

    async def send(self, user: str, session: str, message: types.Content) -> list[Event]:
        return [
            event
            async for event in self.runner.run_async(
                user_id=user, session_id=session, new_message=message
            )
        ]

    async def ask(self, user: str, session: str) -> list[Event]:
        return await self.send(user, session, types.Content(role="user", parts=[text("who?")]))

    async def dump(self, user: str, session: str) -> list[str]:
        """Everything ADK kept: the session (events and state) and the artifacts."""
        stored = await self.sessions.get_session(app_name=APP, user_id=user, session_id=session)
        assert stored is not None
        keys = await self.artifacts.list_artifact_keys(
            app_name=APP, user_id=user, session_id=session
        )
        return [stored.model_dump_json(), repr(stored.state), *keys]


def text(value: str) -> types.Part:
    return types.Part(text=value)


def credential_requests(events: list[Event]) -> list[types.FunctionCall]:
    return [call for event in events for call in event.get_function_calls() if call.name == REQUEST]


def tool_answers(events: list[Event]) -> list[dict[str, Any]]:
    return [
        dict(response.response or {})
        for event in events
        for response in event.get_function_responses()
        if response.name == "whoami"
    ]


def consent_url(request: types.FunctionCall) -> str:
    assert request.args is not None
    config = request.args["authConfig"]
    url: str = config["exchangedAuthCredential"]["oauth2"]["authUri"]
    return url


def answer(request: types.FunctionCall, redirect: str) -> types.Content:
    """What the application sends back: the request's auth config with the redirect URI."""
    assert request.args is not None
    config = copy.deepcopy(request.args["authConfig"])
    config["exchangedAuthCredential"]["oauth2"]["authResponseUri"] = redirect
    response = types.FunctionResponse(name=REQUEST, id=request.id, response=config)
    return types.Content(role="user", parts=[types.Part(function_response=response)])


@pytest.fixture
async def emu() -> AsyncGenerator[Emulator, None]:
    async with Emulator() as running:
        yield running


@pytest.fixture
async def client(emu: Emulator) -> AsyncGenerator[DataConnectorClient, None]:
    async with emu.client() as made:
        yield made


def users_of(emu: Emulator) -> dict[str, Any]:
    return {email: emu.user_credentials(email) for email in (ALICE, BOB)}


def make_tool(emu: Emulator, client: DataConnectorClient, probe: Probe, **kwargs: Any) -> Any:
    users = users_of(emu)
    kwargs.setdefault("consent_uri", emu.consent_uri)
    return connector_tool(
        probe.tool(),
        client=client,
        resource=emu.connector,
        credentials=lambda context: users[context.user_id],
        **kwargs,
    )


async def consent_through_adk(agent: Agent, emu: Emulator, user: str, session: str) -> list[Event]:
    """Runs a turn that needs consent; follows the URL as the user; resumes."""
    events = await agent.ask(user, session)
    [request] = credential_requests(events)
    assert tool_answers(events) == [{"status": "authorization_pending", "resource": emu.connector}]
    redirect = await browse(consent_url(request))
    return await agent.send(user, session, answer(request, redirect))


async def test_the_model_sees_the_functions_parameters_and_docstring_never_the_token(
    emu: Emulator, client: DataConnectorClient
) -> None:
    declaration = make_tool(emu, client, probe_for(emu))._get_declaration()
    assert declaration.name == "whoami"
    assert declaration.description == "Tells who the user is at the third party."
    schema = json.dumps(declaration.model_dump(mode="json", exclude_none=True))
    assert "detail" in schema
    assert "token" not in schema.lower()


async def test_first_call_asks_for_consent_then_runs_with_the_users_token(
    emu: Emulator,
    client: DataConnectorClient,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_AND_EVENT")
    probe = probe_for(emu)
    agent = Agent(make_tool(emu, client, probe))
    session = await agent.session(ALICE)
    spans.clear()
    with debug_logging() as logs:
        events = await agent.ask(ALICE, session)
        [request] = credential_requests(events)
        assert request.args is not None
        config = request.args["authConfig"]
        url = consent_url(request)
        assert url.startswith(f"{emu.http_url}/")
        assert config["authScheme"]["flows"]["authorizationCode"]["authorizationUrl"] == url
        assert config["rawAuthCredential"]["oauth2"]["authUri"] == url
        assert "clientId" not in config["rawAuthCredential"]["oauth2"]
        assert config["credentialKey"] == f"agentspace:{emu.connector}::"
        assert probe.tokens == []
        redirect = await browse(url)
        events = await agent.send(ALICE, session, answer(request, redirect))
        assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
        # Consent is remembered by the service, not by ADK: the next turn just runs.
        events = await agent.ask(ALICE, session)
        assert credential_requests(events) == []
        assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
    assert probe.subjects == [ALICE, ALICE]
    assert (await emu.stats())["grants_stored"] == 1
    traces = [span.to_json() for span in spans.get_finished_spans()]
    # The traces hold the tool calls with their arguments and answers.
    assert any("gen_ai.tool.call.arguments" in t and ALICE in t for t in traces)
    texts = [*await agent.dump(ALICE, session), *logs.texts, *traces]
    assert find_secrets(texts, probe.tokens) == []


async def test_two_users_in_two_sessions_each_get_their_own_token(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    agent = Agent(make_tool(emu, client, probe))
    sessions = {user: await agent.session(user) for user in (ALICE, BOB)}
    for user in (ALICE, BOB):
        events = await consent_through_adk(agent, emu, user, sessions[user])
        assert tool_answers(events) == [{"user": user, "detail": "0"}]
    for user in (BOB, ALICE):
        assert tool_answers(await agent.ask(user, sessions[user])) == [
            {"user": user, "detail": "0"}
        ]
    assert probe.subjects == [ALICE, BOB, BOB, ALICE]
    alice_tokens, bob_tokens = set(probe.tokens[0::3]), set(probe.tokens[1:3])
    assert alice_tokens.isdisjoint(bob_tokens)
    for user in (ALICE, BOB):
        assert find_secrets(await agent.dump(user, sessions[user]), probe.tokens) == []


async def test_calls_of_one_step_share_one_consent_and_one_store(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    agent = Agent(make_tool(emu, client, probe), calls=3)
    session = await agent.session(ALICE)
    events = await agent.ask(ALICE, session)
    [request] = credential_requests(events)  # ADK asks once per credential key
    redirect = await browse(consent_url(request))
    events = await agent.send(ALICE, session, answer(request, redirect))
    assert sorted(a["detail"] for a in tool_answers(events)) == ["0", "1", "2"]
    assert probe.subjects == [ALICE] * 3
    assert (await emu.stats())["grants_stored"] == 1


async def test_an_authorization_asks_with_the_services_own_url_and_stores_there(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    users = users_of(emu)
    tool = connector_tool(
        probe.tool(),
        client=client,
        resource=emu.authorization,
        credentials=lambda context: users[context.user_id],
    )
    agent = Agent(tool)
    session = await agent.session(ALICE)
    events = await agent.ask(ALICE, session)
    [request] = credential_requests(events)
    assert request.args is not None
    assert request.args["authConfig"]["credentialKey"] == f"agentspace:{emu.authorization}::"
    redirect = await browse(consent_url(request))
    events = await agent.send(ALICE, session, answer(request, redirect))
    assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
    assert (await emu.stats())["grants_stored"] == 1


REVOKING = {"provider": {"faults": {"invalid_grant_rate": 1.0, "grants": ["refresh_token"]}}}


async def test_a_revoked_grant_asks_for_consent_again() -> None:
    async with Emulator(config=REVOKING) as emu, emu.client() as client:
        alice = emu.user_credentials(ALICE)
        await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
        # The next refresh meets invalid_grant: the third party revoked the grant.
        with pytest.raises(Exception, match="REFRESH_TOKEN_REVOKED"):
            await client.acquire_access_token(emu.connector, scope="read", credentials=alice)
        probe = probe_for(emu)
        agent = Agent(make_tool(emu, client, probe))
        events = await consent_through_adk(agent, emu, ALICE, await agent.session(ALICE))
        assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
        assert (await emu.stats())["grants_stored"] == 2


async def test_a_rejected_token_is_acquired_once_more(
    emu: Emulator, client: DataConnectorClient
) -> None:
    alice = emu.user_credentials(ALICE)
    await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
    probe = probe_for(emu, reject=1)
    agent = Agent(make_tool(emu, client, probe))
    events = await agent.ask(ALICE, await agent.session(ALICE))
    assert credential_requests(events) == []
    assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
    assert len(probe.tokens) == 2


async def test_a_warm_cache_answers_without_an_rpc_and_a_rejected_token_leaves_it(
    emu: Emulator,
) -> None:
    alice = emu.user_credentials(ALICE)
    async with emu.client(token_cache=TokenCache()) as client:
        await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
        probe = probe_for(emu)
        agent = Agent(make_tool(emu, client, probe))
        session = await agent.session(ALICE)
        served = count_rpcs(emu)
        for _ in range(3):
            assert tool_answers(await agent.ask(ALICE, session)) == [{"user": ALICE, "detail": "0"}]
        assert served["AcquireAccessToken"] == 1
        # The third party refuses the cached token once: it is dropped and acquired again.
        probe.reject = 1
        assert tool_answers(await agent.ask(ALICE, session)) == [{"user": ALICE, "detail": "0"}]
        assert served["AcquireAccessToken"] == 2


async def test_a_token_rejected_twice_asks_for_consent_and_never_loops(
    emu: Emulator, client: DataConnectorClient
) -> None:
    alice = emu.user_credentials(ALICE)
    await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
    probe = probe_for(emu, reject=6)
    agent = Agent(make_tool(emu, client, probe))
    session = await agent.session(ALICE)
    events = await agent.ask(ALICE, session)
    [request] = credential_requests(events)
    assert len(probe.tokens) == 2
    # The user consents, and the third party still refuses: ADK does not ask again from a
    # resumed call, so the model hears "pending"; nothing loops.
    redirect = await browse(consent_url(request))
    events = await agent.send(ALICE, session, answer(request, redirect))
    assert credential_requests(events) == []
    assert tool_answers(events) == [{"status": "authorization_pending", "resource": emu.connector}]
    assert len(probe.tokens) == 4
    # The next call asks again; this time the third party takes the token.
    events = await consent_through_adk(agent, emu, ALICE, session)
    assert tool_answers(events) == [{"user": ALICE, "detail": "0"}]
    assert len(probe.tokens) == 7
    assert probe.subjects == [ALICE]


async def test_without_a_consent_url_the_service_error_stands(
    emu: Emulator, client: DataConnectorClient
) -> None:
    agent = Agent(make_tool(emu, client, probe_for(emu), consent_uri=None))
    with pytest.raises(AuthorizationRequired):
        await agent.ask(ALICE, await agent.session(ALICE))


async def test_credentials_that_name_no_user_are_refused(
    emu: Emulator, client: DataConnectorClient
) -> None:
    """None would make the client call as its own default identity, not as the user."""
    probe = probe_for(emu)
    tool = connector_tool(
        probe.tool(), client=client, resource=emu.connector, credentials=lambda context: None
    )
    agent = Agent(tool)
    with pytest.raises(UsageError, match="returned None"):
        await agent.ask(ALICE, await agent.session(ALICE))
    assert probe.tokens == []


def _sync(detail: str, token: Any) -> str:
    """Not async."""
    return detail


async def _tokenless(detail: str) -> str:
    """No token parameter."""
    return detail


@pytest.mark.parametrize(
    ("func", "kwargs", "message"),
    [
        (_sync, {}, "must be an async function"),
        (_tokenless, {}, "keyword argument `token`"),
        (None, {"resource": "projects/p/locations/l/authorizations/a", "scope": "x"}, "no scope"),
        (None, {"credentials": "alice"}, "credentials must be a callable"),
        (None, {"consent_uri": "https://example.com"}, "consent_uri must be"),
        (None, {"client": object()}, "client must be a DataConnectorClient"),
    ],
)
async def test_bad_arguments_are_refused_before_any_call(
    emu: Emulator, client: DataConnectorClient, func: Any, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "client": client,
        "resource": emu.connector,
        "credentials": lambda context: None,
    }
    with pytest.raises(UsageError, match=message):
        connector_tool(func or probe_for(emu).tool(), **(arguments | kwargs))
