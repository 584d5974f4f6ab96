"""``agentspace-grpc demo``: the whole token flow for two users, against the embedded emulator.

Starts an :class:`~agentspace_grpc.emulator.Emulator` in this process (temporary data
directory, free ports) whose built-in provider issues short-lived access tokens, then walks
through consent, store, acquire over gRPC and REST, a cache hit, an expiry with a refresh-token
rotation, two users kept apart, an authorization (its consent URI followed like a browser, store,
acquire, a cache hit) and one error, printing each step. Every claim it prints is
checked against what the emulator reports (its public stats and the provider's userinfo
endpoint); if one does not hold, the demo says so and exits with status 1. Tokens appear only as
fingerprints.
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from agentspace_grpc._commands import _common

if TYPE_CHECKING:
    import aiohttp

    from agentspace_grpc._token import AccessToken

ALICE: Final = "alice@example.com"
BOB: Final = "bob@example.com"
CAROL: Final = "carol@example.com"
DEFAULT_LIFETIME: Final = 5.0
_MIN_LIFETIME: Final = 2.0
_WIDTH: Final = 100
_WIRE: Final = {"grpc": "gRPC", "rest": "REST"}


class DemoFailed(Exception):
    """Something the demo claims did not hold."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="walk through the whole flow for two users against the embedded emulator",
        description="Start the emulator in this process and walk through the token flow for "
        "two users: consent, store, acquire over gRPC and REST, a cache hit, an expiry and "
        "a refresh-token rotation, the users' tokens kept apart, an authorization from its "
        "consent URI to a cached token, and an error. Tokens are "
        "shown only as fingerprints. Takes about 6 seconds; exit status 0 when every step "
        "behaved as described, 1 otherwise.",
    )
    parser.add_argument(
        "--access-token-lifetime",
        type=_lifetime,
        default=DEFAULT_LIFETIME,
        metavar="SECONDS",
        help=f"lifetime of the provider's access tokens (default {DEFAULT_LIFETIME:g}; the "
        "demo waits for one to expire)",
    )
    parser.add_argument(
        "--agent",
        action="store_true",
        help="also show an agent's tool call going through consent (LangGraph; needs the "
        "langgraph extra)",
    )
    parser.set_defaults(handler=run)


def _lifetime(text: str) -> float:
    value = _common.positive_seconds(text)
    if not _MIN_LIFETIME <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected {_MIN_LIFETIME:g} to 60 seconds, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the walkthrough; exit status 0 when every step behaved as described."""
    try:
        asyncio.run(_Walkthrough(args.access_token_lifetime, agent=args.agent).run())
    except DemoFailed as exc:
        _say(f"\ndemo FAILED: {_common.inert(str(exc))}")
        return _common.EXIT_ERROR
    except KeyboardInterrupt:
        _say("\ndemo interrupted")
        return _common.EXIT_INTERRUPTED
    except Exception as exc:
        status, message = _common.describe_error(exc, "the demo connector", None)
        _say(f"\ndemo FAILED: {_common.inert(message)}")
        return _common.EXIT_ERROR if status == _common.EXIT_OK else status
    return _common.EXIT_OK


def _say(text: str = "") -> None:
    """Print one line of the account; step lines wrap at 100 columns, indented."""
    if len(text) > _WIDTH and text.startswith("   "):
        text = textwrap.fill(text, _WIDTH, subsequent_indent="     ", break_on_hyphens=False)
    print(text, flush=True)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def _fp(token: AccessToken | str) -> str:
    value = token if isinstance(token, str) else token.access_token
    return f"[{_common.fingerprint(value)}]"


class _Walkthrough:
    """The demo's steps, in order, sharing one emulator, two clients and an HTTP session."""

    def __init__(self, lifetime: float, *, agent: bool = False) -> None:
        self.lifetime = lifetime
        self.agent = agent
        self.step = 0
        self.emu: Any = None
        self.http: aiohttp.ClientSession | None = None
        self.grpc: Any = None
        self.rest: Any = None
        self.credentials: dict[str, Any] = {}

    def heading(self, title: str) -> None:
        self.step += 1
        _say(f"\n{self.step}. {title}")

    async def refreshes(self) -> int:
        return int((await self.emu.provider_stats()).get("refreshes", 0))

    async def userinfo(self, token: AccessToken) -> tuple[int, dict[str, Any]]:
        """The third party's API: who this access token belongs to (the downstream call)."""
        assert self.http is not None
        async with self.http.get(
            f"{self.emu.http_url}/provider/userinfo",
            headers={"Authorization": f"Bearer {token.access_token}"},
        ) as response:
            return response.status, await response.json(content_type=None)

    async def acquire(self, client: Any, user: str) -> AccessToken:
        token: AccessToken = await client.acquire_access_token(
            self.emu.connector, credentials=self.credentials[user], timeout=30
        )
        return token

    async def run(self) -> None:
        import aiohttp

        from agentspace_grpc.emulator import Emulator

        started = time.monotonic()
        config = {"provider": {"access_token_lifetime": self.lifetime}}
        async with Emulator(config=config) as emu, aiohttp.ClientSession(trust_env=False) as http:
            self.emu, self.http = emu, http
            self.grpc = emu.client(transport="grpc")
            self.rest = emu.client(transport="rest")
            self.credentials = {user: emu.user_credentials(user) for user in (ALICE, BOB, CAROL)}
            async with self.grpc, self.rest:
                self.introduce()
                redirects = await self.consent()
                await self.store(redirects)
                first = await self.acquire_both_wires()
                await self.cache_hit(first)
                await self.users_apart(first)
                rotated = await self.expiry_and_rotation(first)
                await self.authorization()
                await self.error_case()
                if self.agent:
                    await self.agent_consent()
                total = await self.refreshes()
        _say(
            f"\nDone in {time.monotonic() - started:.1f} s: two users, one connector and one "
            f"authorization, {total} upstream refresh{'es' if total != 1 else ''}."
        )
        _say(f"alice's current token for the connector is {_fp(rotated)}.")
        _say("No token was printed in clear.")

    def introduce(self) -> None:
        _say(
            "agentspace-grpc demo: one data connector, one authorization, two users, the "
            "embedded emulator"
        )
        _say(
            f"  emulator       gRPC {self.emu.grpc_target}, REST {self.emu.http_url} "
            "(in this process)"
        )
        _say(f"  connector      {self.emu.connector}")
        _say(f"  authorization  {self.emu.authorization}")
        _say(
            "                 both backed by the emulator's built-in OAuth provider, whose "
            f"access tokens live {self.lifetime:g} s"
        )
        _say(
            "  tokens         shown only as [fingerprints]: the first 8 hex digits of their SHA-256"
        )
        _say(
            "  clients        one DataConnectorClient per wire, shared by both users "
            "(credentials= per call)"
        )

    async def consent(self) -> dict[str, str]:
        self.heading("Consent: each user approves the connector at the third party")
        redirects = {}
        for user in (ALICE, BOB):
            uri = await self.emu.consent(user)
            parts = urlsplit(uri)
            query = parse_qs(parts.query)
            _expect("code" in query and "state" in query, f"{user}'s redirect has no code/state")
            where = f"{parts.scheme}://{parts.netloc}{parts.path}"
            _say(f"   {user} approved; the browser came back to {where}?code=...&state=...")
            redirects[user] = uri
        _say("   (the authorization code is a secret: not shown)")
        return redirects

    async def store(self, redirects: dict[str, str]) -> None:
        self.heading("Store: AcquireAndStoreRefreshToken, each with the user's own credentials")
        for user in (ALICE, BOB):
            extra = await self.grpc.store_refresh_token(
                self.emu.connector, redirects[user], credentials=self.credentials[user]
            )
            shown = _common.conceal(extra)
            fields = ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "nothing"
            fields = _common.inert(fields)
            _say(f"   {user}: refresh token stored; the third party also said: {fields}")
        stats = await self.emu.provider_stats()
        _say(
            f"   provider: {stats.get('code_exchanges', 0)} codes exchanged, "
            f"{stats.get('refreshes', 0)} refreshes so far"
        )

    async def acquire_both_wires(self) -> AccessToken:
        self.heading("Acquire over gRPC, then over REST")
        over_grpc = await self.acquire(self.grpc, ALICE)
        _say(f"   {ALICE} over gRPC: token {_fp(over_grpc)}, scopes {' '.join(over_grpc.scopes)}")
        over_rest = await self.acquire(self.rest, ALICE)
        _say(f"   {ALICE} over REST: token {_fp(over_rest)}")
        _expect(
            over_rest.access_token == over_grpc.access_token,
            "gRPC and REST returned different tokens within the token's lifetime",
        )
        _say("   the same token: both wires reach one service and its per-user cache")
        return over_grpc

    async def cache_hit(self, first: AccessToken) -> None:
        self.heading("A cache hit")
        before = await self.refreshes()
        again = await self.acquire(self.grpc, ALICE)
        after = await self.refreshes()
        _expect(again.access_token == first.access_token, "the repeated acquire got a new token")
        _expect(after == before, "the repeated acquire went to the provider")
        _say(
            f"   {ALICE} again: token {_fp(again)}, served from the cache; provider refreshes "
            f"still {after}: nothing went upstream"
        )

    async def users_apart(self, alices: AccessToken) -> None:
        self.heading("Two users, one client, tokens kept apart")
        bobs = await self.acquire(self.grpc, BOB)
        _say(f"   {BOB} over the same gRPC client: token {_fp(bobs)}")
        _expect(bobs.access_token != alices.access_token, "bob got alice's token")
        for user, token in ((ALICE, alices), (BOB, bobs)):
            status, info = await self.userinfo(token)
            _expect(status == 200, f"the provider rejected {user}'s token (HTTP {status})")
            _expect(info.get("email") == user, f"{user}'s token belongs to {info.get('email')}")
            _say(f"   downstream call with {_fp(token)}: the provider says it is {info['email']}")

    async def expiry_and_rotation(self, old: AccessToken) -> AccessToken:
        self.heading("Expiry and refresh-token rotation")
        status, info = await self.userinfo(old)
        _expect(status == 200, f"alice's token was rejected early (HTTP {status})")
        # "exp" is whole seconds, rounded down: wait until then, then ask until it is refused.
        wait = max(0.0, float(info["exp"]) - time.time())
        _say(f"   {ALICE}'s token {_fp(old)} expires at the provider; waiting {wait:.1f} s ...")
        await asyncio.sleep(wait)
        for _ in range(30):
            status, _info = await self.userinfo(old)
            if status == 401:
                break
            await asyncio.sleep(0.1)
        _expect(status == 401, "the provider still accepts the expired token")
        _say(f"   the provider now rejects {_fp(old)} (HTTP 401: expired)")
        before = await self.refreshes()
        committed_before = (await self.emu.stats()).get("upstream_refreshes_committed", 0)
        new = await self.acquire(self.grpc, ALICE)
        after = await self.refreshes()
        committed = (await self.emu.stats()).get("upstream_refreshes_committed", 0)
        _expect(new.access_token != old.access_token, "the expired token was served again")
        _expect(after == before + 1, f"expected one upstream refresh, saw {after - before}")
        _say(f"   {ALICE} acquires: new token {_fp(new)}; provider refreshes {before} -> {after}")
        _say(
            "   the provider rotated alice's refresh token (single use); the emulator stored "
            f"the new one before answering (rotations committed: {committed_before} -> "
            f"{committed})"
        )
        status, info = await self.userinfo(new)
        _expect(status == 200 and info.get("email") == ALICE, "the new token is not alice's")
        cached = await self.acquire(self.rest, ALICE)
        _expect(cached.access_token == new.access_token, "the new token was not cached")
        _expect(await self.refreshes() == after, "the cached token went upstream")
        _say(
            f"   downstream call with {_fp(new)}: {info['email']}; over REST it is cached "
            f"again ({_fp(cached)}, refreshes still {after})"
        )
        return new

    async def follow_like_a_browser(self, uri: str) -> list[str]:
        """Opens ``uri`` with no credentials, following redirects until one leaves the
        emulator (the redirect URI, which the browser would load at Google): every URL."""
        assert self.http is not None
        visited = [uri]
        while visited[-1].startswith(f"{self.emu.http_url}/"):
            _expect(len(visited) < 10, "the consent URI redirects in a loop")
            async with self.http.get(visited[-1], allow_redirects=False) as response:
                _expect(
                    response.status in (302, 303),
                    f"HTTP {response.status} at {urlsplit(visited[-1]).path}",
                )
                visited.append(response.headers["Location"])
        return visited

    async def authorization(self) -> None:
        from agentspace_grpc import AuthorizationRequired

        self.heading("An authorization: consent URI, store, acquire, a cache hit")
        name, alice = self.emu.authorization, self.credentials[ALICE]
        try:
            await self.rest.acquire_user_authorization(name, credentials=alice, timeout=30)
            raise DemoFailed(f"{ALICE} got an authorization's token without consenting")
        except AuthorizationRequired as exc:
            uri = exc.authorization_uri
        _expect(uri is not None, "AcquireUserAuthorization answered with no authorization URI")
        assert uri is not None
        _say(
            f"   {ALICE} over REST: AcquireUserAuthorization answers with an authorization URI "
            f"(AuthorizationRequired.authorization_uri): {uri.partition('?')[0]}?state=..."
        )
        visited = await self.follow_like_a_browser(uri)
        hops = " -> ".join(urlsplit(url).path for url in visited[:-1])
        back = urlsplit(visited[-1])
        _expect("code" in parse_qs(back.query), "the consent came back without a code")
        _say(
            f"   a browser with no Google credentials opens it: {hops} -> back to "
            f"{back.scheme}://{back.netloc}{back.path}?code=...&state=..."
        )
        stored_before = (await self.emu.stats()).get("grants_stored", 0)
        await self.grpc.store_user_authorization(name, visited[-1], credentials=alice, timeout=30)
        stored = (await self.emu.stats()).get("grants_stored", 0)
        _expect(stored == stored_before + 1, "StoreUserAuthorization stored no grant")
        _say(f"   StoreUserAuthorization over gRPC: grants stored {stored_before} -> {stored}")
        token = await self.grpc.acquire_user_authorization(name, credentials=alice, timeout=30)
        status, info = await self.userinfo(token)
        _expect(status == 200 and info.get("email") == ALICE, "the token is not alice's")
        _say(
            f"   AcquireUserAuthorization: token {_fp(token)}, scopes {' '.join(token.scopes)}; "
            f"the provider says it is {info['email']}"
        )
        before = await self.refreshes()
        committed_before = (await self.emu.stats()).get("upstream_refreshes_committed", 0)
        again = await self.rest.acquire_user_authorization(name, credentials=alice, timeout=30)
        after = await self.refreshes()
        committed = (await self.emu.stats()).get("upstream_refreshes_committed", 0)
        _expect(again.access_token == token.access_token, "the repeated acquire got a new token")
        _expect(
            (after, committed) == (before, committed_before),
            "the repeated acquire went to the provider",
        )
        _say(
            f"   again over REST: token {_fp(again)}, served from the cache; provider refreshes "
            f"still {after}"
        )

    async def error_case(self) -> None:
        from agentspace_grpc import AuthorizationRequired

        self.heading("An error: a user who never consented")
        try:
            await self.acquire(self.grpc, CAROL)
        except AuthorizationRequired as exc:
            _, message = _common.describe_error(exc, self.emu.connector, None)
            wire = _WIRE.get(exc.transport or "", exc.transport)
            said = f"{type(exc).__name__} ({exc.code.name}, reason {exc.reason}, over {wire})"
            _say(f"   {CAROL}: {_common.inert(said)}")
            _say(f"   message: {_common.inert(message)}")
            _say("   (`agentspace-grpc acquire` exits with status 3 for this)")
            return
        raise DemoFailed(f"{CAROL} got a token without consenting")

    async def agent_consent(self) -> None:
        """An agent's tool call for the user who never consented: interrupt, consent, resume."""
        from langchain_core.messages import AIMessage, ToolMessage
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import START, MessagesState, StateGraph
        from langgraph.prebuilt import ToolNode
        from langgraph.types import Command

        from agentspace_grpc.langgraph import connector_tool

        self.heading("An agent: a LangGraph tool call that goes through consent")
        seen: list[AccessToken] = []

        async def whoami(token: AccessToken) -> str:
            """Tells who the user is at the third party."""
            seen.append(token)
            status, info = await self.userinfo(token)
            return f"HTTP {status}: {info.get('email')}"

        tool = connector_tool(
            whoami,
            client=self.grpc,
            resource=self.emu.connector,
            credentials=lambda config: self.credentials[config["configurable"]["user"]],
            consent_uri=self.emu.consent_uri,
        )
        builder = StateGraph(MessagesState)
        builder.add_node("tools", ToolNode([tool]))
        builder.add_edge(START, "tools")
        graph = builder.compile(checkpointer=InMemorySaver())
        config: Any = {"configurable": {"thread_id": "demo", "user": CAROL}}
        call = AIMessage("", tool_calls=[{"name": "whoami", "args": {}, "id": "call-1"}])
        result = await graph.ainvoke({"messages": [call]}, config)
        [asked] = [item.value for item in result.get("__interrupt__", ())]
        _expect(asked["type"] == "authorization_required", "the tool did not ask for consent")
        url = urlsplit(asked["authorization_uri"])
        _say(f"   {CAROL}'s agent calls whoami: the graph stops with an authorization_required")
        _say(f"   interrupt carrying the consent URL {url.scheme}://{url.netloc}{url.path}?...")
        redirect = (await self.follow_like_a_browser(asked["authorization_uri"]))[-1]
        _say("   carol opens it and approves; the app resumes with Command(resume=<redirect URI>)")
        result = await graph.ainvoke(Command(resume=redirect), config)
        answer = [m.content for m in result["messages"] if isinstance(m, ToolMessage)]
        _expect(answer == [f"HTTP 200: {CAROL}"], f"the tool answered {answer!r}")
        _say(
            f"   the tool stored it and ran with carol's token {_fp(seen[-1])}: the provider "
            f"says it is {CAROL}"
        )
