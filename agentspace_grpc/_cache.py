"""``TokenCache``: an opt-in, in-process cache of access tokens for callers that acquire often.

The service's answer carries no expiry, so the client caches nothing unless it is given a
cache. An agent calls a tool many times per conversation; with a cache, every call after the
first within ``max_age`` costs a dictionary lookup instead of a round trip. Entries are keyed
by what decides the answer: the connector, the scope, the action and a SHA-256 of the
``authorization`` header the call would send (so two users never share an entry, and a
credentials object built afresh for each call still finds its user's entry). Nothing is
written anywhere: the cache lives and dies with the process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from agentspace_grpc._errors import UsageError
from agentspace_grpc._token import AccessToken

__all__ = ["CacheKey", "CacheKeys", "TokenCache"]

#: (resource, scope, action, SHA-256 of the authorization header).
CacheKey = tuple[str, str | None, str | None, bytes]

_DIGESTS_KEPT: Final = 1024


class CacheKeys:
    """Makes the cache keys of one client's acquires.

    The header is hashed, so a token cache (which several clients may share) holds no bearer
    credential. The client remembers the digests of its last 1,024 headers, as its call loop
    remembers the headers it sends, until ``aclose()``: a SHA-256 per call costs a miss several
    microseconds, a lookup well under one.
    """

    __slots__ = ("_digests",)

    def __init__(self) -> None:
        self._digests: dict[str | None, bytes] = {}

    def __call__(
        self, resource: str, scope: str | None, action: str | None, authorization: str | None
    ) -> CacheKey:
        digest = self._digests.get(authorization)
        if digest is None:
            digest = hashlib.sha256(authorization.encode() if authorization else b"").digest()
            if len(self._digests) >= _DIGESTS_KEPT:
                self._digests.clear()
            self._digests[authorization] = digest
        return resource, scope, action, digest

    def clear(self) -> None:
        """Forget every header (the client is closing)."""
        self._digests.clear()


def jwt_seconds_left(token: str, now: float) -> float:
    """Seconds until a JWT's ``exp`` claim (read, not verified); ``inf`` for any other token."""
    parts = token.split(".")
    if len(parts) != 3:
        return math.inf
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # UnicodeDecodeError is a ValueError
        return math.inf
    exp = claims.get("exp") if type(claims) is dict else None
    if type(exp) is not int and type(exp) is not float:
        return math.inf
    try:
        return float(exp) - now
    except OverflowError:  # an int beyond any float
        return math.inf


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"TokenCache {what} must be a finite number")
    if value < 0:
        raise UsageError(f"TokenCache {what} must be at least 0")
    return float(value)


class TokenCache:
    """Access tokens kept in memory, least recently used first out.

    A token is served until the earlier of ``max_age`` seconds after it was acquired and, when
    the token is a JWT with an ``exp`` claim, ``exp`` minus ``skew`` seconds (a token that
    close to its expiry is not cached at all). Pass one to ``DataConnectorClient(...,
    token_cache=TokenCache())``; ``client.invalidate(token)`` drops a token the third party
    rejected. Safe to use from several threads.

    Args:
        max_age: Seconds a token is served at most.
        max_entries: Entries kept at most; the least recently used one goes first.
        skew: Seconds before a JWT's ``exp`` at which it stops being served.
        clock: Seconds on a monotonic scale (tests pass their own). A JWT's ``exp`` is read
            against the wall clock, once, when the token is stored.
    """

    __slots__ = ("_clock", "_entries", "_lock", "max_age", "max_entries", "skew")

    def __init__(
        self,
        max_age: float = 300.0,
        max_entries: int = 10_000,
        skew: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = _number(max_age, "max_age")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise UsageError("TokenCache max_entries must be an integer of at least 1")
        self.max_entries = max_entries
        self.skew = _number(skew, "skew")
        if not callable(clock):
            raise UsageError("TokenCache clock must be a callable returning seconds")
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, AccessToken]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> AccessToken | None:
        """The token stored under ``key`` if it is still good, else None (an expired one goes)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() < entry[0]:
                self._entries.move_to_end(key)
                return entry[1]
            del self._entries[key]
            return None

    def put(self, key: CacheKey, token: AccessToken) -> None:
        """Store ``token`` under ``key`` (unless it expires within ``skew``)."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] is token:
            return  # the waiters of one shared call all store its answer: once is enough
        life = self.max_age
        value = token.access_token
        if value.count(".") == 2:  # perhaps a JWT: its exp counts too
            life = min(life, jwt_seconds_left(value, time.time()) - self.skew)
        if life <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + life, token)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, access_token: str) -> int:
        """Drop every entry holding ``access_token``; returns how many were dropped."""
        with self._lock:
            stale = [k for k, (_, t) in self._entries.items() if t.access_token == access_token]
            for key in stale:
                del self._entries[key]
        return len(stale)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"TokenCache(max_age={self.max_age:g}, max_entries={self.max_entries}, "
            f"skew={self.skew:g}, entries={len(self._entries)})"
        )
