"""google-auth credentials objects, made ready to send without blocking the loop.

Per credentials object, and shared by every client in the process: one refresh at a time
(:func:`refresh`; a synchronous object in a thread, a ``google.auth.aio`` one on the loop by
its own coroutine), one read of its universe domain (:func:`check_universe`; it may ask the
metadata server), and one scoped copy per set of scopes (:func:`scoped`). A caller waits until
its own deadline; the shared work goes on for the others.
"""

from __future__ import annotations

import asyncio
import datetime
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import google.auth.aio.credentials
import google.auth.aio.transport.aiohttp
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests

from agentspace_grpc._errors import DeadlineExceeded, Unauthenticated, Unavailable, UsageError
from agentspace_grpc._redact import redact
from agentspace_grpc._transports.base import is_loopback, proxy_for

__all__ = [
    "DEFAULT_UNIVERSE",
    "UNIVERSES",
    "Credentials",
    "TokenSession",
    "check_universe",
    "describe",
    "refresh",
    "scoped",
    "valid",
    "within",
]

DEFAULT_UNIVERSE: Final = "googleapis.com"

_Aio = google.auth.aio.credentials.Credentials
Credentials = google.auth.credentials.Credentials | _Aio
# google.auth.aio credentials have no ``valid``: a token is renewed this long before it expires
# (google-auth's own margin for its synchronous credentials).
_AIO_REFRESH_MARGIN: Final = datetime.timedelta(minutes=3, seconds=45)
_MAX_ERROR_TEXT: Final = 200
# What a refresh request carries that its error text must not repeat.
_SENT_ON_REFRESH: Final = ("token", "refresh_token", "client_secret")
_T = TypeVar("_T")

# The shared work in flight per credentials object (an entry goes when its task is done: a
# failed task's traceback holds the credentials, so the weak key would never be freed).
_REFRESHES: weakref.WeakKeyDictionary[Credentials, asyncio.Task[None]] = weakref.WeakKeyDictionary()
_UNIVERSE_READS: weakref.WeakKeyDictionary[Credentials, asyncio.Task[str]] = (
    weakref.WeakKeyDictionary()
)
#: The universe domain of each credentials object, once read.
UNIVERSES: weakref.WeakKeyDictionary[Credentials, str] = weakref.WeakKeyDictionary()
# The scoped copies of each credentials object, by scopes.
_SCOPED: weakref.WeakKeyDictionary[Credentials, dict[tuple[str, ...], Credentials]] = (
    weakref.WeakKeyDictionary()
)


def valid(creds: Credentials) -> bool:
    """Whether the credentials' token can be sent as it is."""
    if not isinstance(creds, _Aio):
        return bool(creds.valid)
    if not creds.token:
        return False
    expiry = getattr(creds, "expiry", None)
    if not isinstance(expiry, datetime.datetime):
        return True
    now = datetime.datetime.now(datetime.UTC)
    if expiry.tzinfo is None:  # google-auth's convention: naive UTC
        now = now.replace(tzinfo=None)
    return now < expiry - _AIO_REFRESH_MARGIN


def scoped(creds: Credentials, scopes: tuple[str, ...]) -> Credentials:
    """The scoped copy of credentials that require scopes (one per scopes, so its token is
    reused), else the credentials themselves."""
    if not getattr(creds, "requires_scopes", False):
        return creds
    copies = _SCOPED.setdefault(creds, {})
    copy = copies.get(scopes)
    if copy is None:
        copy = copies[scopes] = cast(
            Credentials,
            google.auth.credentials.with_scopes_if_required(  # type: ignore[no-untyped-call]
                creds, list(scopes)
            ),
        )
    return copy


async def check_universe(creds: Credentials, universe: str, deadline: float) -> None:
    """Refuse credentials of another universe than ``universe`` before their token is sent."""
    found = UNIVERSES.get(creds)
    if found is None:
        task = _shared(_UNIVERSE_READS, creds, lambda: _read_universe(creds))
        found = await within(task, deadline, "the universe domain of the credentials was read")
    if found != universe:
        raise UsageError(
            f"the credentials belong to the universe domain {found!r}, but the client "
            f"uses {universe!r} (set by universe_domain=, client_options or "
            "GOOGLE_CLOUD_UNIVERSE_DOMAIN; googleapis.com by default): their token is not sent"
        )


async def refresh(creds: Credentials, deadline: float, session: requests.Session) -> None:
    """Refresh the credentials, joining a refresh of the same object in flight on this loop.

    ``session`` carries a synchronous object's token request.
    """
    task = _shared(_REFRESHES, creds, lambda: _refresh(creds, session))
    await within(task, deadline, "the credentials were refreshed")


async def within(pending: asyncio.Future[_T], deadline: float, what: str) -> _T:
    """Wait for shared work until the caller's deadline, without cancelling it for others."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(max(remaining, 0)):
            return await asyncio.shield(pending)
    except TimeoutError:
        raise DeadlineExceeded(f"the deadline passed before {what}") from None


def describe(exc: BaseException) -> str:
    """The first argument of a google-auth error, cut short (never the whole answer)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text[:_MAX_ERROR_TEXT]


def _shared(
    table: weakref.WeakKeyDictionary[Credentials, asyncio.Task[_T]],
    creds: Credentials,
    start: Callable[[], Coroutine[Any, Any, _T]],
) -> asyncio.Task[_T]:
    """The task in ``table`` for ``creds`` if it is running on this loop, else a new one."""
    loop = asyncio.get_running_loop()
    task = table.get(creds)
    if task is None or task.done() or task.get_loop() is not loop:
        task = table[creds] = loop.create_task(start())
        task.add_done_callback(lambda done: _settled(table, creds, done))
    return task


def _settled(
    table: weakref.WeakKeyDictionary[Credentials, asyncio.Task[_T]],
    creds: Credentials,
    task: asyncio.Task[_T],
) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: waiters may all have left
    if table.get(creds) is task:
        del table[creds]


async def _refresh(creds: Credentials, session: requests.Session) -> None:
    # google-auth's exceptions can hold the token endpoint's answer (tokens) or the request
    # (refresh token, client secret): ours are raised after the except blocks, so that
    # none stays attached, not even as __context__.
    failure: Unavailable | Unauthenticated | None = None
    try:
        if isinstance(creds, _Aio):
            # Natively on the loop, over a session of its own (a refresh is rare).
            async with aiohttp.ClientSession(trust_env=False) as aio_session:
                await creds.refresh(_AioRequest(aio_session))  # type: ignore[no-untyped-call]
        else:
            request = google.auth.transport.requests.Request(session=session)
            await asyncio.to_thread(creds.refresh, request)
    except (google.auth.exceptions.TransportError, google.auth.exceptions.TimeoutError) as exc:
        failure = Unavailable(f"could not reach the credentials' token endpoint: {describe(exc)}")
    except google.auth.exceptions.GoogleAuthError as exc:
        failure = Unauthenticated(f"the credentials could not be refreshed: {describe(exc)}")
    if failure is not None:
        # A token endpoint (or a proxy) may echo the request in its error text.
        redact(failure, [getattr(creds, n, None) for n in _SENT_ON_REFRESH])
        raise failure


async def _read_universe(creds: Credentials) -> str:
    """The credentials' universe domain, read in a thread (google.auth.aio's on the loop: no
    lookup stands behind it)."""
    failure: Unavailable | Unauthenticated | None = None
    try:
        if isinstance(creds, _Aio):
            universe = getattr(creds, "universe_domain", DEFAULT_UNIVERSE)
        else:
            universe = await asyncio.to_thread(getattr, creds, "universe_domain", DEFAULT_UNIVERSE)
    except google.auth.exceptions.GoogleAuthError as exc:
        unreachable = isinstance(exc, google.auth.exceptions.TransportError)
        failure = (Unavailable if unreachable else Unauthenticated)(
            f"could not read the universe domain of the credentials: {describe(exc)}"
        )
    if failure is not None:
        raise failure
    universe = UNIVERSES[creds] = str(universe or DEFAULT_UNIVERSE)
    return universe


class TokenSession(requests.Session):
    """The token-endpoint session: proxy variables apply, except to loopback (as on both wires)."""

    def merge_environment_settings(self, url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(url, *args, **kwargs)
        host = urlsplit(url).hostname
        if host and is_loopback(host):
            settings["proxies"] = {}
        return settings


class _AioRequest(google.auth.aio.transport.aiohttp.Request):
    """google.auth.aio's aiohttp request, with the proxy chosen as on both wires."""

    async def __call__(self, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            kwargs.setdefault("proxy", proxy_for(parts.scheme, parts.hostname, port))
        return await super().__call__(url, *args, **kwargs)
