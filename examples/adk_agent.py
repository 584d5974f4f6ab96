"""A Google ADK agent whose tool calls a third-party API as the end user, consent included.

The tool ``whoami`` is an ordinary async function that takes ``token: AccessToken``;
``agentspace_grpc.adk.connector_tool`` gives it the end user's token on every call. The
first time, the user has not connected the third party: ADK's credential request
(``adk_request_credential``) carries the consent URL, the user opens it, and the application
answers with the redirect URI the browser came back to. The tool stores it and runs.

Run it (needs ``pip install 'agentspace-grpc[adk,emulator]'``)::

    python examples/adk_agent.py                       # scripted model, in-process emulator
    python examples/adk_agent.py --model gemini-2.5-flash   # a real model (GOOGLE_API_KEY)

With AGENTSPACE_EMULATOR_HOST / AGENTSPACE_EMULATOR_REST set it uses that running emulator.
Against the emulator, "the user's browser" is this script following the consent URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

from agentspace_grpc import AccessToken, DataConnectorClient
from agentspace_grpc.adk import connector_tool

APP = "agentspace-example"
REQUEST_CREDENTIAL = "adk_request_credential"
REDIRECT_URI = "https://vertexaisearch.cloud.google.com/oauth-redirect"
DEFAULT_CONNECTOR = "projects/demo/locations/global/collections/default_collection/dataConnector"


NO_USAGE = types.GenerateContentResponseUsageMetadata(prompt_token_count=0, total_token_count=0)


class ScriptedModel(BaseLlm):
    """Stands in for an LLM: calls ``whoami``, then says what it answered."""

    model: str = "scripted"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1].parts or []
        answers = [p.function_response.response for p in last if p.function_response]
        if answers:
            reply = types.Part(text=f"The third party says: {answers[0]}")
        else:
            reply = types.Part(function_call=types.FunctionCall(name="whoami", args={}))
        yield LlmResponse(
            content=types.Content(role="model", parts=[reply]), usage_metadata=NO_USAGE
        )


def build_agent(
    client: DataConnectorClient,
    *,
    connector: str,
    userinfo_url: str,
    credentials: Callable[[Any], Any],
    consent_uri: Callable[[str, Any], Awaitable[str]],
    model: str | BaseLlm,
) -> LlmAgent:
    """The agent: one tool that calls the third party with the end user's token."""

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
    return LlmAgent(
        name="assistant",
        model=model,
        instruction="Answer with what the whoami tool returns.",
        tools=[tool],
    )


async def converse(
    runner: Runner,
    user_id: str,
    session_id: str,
    text: str,
    open_consent: Callable[[str], Awaitable[str]],
) -> str:
    """One user turn; when the tool asks for consent, ``open_consent(url)`` returns the
    redirect URI the user's browser came back to, and the turn resumes with it."""
    message = types.Content(role="user", parts=[types.Part(text=text)])
    for _ in range(3):  # a turn asks for consent at most once or twice
        requests, replies = [], []
        async for event in runner.run_async(
            user_id=user_id, session_id=session_id, new_message=message
        ):
            requests += [c for c in event.get_function_calls() if c.name == REQUEST_CREDENTIAL]
            if event.is_final_response() and event.content and event.content.parts:
                replies += [p.text for p in event.content.parts if p.text]
        if not requests:
            return "\n".join(replies)
        # What the application sends back: the request's auth config, with the full redirect
        # URI in exchangedAuthCredential.oauth2.authResponseUri, under the request's id.
        request = requests[0]
        assert request.args is not None
        config = copy.deepcopy(request.args["authConfig"])
        oauth2 = config["exchangedAuthCredential"]["oauth2"]
        oauth2["authResponseUri"] = await open_consent(oauth2["authUri"])
        answer = types.FunctionResponse(name=REQUEST_CREDENTIAL, id=request.id, response=config)
        message = types.Content(role="user", parts=[types.Part(function_response=answer)])
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
    client: DataConnectorClient, rest: str, email: str, model: str | BaseLlm, connector: str
) -> list[str]:
    """Two turns for ``email``: the first goes through consent, the second just runs."""
    token = await user_token(rest, email)
    agent = build_agent(
        client,
        connector=connector,
        userinfo_url=f"{rest}/provider/userinfo",
        credentials=lambda context: token,  # one user here; look it up by context.user_id
        consent_uri=emulator_consent_uri(rest),
        model=model,
    )
    sessions = InMemorySessionService()
    runner = Runner(agent=agent, app_name=APP, session_service=sessions)
    session = await sessions.create_session(app_name=APP, user_id=email)
    return [
        await converse(runner, email, session.id, "Who am I at the third party?", open_in_browser),
        await converse(runner, email, session.id, "And now?", open_in_browser),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a real model name (default: the scripted model)")
    parser.add_argument("--user", default="alice@example.com")
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR)
    args = parser.parse_args()
    model: str | BaseLlm = args.model or ScriptedModel()
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
