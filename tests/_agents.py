"""Helpers for the agent-framework tests: the tool function, the consent URL and a browser.

The tool function calls the emulator's built-in provider (its userinfo says whose token it
was) and remembers every token it was given, so that the tests can search the frameworks'
sessions, checkpoints, traces and logs for them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agentspace_grpc import AccessToken, TokenRejected
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import follow_like_a_browser, userinfo

ALICE = "alice@example.com"
BOB = "bob@example.com"


@dataclass
class Probe:
    """The third party's side of a tool: the tokens it saw and who they belonged to."""

    http_url: str  # the emulator's, whose built-in provider's userinfo the tool calls
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
            status, body = await userinfo(probe.http_url, token.access_token)
            assert status == 200, body
            probe.subjects.append(body["sub"])
            return {"user": body["sub"], "detail": detail}

        return whoami


def probe_for(emu: Emulator, reject: int = 0) -> Probe:
    return Probe(emu.http_url, reject)


async def browse(url: str) -> str:
    """Follows the consent URL as the user's browser would (plain GETs, no credentials), up to
    the full redirect URI."""
    return (await follow_like_a_browser(url))[-1]
