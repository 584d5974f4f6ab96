"""The opt-in token cache and ``TokenRejected``: RPCs counted at the server, time by a clock
the test moves (never by sleeping)."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import threading
import time
from collections import Counter
from typing import Any

import google.auth.credentials
import google.oauth2.credentials
import pytest

from agentspace_grpc import (
    AccessToken,
    Cancelled,
    DataConnectorClient,
    TokenCache,
    TokenRejected,
    UsageError,
)
from agentspace_grpc import _proto as p
from agentspace_grpc.emulator import Emulator
from agentspace_grpc.emulator._call import Call
from tests._clock import ManualClock
from tests._servers import CONNECTOR, Seen, Servers

ALICE = "alice@example.com"


def acquires(servers: Servers) -> int:
    return len(servers.service.calls("AcquireAccessToken"))


def jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part({'exp': exp})}.c2lnbmF0dXJl"


def count_rpcs(emulator: Emulator) -> Counter[str]:
    """The RPCs the emulator serves from now on, by method (both fronts call its service)."""
    served: Counter[str] = Counter()
    service = emulator._service
    assert service is not None
    handle = service.handle

    async def counting(call: Call) -> Any:
        served[call.row.name] += 1
        return await handle(call)

    service.handle = counting  # type: ignore[method-assign]
    return served


async def test_a_hit_makes_no_rpc_even_with_fresh_credentials_objects(
    servers: Servers, transport: str
) -> None:
    """An agent builds the user's credentials per tool call: equal bearers share an entry."""
    cache = TokenCache()
    async with DataConnectorClient(token_cache=cache, **servers.client_kwargs(transport)) as client:

        def alice() -> google.oauth2.credentials.Credentials:
            return google.oauth2.credentials.Credentials(token="alice")  # type: ignore[no-untyped-call]

        first = await client.acquire_access_token(CONNECTOR, credentials=alice())
        for _ in range(5):
            again = await client.acquire_access_token(CONNECTOR, credentials=alice())
            assert again is first
        assert acquires(servers) == 1
        assert "alice" not in repr(cache)
        assert first.access_token not in repr(cache)


async def test_entries_expire_by_the_clock(servers: Servers) -> None:
    clock = ManualClock()
    cache = TokenCache(max_age=300, clock=clock)
    async with DataConnectorClient(
        credentials="alice", token_cache=cache, **servers.client_kwargs("grpc")
    ) as client:
        first = await client.acquire_access_token(CONNECTOR)
        clock.now += 299
        assert await client.acquire_access_token(CONNECTOR) is first
        assert acquires(servers) == 1
        clock.now += 2
        second = await client.acquire_access_token(CONNECTOR)
        assert second is not first
        assert acquires(servers) == 2
        assert await client.acquire_access_token(CONNECTOR) is second
        assert acquires(servers) == 2


async def test_a_jwt_is_served_until_exp_minus_skew_only(servers: Servers) -> None:
    """A JWT expiring within the skew is not cached; a token that only looks like a JWT (or
    carries no usable exp) is cached for max_age, never an error."""
    lives = {"near": jwt(time.time() + 20), "junk": "not.%%%json.x", "noexp": "a.e30.b"}

    async def answer(seen: Seen) -> p.AcquireAccessTokenResponse:
        return p.AcquireAccessTokenResponse(
            access_token=lives[seen.request.scope],
            refresh_token_info=p.RefreshTokenInfo(name=CONNECTOR, scopes=["s"]),
        )

    servers.service.on("AcquireAccessToken", answer)
    clock = ManualClock()
    async with DataConnectorClient(
        credentials="alice",
        token_cache=TokenCache(max_age=300, skew=30, clock=clock),
        **servers.client_kwargs("rest"),
    ) as client:
        for _ in range(2):
            await client.acquire_access_token(CONNECTOR, scope="near")
        assert acquires(servers) == 2  # 20 s left < 30 s of skew: never cached
        for scope in ("junk", "noexp"):
            first = await client.acquire_access_token(CONNECTOR, scope=scope)
            clock.now += 299
            assert await client.acquire_access_token(CONNECTOR, scope=scope) is first
        assert acquires(servers) == 4


async def test_the_emulators_jwt_exp_is_honoured(transport: str) -> None:
    """The emulator's provider issues JWTs living 120 s: cached 90 s (30 s of skew), not 300."""
    config = {"provider": {"jwt_access_tokens": True, "access_token_lifetime": 120}}
    clock = ManualClock()
    async with Emulator(config=config) as emulator:
        redirect = await emulator.consent(ALICE)
        alice = emulator.user_token(ALICE)
        cache = TokenCache(max_age=300, skew=30, clock=clock)
        async with emulator.client(
            transport=transport, credentials=alice, token_cache=cache
        ) as client:
            await client.store_refresh_token(emulator.connector, redirect)
            served = count_rpcs(emulator)
            first = await client.acquire_access_token(emulator.connector)
            claims = first.access_token.split(".")[1]
            exp = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["exp"]
            assert 100 < exp - time.time() <= 120
            clock.now += 80
            assert await client.acquire_access_token(emulator.connector) is first
            assert served["AcquireAccessToken"] == 1
            clock.now += 20  # 100 s: past exp - skew, well before max_age
            assert await client.acquire_access_token(emulator.connector) is not first
            assert served["AcquireAccessToken"] == 2


async def test_invalidate_costs_exactly_one_rpc(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        credentials="alice", token_cache=TokenCache(), **servers.client_kwargs(transport)
    ) as client:
        first = await client.acquire_access_token(CONNECTOR)
        other = await client.acquire_access_token(CONNECTOR, scope="other")
        client.invalidate(first)
        second = await client.acquire_access_token(CONNECTOR)
        assert second is not first
        assert await client.acquire_access_token(CONNECTOR) is second
        assert await client.acquire_access_token(CONNECTOR, scope="other") is other
        assert acquires(servers) == 3
        client.invalidate(second.access_token)  # the token string works too
        await client.acquire_access_token(CONNECTOR)
        assert acquires(servers) == 4
        with pytest.raises(UsageError):
            client.invalidate(42)  # type: ignore[arg-type]


async def test_invalidate_without_a_cache_does_nothing(servers: Servers) -> None:
    async with DataConnectorClient(credentials="alice", **servers.client_kwargs("grpc")) as client:
        token = await client.acquire_access_token(CONNECTOR)
        client.invalidate(token)
        await client.acquire_access_token(CONNECTOR)
        assert acquires(servers) == 2


async def test_different_users_never_share(servers: Servers, transport: str) -> None:
    async with DataConnectorClient(
        token_cache=TokenCache(), **servers.client_kwargs(transport)
    ) as client:
        tokens = {}
        for _ in range(2):
            for user in ("alice", "bob", "carol"):
                token = await client.acquire_access_token(CONNECTOR, credentials=user)
                assert tokens.setdefault(user, token) is token
        assert acquires(servers) == 3
        assert {t.access_token.split(":")[1] for t in tokens.values()} == {"alice", "bob", "carol"}
        # Scope and action are part of the key too.
        await client.acquire_access_token(CONNECTOR, credentials="alice", action="a")
        await client.acquire_access_token(CONNECTOR, credentials="alice", scope="s")
        assert acquires(servers) == 5


async def test_the_least_recently_used_entry_goes_at_the_size_bound(servers: Servers) -> None:
    cache = TokenCache(max_entries=2)
    async with DataConnectorClient(token_cache=cache, **servers.client_kwargs("grpc")) as client:

        async def get(user: str) -> AccessToken:
            return await client.acquire_access_token(CONNECTOR, credentials=user)

        a = await get("a")
        b = await get("b")
        assert await get("a") is a  # a is now the most recently used
        await get("c")  # evicts b
        assert len(cache) == 2
        assert acquires(servers) == 3
        assert await get("a") is a
        assert await get("b") is not b
        assert acquires(servers) == 4


async def test_single_flight_still_applies_on_a_miss(servers: Servers) -> None:
    """Concurrent misses for one user share one RPC, even with a credentials object each."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(seen: Seen) -> p.AcquireAccessTokenResponse:
        arrived.set()
        await release.wait()
        return p.AcquireAccessTokenResponse(
            access_token="tp:alice", refresh_token_info=p.RefreshTokenInfo(name=CONNECTOR)
        )

    servers.service.on("AcquireAccessToken", held)
    async with DataConnectorClient(
        token_cache=TokenCache(), **servers.client_kwargs("grpc")
    ) as client:
        calls = [
            asyncio.ensure_future(
                client.acquire_access_token(
                    CONNECTOR,
                    credentials=google.oauth2.credentials.Credentials(token="alice"),  # type: ignore[no-untyped-call]
                )
            )
            for _ in range(20)
        ]
        await arrived.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        release.set()
        tokens = await asyncio.gather(*calls)
        assert len({id(t) for t in tokens}) == 1
        assert await client.acquire_access_token(CONNECTOR, credentials="alice") is tokens[0]
    assert acquires(servers) == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_age": -1}, "max_age"),
        ({"max_age": float("nan")}, "max_age"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": 2.5}, "max_entries"),
        ({"skew": "30"}, "skew"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_cache_settings_are_usage_errors(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        TokenCache(**kwargs)


def test_token_cache_must_be_a_token_cache() -> None:
    with pytest.raises(UsageError, match="token_cache"):
        DataConnectorClient(token_cache={}, endpoint="127.0.0.1:1")  # type: ignore[arg-type]


# ---- TokenRejected ---------------------------------------------------------------------------


def test_token_rejected_never_shows_the_token() -> None:
    secret = "tp-SECRET-access-token-123"
    token = AccessToken(secret, resource=CONNECTOR, scopes=("s",), transport="grpc")
    for given in (token, secret):
        error = TokenRejected(f"Jira said 401 to {secret}", token=given)
        assert error.token is given
        for text in (
            str(error),
            repr(error),
            str(error.args),
            pickle.dumps(error).decode("latin-1"),
        ):
            assert secret not in text
        assert "Jira said 401" in str(error)
        assert pickle.loads(pickle.dumps(error)).token is None
    assert str(TokenRejected()) == "the third party rejected the access token (HTTP 401)"
    assert isinstance(TokenRejected(), Exception)


def reachable_strings(root: object) -> set[str]:
    """Every string reachable from ``root`` through the garbage collector's references, not
    through classes, modules or functions (the data, not the code)."""
    import gc
    import types

    seen: set[int] = set()
    found: set[str] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.add(obj)
        elif isinstance(obj, bytes):
            found.add(obj.decode("latin-1"))
        elif not isinstance(
            obj, type | types.ModuleType | types.FunctionType | types.BuiltinFunctionType
        ):
            todo.extend(gc.get_referents(obj))
    return found


async def test_the_cache_holds_no_bearer_credential(servers: Servers, transport: str) -> None:
    """Entries are keyed by a digest of the header: the caller's bearer is nowhere in the cache
    (the client remembers digests, not the cache, which several clients may share)."""
    cache = TokenCache()
    bearer = "carol-secret-bearer-0123456789"
    async with DataConnectorClient(token_cache=cache, **servers.client_kwargs(transport)) as client:
        first = await client.acquire_access_token(CONNECTOR, credentials=bearer)
        assert await client.acquire_access_token(CONNECTOR, credentials=bearer) is first
        assert len(cache) == 1
        strings = reachable_strings(cache)
        assert CONNECTOR in strings  # the walk does reach the entries
        strings.discard(first.access_token)  # the test service's answer names its caller
        assert not [s for s in strings if "carol-secret" in s]


async def test_a_closed_client_holds_no_callers_bearer(servers: Servers, transport: str) -> None:
    """The client remembers recent headers and their digests while open; aclose() drops them."""
    bearer = "dave-secret-bearer-0123456789"
    client = DataConnectorClient(token_cache=TokenCache(), **servers.client_kwargs(transport))
    async with client:
        token = await client.acquire_access_token(CONNECTOR, credentials=bearer)
        assert bearer in reachable_strings(client)  # the walk finds it while open
    strings = reachable_strings(client)
    strings.discard(token.access_token)  # the test service's answer names its caller
    assert not [s for s in strings if "dave-secret" in s]


class _HeldRefresh(google.auth.credentials.Credentials):  # type: ignore[misc]
    """Credentials whose refresh (in a thread) waits until the test releases it."""

    def __init__(self, token: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.started = threading.Event()
        self.release = threading.Event()
        self._next = token

    def refresh(self, request: Any) -> None:
        self.started.set()
        self.release.wait(30)
        self.token = self._next


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
async def test_a_call_that_refreshes_across_aclose_leaves_no_bearer_behind(
    servers: Servers, transport: str, cached: bool
) -> None:
    credentials = _HeldRefresh("erin-secret-bearer-0123456789")
    cache = TokenCache() if cached else None
    client = DataConnectorClient(token_cache=cache, **servers.client_kwargs(transport))
    call = asyncio.create_task(client.acquire_access_token(CONNECTOR, credentials=credentials))
    assert await asyncio.to_thread(credentials.started.wait, 30)
    await client.aclose()
    credentials.release.set()
    with pytest.raises(Cancelled):
        await call
    assert not [s for s in reachable_strings(client) if "erin-secret" in s]
