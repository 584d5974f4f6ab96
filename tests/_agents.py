"""Helpers for the agent-framework tests: the tool function, the consent URL and a browser.

The tool function calls the emulator's built-in provider (its userinfo says whose token it
was) and remembers every token it was given, so that the tests can search the frameworks'
sessions, checkpoints, traces and logs for them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agentspace_grpc import AccessToken, TokenRejected
from agentspace_grpc.emulator import Emulator

ALICE = "alice@example.com"
BOB = "bob@example.com"
REDIRECT_URI = "https://vertexaisearch.cloud.google.com/oauth-redirect"


@dataclass
class Probe:
    """The third party's side of a tool: the tokens it saw and who they belonged to."""

    userinfo_url: str
    reject: int = 0  # answer this many calls as the third party's 401
    tokens: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)

    def tool(self) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
        probe = self

        async def whoami(detail: str, token: AccessToken) -> dict[str, Any]:
            """Tells who the user is at the third party."""
            probe.tokens.append(token.access_token)
            if probe.reject > 0:
                probe.reject -= 1
                raise TokenRejected("the third party answered 401", token=token)
            headers = {"Authorization": f"Bearer {token.access_token}"}
            async with (
                aiohttp.ClientSession() as session,
                session.get(probe.userinfo_url, headers=headers) as response,
            ):
                body = await response.json()
            assert response.status == 200, body
            probe.subjects.append(body["sub"])
            return {"user": body["sub"], "detail": detail}

        return whoami


def probe_for(emu: Emulator, reject: int = 0) -> Probe:
    return Probe(f"{emu.http_url}/provider/userinfo", reject)


async def browse(url: str) -> str:
    """Follows the consent URL as the user's browser would (plain GETs, no credentials), up to
    the full redirect URI."""
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(url, allow_redirects=False) as response:
                assert response.status in (302, 303), await response.text()
                url = response.headers["Location"]
            if url.startswith(REDIRECT_URI):
                return url
    raise AssertionError("the consent never reached the redirect URI")
