"""A LangGraph agent whose tool calls a third-party API as the end user, consent included.

The tool ``whoami`` is an ordinary async function that takes ``token: AccessToken``;
``agentspace_grpc.langgraph.connector_tool`` gives it the end user's token on every call. The
first time, the user has not connected the third party: the graph stops with an interrupt
``{"type": "authorization_required", "resource": ..., "authorization_uri": ...}``, the user
opens the URI, and the application resumes with ``Command(resume=<full redirect URI>)``.

Run it (needs ``pip install 'agentspace-grpc[langgraph,emulator]'``)::

    python examples/langgraph_agent.py                 # scripted model, in-process emulator
    python examples/langgraph_agent.py --model google_genai:gemini-2.5-flash   # a real model
                                                       # (needs `pip install langchain` and
                                                       # the provider's package and key)

With AGENTSPACE_EMULATOR_HOST / AGENTSPACE_EMULATOR_REST set it uses that running emulator.
Against the emulator, "the user's browser" is this script following the consent URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command

from agentspace_grpc import AccessToken, DataConnectorClient
from agentspace_grpc.langgraph import connector_tool

REDIRECT_URI = "https://vertexaisearch.cloud.google.com/oauth-redirect"
DEFAULT_CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"


class ScriptedChatModel(BaseChatModel):
    """Stands in for an LLM: calls ``whoami``, then says what it answered."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"The third party says: {last.content}")
        else:
            call = {"name": "whoami", "args": {}, "id": f"call-{len(messages)}"}
            reply = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_graph(
    client: DataConnectorClient,
    *,
    connector: str,
    userinfo_url: str,
    credentials: Callable[[RunnableConfig], Any],
    consent_uri: Callable[[str, Any], Awaitable[str]],
    model: BaseChatModel,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The agent: model, tools, and a checkpointer (interrupts need one)."""

    async def whoami(token: AccessToken) -> dict[str, Any]:
        """Tells who the user is at the third party."""
        headers = {"Authorization": f"Bearer {token.access_token}"}
        async with aiohttp.ClientSession() as http, http.get(userinfo_url, headers=headers) as r:
            return {"status": r.status, "profile": await r.json()}

    tool = connector_tool(
        whoami,
        client=client,
        resource=connector,
        credentials=credentials,
        consent_uri=consent_uri,
    )
    bound = model.bind_tools([tool])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


async def converse(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    config: RunnableConfig,
    text: str,
    open_consent: Callable[[str], Awaitable[str]],
) -> str:
    """One user turn; on the authorization interrupt, ``open_consent(url)`` returns the
    redirect URI the user's browser came back to, and the graph resumes with it."""
    step: Any = {"messages": [HumanMessage(text)]}
    for _ in range(3):  # a turn asks for consent at most once or twice
        result = await graph.ainvoke(step, config)
        asked = [i.value for i in result.get("__interrupt__", ())]
        if not asked:
            return str(result["messages"][-1].content)
        consent = next(v for v in asked if v.get("type") == "authorization_required")
        step = Command(resume=await open_consent(consent["authorization_uri"]))
    raise RuntimeError("the user was asked for consent too many times")


# ---- the emulator's side: users, consent URLs and the user's browser ------------------------


async def user_token(rest: str, email: str) -> str:
    """An end-user Google token, minted by the emulator (a real app has the user's own)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{rest}/emulator/v1/users/{quote(email)}/token") as response,
    ):
        response.raise_for_status()
        return str((await response.json())["access_token"])


def emulator_consent_uri(rest: str) -> Callable[[str, Any], Awaitable[str]]:
    """The consent URL for a data connector: the application builds it (the service gives
    none for connectors); the emulator makes one for the user whose token is passed."""

    async def consent_uri(resource: str, credentials: Any) -> str:
        headers = {"Authorization": f"Bearer {credentials}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{rest}/emulator/v1/consent-uri", json={"resource": resource}, headers=headers
            ) as response,
        ):
            response.raise_for_status()
            return str((await response.json())["consentUri"])

    return consent_uri


async def open_in_browser(url: str) -> str:
    """The user's browser: follows the consent URL (no credentials) to the redirect URI."""
    async with aiohttp.ClientSession() as http:
        for _ in range(10):
            async with http.get(url, allow_redirects=False) as response:
                if response.status not in (302, 303):
                    raise RuntimeError(f"consent failed: HTTP {response.status}")
                url = response.headers["Location"]
            if url.startswith(REDIRECT_URI):
                return url
    raise RuntimeError("the consent never reached the redirect URI")


async def run(
    client: DataConnectorClient, rest: str, email: str, model: BaseChatModel, connector: str
) -> list[str]:
    """Two turns for ``email``: the first goes through consent, the second just runs."""
    tokens = {email: await user_token(rest, email)}
    graph = build_graph(
        client,
        connector=connector,
        userinfo_url=f"{rest}/provider/userinfo",
        # The user's Google credentials, looked up by the user id the run is configured with.
        credentials=lambda config: tokens[config["configurable"]["user_id"]],
        consent_uri=emulator_consent_uri(rest),
        model=model,
    )
    config: RunnableConfig = {"configurable": {"thread_id": "example", "user_id": email}}
    return [
        await converse(graph, config, "Who am I at the third party?", open_in_browser),
        await converse(graph, config, "And now?", open_in_browser),
    ]


def real_model(name: str) -> BaseChatModel:
    """A chat model by ``provider:model`` name (LangChain's init_chat_model)."""
    from langchain.chat_models import init_chat_model  # type: ignore[import-not-found]

    model: BaseChatModel = init_chat_model(name)
    return model


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="provider:model of a real model (default: scripted)")
    parser.add_argument("--user", default="alice@example.com")
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    args = parser.parse_args()
    model = real_model(args.model) if args.model else ScriptedChatModel()
    async with contextlib.AsyncExitStack() as stack:
        rest = os.environ.get("AGENTSPACE_EMULATOR_REST")
        if rest:
            client = DataConnectorClient()
        else:
            from agentspace_grpc.emulator import Emulator

            emu = await stack.enter_async_context(Emulator())
            rest, client = emu.http_url, emu.client()
        await stack.enter_async_context(client)
        for reply in await run(client, rest, args.user, model, args.connector):
            print(reply)


if __name__ == "__main__":
    asyncio.run(main())
