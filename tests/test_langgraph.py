"""agentspace_grpc.langgraph: a real LangGraph graph, a scripted chat model, the emulator.

The graph is the usual tool loop (model node, ``ToolNode``, a checkpointer); the model calls
``whoami`` on the user's turn and then reports what the tools returned.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command

from agentspace_grpc import AuthorizationRequired, DataConnectorClient, TokenCache, UsageError
from agentspace_grpc.emulator import Emulator
from agentspace_grpc.langgraph import connector_tool
from tests._agents import ALICE, BOB, Probe, browse, probe_for
from tests._reliability import debug_logging, find_secrets
from tests.test_client_cache import count_rpcs


class ScriptedChatModel(BaseChatModel):
    """Calls ``whoami`` ``calls`` times on a user turn, then reports the tools' answers."""

    calls: int = 1

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        if isinstance(messages[-1], ToolMessage):
            answers = [m.content for m in messages if isinstance(m, ToolMessage)]
            message = AIMessage(content=json.dumps(answers))
        else:
            turn = len(messages)
            message = AIMessage(
                content="",
                tool_calls=[
                    {"name": "whoami", "args": {"detail": str(n)}, "id": f"call-{turn}-{n}"}
                    for n in range(self.calls)
                ],
            )
        return ChatResult(generations=[ChatGeneration(message=message)])


class Graph:
    """The tool loop around one tool, checkpointed in memory."""

    def __init__(self, tool: Any, calls: int = 1) -> None:
        model = ScriptedChatModel(calls=calls)

        async def agent(state: MessagesState) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        builder = StateGraph(MessagesState)
        builder.add_node("agent", agent)
        builder.add_node("tools", ToolNode([tool]))
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
        self.saver = InMemorySaver()
        self.graph = builder.compile(checkpointer=self.saver)

    @staticmethod
    def config(user: str, thread: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread, "user": user}}

    async def ask(self, user: str, thread: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.graph.ainvoke(
            {"messages": [HumanMessage("who?")]}, self.config(user, thread)
        )
        return result

    async def resume(self, user: str, thread: str, value: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.graph.ainvoke(
            Command(resume=value), self.config(user, thread)
        )
        return result

    async def dump(self, user: str, thread: str) -> list[str]:
        """Everything the checkpointer holds, raw and as read back."""
        texts = [repr(self.saver.storage), repr(self.saver.writes), repr(self.saver.blobs)]
        async for saved in self.saver.alist(self.config(user, thread)):
            texts.append(repr(saved))
        return texts


def interrupts(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(item.value) for item in result.get("__interrupt__", ())]


def tool_answers(result: dict[str, Any], since: int = 0) -> list[dict[str, Any]]:
    return [
        json.loads(str(m.content))
        for m in result["messages"][since:]
        if isinstance(m, ToolMessage) and m.status == "success"
    ]


@pytest.fixture
async def emu() -> AsyncGenerator[Emulator, None]:
    async with Emulator() as running:
        yield running


@pytest.fixture
async def client(emu: Emulator) -> AsyncGenerator[DataConnectorClient, None]:
    async with emu.client() as made:
        yield made


def make_tool(emu: Emulator, client: DataConnectorClient, probe: Probe, **kwargs: Any) -> Any:
    users = {email: emu.user_credentials(email) for email in (ALICE, BOB)}

    async def credentials(config: RunnableConfig) -> Any:  # an async lookup works too
        return users.get(config["configurable"]["user"])

    kwargs.setdefault("consent_uri", emu.consent_uri)
    kwargs.setdefault("credentials", credentials)
    kwargs.setdefault("resource", emu.connector)
    return connector_tool(probe.tool(), client=client, **kwargs)


async def consent_through_graph(graph: Graph, emu: Emulator, user: str, thread: str) -> Any:
    """Runs a turn that needs consent; follows the URL as the user; resumes."""
    result = await graph.ask(user, thread)
    [asked] = interrupts(result)
    assert asked["type"] == "authorization_required"
    assert asked["resource"] == emu.connector
    return await graph.resume(user, thread, await browse(asked["authorization_uri"]))


async def test_the_model_sees_the_functions_parameters_and_docstring_never_the_token(
    emu: Emulator, client: DataConnectorClient
) -> None:
    tool = make_tool(emu, client, probe_for(emu))
    assert tool.name == "whoami"
    assert tool.description == "Tells who the user is at the third party."
    assert list(tool.args) == ["detail"]
    assert "token" not in json.dumps(tool.tool_call_schema.model_json_schema()).lower()


async def _checked_only(detail: str, token: TypeCheckingOnly) -> str:  # type: ignore[name-defined]  # noqa: F821
    """Takes a token whose annotation exists for type checkers only."""
    return detail


async def test_the_token_annotation_may_exist_for_type_checkers_only(
    emu: Emulator, client: DataConnectorClient
) -> None:
    tool = connector_tool(
        _checked_only, client=client, resource=emu.connector, credentials=lambda config: "x"
    )
    assert list(tool.args) == ["detail"]


async def test_first_call_interrupts_then_the_resume_runs_with_the_users_token(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    graph = Graph(make_tool(emu, client, probe))
    with debug_logging() as logs:
        result = await graph.ask(ALICE, "t1")
        [asked] = interrupts(result)
        assert set(asked) == {"type", "resource", "authorization_uri"}
        assert asked["authorization_uri"].startswith(f"{emu.http_url}/")
        assert probe.tokens == []
        redirect = await browse(asked["authorization_uri"])
        result = await graph.resume(ALICE, "t1", redirect)
        assert interrupts(result) == []
        assert tool_answers(result) == [{"user": ALICE, "detail": "0"}]
        # The service remembers the consent: the next turn just runs.
        result = await graph.ask(ALICE, "t1")
        assert interrupts(result) == []
        assert len(tool_answers(result)) == 2
    assert probe.subjects == [ALICE, ALICE]
    assert (await emu.stats())["grants_stored"] == 1
    texts = [*await graph.dump(ALICE, "t1"), repr(result["messages"]), *logs.texts]
    assert find_secrets(texts, probe.tokens) == []


async def test_one_resume_serves_every_call_of_the_step(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    graph = Graph(make_tool(emu, client, probe), calls=3)
    result = await consent_through_graph(graph, emu, ALICE, "t1")
    assert interrupts(result) == []
    assert sorted(a["detail"] for a in tool_answers(result)) == ["0", "1", "2"]
    assert probe.subjects == [ALICE] * 3
    assert (await emu.stats())["grants_stored"] == 1


async def test_two_users_in_two_threads_each_get_their_own_token(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    graph = Graph(make_tool(emu, client, probe))
    threads = {ALICE: "thread-a", BOB: "thread-b"}
    for user in (ALICE, BOB):
        result = await consent_through_graph(graph, emu, user, threads[user])
        assert tool_answers(result) == [{"user": user, "detail": "0"}]
    assert probe.subjects == [ALICE, BOB]
    assert probe.tokens[0] != probe.tokens[1]
    for user in (ALICE, BOB):
        assert find_secrets(await graph.dump(user, threads[user]), probe.tokens) == []


async def test_an_authorization_interrupts_with_the_services_own_url(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    tool = make_tool(emu, client, probe, resource=emu.authorization, consent_uri=None)
    graph = Graph(tool)
    result = await graph.ask(ALICE, "t")
    [asked] = interrupts(result)
    assert asked["resource"] == emu.authorization
    result = await graph.resume(ALICE, "t", await browse(asked["authorization_uri"]))
    assert tool_answers(result) == [{"user": ALICE, "detail": "0"}]
    assert probe.subjects == [ALICE]


REVOKING = {"provider": {"faults": {"invalid_grant_rate": 1.0, "grants": ["refresh_token"]}}}


async def test_a_revoked_grant_interrupts_for_consent_again() -> None:
    async with Emulator(config=REVOKING) as emu, emu.client() as client:
        alice = emu.user_credentials(ALICE)
        await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
        with pytest.raises(Exception, match="REFRESH_TOKEN_REVOKED"):
            await client.acquire_access_token(emu.connector, scope="read", credentials=alice)
        probe = probe_for(emu)
        result = await consent_through_graph(Graph(make_tool(emu, client, probe)), emu, ALICE, "t")
        assert tool_answers(result) == [{"user": ALICE, "detail": "0"}]
        assert (await emu.stats())["grants_stored"] == 2


async def test_a_rejected_token_is_acquired_once_more_then_consent_is_asked(
    emu: Emulator, client: DataConnectorClient
) -> None:
    alice = emu.user_credentials(ALICE)
    await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
    probe = probe_for(emu, reject=1)
    graph = Graph(make_tool(emu, client, probe))
    result = await graph.ask(ALICE, "t")
    assert interrupts(result) == []
    assert tool_answers(result) == [{"user": ALICE, "detail": "0"}]
    assert len(probe.tokens) == 2
    probe.reject = 2
    result = await graph.ask(ALICE, "t")
    [asked] = interrupts(result)
    assert len(probe.tokens) == 4
    # The resumed tool runs from its start; the third party now takes the token.
    result = await graph.resume(ALICE, "t", await browse(asked["authorization_uri"]))
    assert interrupts(result) == []
    assert len(probe.tokens) == 5
    assert probe.subjects == [ALICE, ALICE]


async def test_a_warm_cache_answers_without_an_rpc_and_a_rejected_token_leaves_it(
    emu: Emulator,
) -> None:
    alice = emu.user_credentials(ALICE)
    async with emu.client(token_cache=TokenCache()) as client:
        await client.store_refresh_token(emu.connector, await emu.consent(ALICE), credentials=alice)
        probe = probe_for(emu)
        graph = Graph(make_tool(emu, client, probe))
        served = count_rpcs(emu)
        for turn in range(3):
            result = await graph.ask(ALICE, "t")
            assert len(tool_answers(result)) == turn + 1
        assert served["AcquireAccessToken"] == 1
        probe.reject = 1
        assert interrupts(await graph.ask(ALICE, "t")) == []
        assert served["AcquireAccessToken"] == 2
        assert probe.subjects == [ALICE] * 4


async def test_without_a_consent_url_the_service_error_stands(
    emu: Emulator, client: DataConnectorClient
) -> None:
    graph = Graph(make_tool(emu, client, probe_for(emu), consent_uri=None))
    with pytest.raises(AuthorizationRequired):
        await graph.ask(ALICE, "t")


async def test_credentials_that_name_no_user_are_refused(
    emu: Emulator, client: DataConnectorClient
) -> None:
    probe = probe_for(emu)
    graph = Graph(make_tool(emu, client, probe))
    with pytest.raises(UsageError, match="returned None"):
        await graph.ask("mallory@example.com", "t")
    assert probe.tokens == []


async def test_a_resume_that_is_not_a_redirect_uri_is_refused(
    emu: Emulator, client: DataConnectorClient
) -> None:
    graph = Graph(make_tool(emu, client, probe_for(emu)))
    assert interrupts(await graph.ask(ALICE, "t"))
    with pytest.raises(UsageError, match="full redirect URI"):
        await graph.resume(ALICE, "t", {"code": "x"})
