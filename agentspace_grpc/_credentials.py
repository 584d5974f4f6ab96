"""Turning the caller's credentials into an ``authorization`` header, without blocking the loop.

Four kinds are accepted: a google-auth ``Credentials`` (refreshed with ``asyncio.to_thread``),
a ``google.auth.aio`` ``Credentials`` (refreshed on the loop by its own coroutine, over aiohttp),
a plain access-token string (sent as is), or None (Application Default Credentials with the
client's scopes, looked up once in a thread; skipped when an emulator is configured). Either
kind of credentials object is refreshed one refresh at a time per object, across every caller
in the process.

Before a credentials object's token is first sent, its universe domain must match the
client's: reading it may ask the metadata server, so it is read in a thread, once per object.

The header is sent as call metadata on every wire and channel kind: grpc drops *call
credentials* on plaintext channels (grpc/grpc#8142), so they are never used.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import weakref
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import google.auth
import google.auth.aio.credentials
import google.auth.aio.transport.aiohttp
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests

from agentspace_grpc._errors import DeadlineExceeded, Unauthenticated, Unavailable, UsageError
from agentspace_grpc._transports.base import is_loopback, proxy_for

__all__ = ["CLOUD_PLATFORM_SCOPE", "DEFAULT_UNIVERSE", "Authorizer", "CredentialsLike"]

CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_UNIVERSE: Final = "googleapis.com"

CredentialsLike = (
    google.auth.credentials.Credentials | google.auth.aio.credentials.Credentials | str | None
)

_GoogleCredentials = google.auth.credentials.Credentials
_AioCredentials = google.auth.aio.credentials.Credentials
_Credentials = _GoogleCredentials | _AioCredentials
_CREDENTIALS_TYPES: Final = (_GoogleCredentials, _AioCredentials)
# Credentials that cannot refresh: refreshing after a rejection cannot help.
_UNREFRESHABLE: Final = (
    google.auth.credentials.AnonymousCredentials,
    google.auth.aio.credentials.AnonymousCredentials,
    google.auth.aio.credentials.StaticCredentials,
)
# google.auth.aio credentials have no ``valid``: a token is renewed this long before it expires
# (google-auth's own margin for its synchronous credentials).
_AIO_REFRESH_MARGIN: Final = datetime.timedelta(minutes=3, seconds=45)
_T = TypeVar("_T")

# In-flight refreshes, one per credentials object (shared by every client in the process).
_REFRESHES: weakref.WeakKeyDictionary[_Credentials, asyncio.Future[None]] = (
    weakref.WeakKeyDictionary()
)
# Scoped copies of credentials that need scopes, by scopes, so that a copy (and its token) is
# reused.
_SCOPED: weakref.WeakKeyDictionary[_Credentials, dict[tuple[str, ...], _Credentials]] = (
    weakref.WeakKeyDictionary()
)
# The universe domain of each credentials object (read once), and the reads in flight.
_UNIVERSES: weakref.WeakKeyDictionary[_Credentials, str] = weakref.WeakKeyDictionary()
_UNIVERSE_READS: weakref.WeakKeyDictionary[_Credentials, asyncio.Future[str]] = (
    weakref.WeakKeyDictionary()
)

_MAX_ERROR_TEXT: Final = 200


class _DefaultMarker:
    """Stands for "the client's default credentials" in single-flight keys."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<default credentials>"


DEFAULT_IDENTITY: Final = _DefaultMarker()


class _Pending(enum.Enum):
    """Returned by :meth:`Authorizer.ready` when the header needs an await (refresh, ADC)."""

    PENDING = "pending"


PENDING: Final = _Pending.PENDING


def check_credentials(credentials: object, what: str = "credentials") -> None:
    """Reject anything but google-auth credentials, a token string or None (no I/O)."""
    if credentials is None or isinstance(credentials, _CREDENTIALS_TYPES):
        return
    if isinstance(credentials, str):
        _check_token(credentials)
        return
    raise UsageError(
        f"{what} must be google.auth.credentials.Credentials, "
        "google.auth.aio.credentials.Credentials, an access-token string or None, "
        f"not {type(credentials).__name__}"
    )


def _check_token(token: str) -> None:
    # Never echo the token: the message says what is wrong with it only.
    if not token:
        raise UsageError("the access-token string is empty")
    if token[:7].lower() == "bearer ":
        raise UsageError("pass the bare access token, without the 'Bearer ' prefix")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise UsageError("the access-token string contains spaces or non-printable characters")


def _describe(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text[:_MAX_ERROR_TEXT]


class Authorizer:
    """Builds ``authorization`` values for one client: its default credentials and overrides.

    Args:
        default: The client's credentials.
        use_adc: Whether None means Application Default Credentials (False when an emulator is
            configured: then None means "send no authorization header").
        scopes: The scopes for ADC and for credentials that require scopes.
        universe: The client's universe domain; credentials of another one are refused.
    """

    def __init__(
        self,
        default: CredentialsLike,
        *,
        use_adc: bool,
        scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,),
        universe: str = DEFAULT_UNIVERSE,
    ) -> None:
        check_credentials(default)
        self._default = default
        self._use_adc = use_adc and default is None
        self._scopes = scopes
        self._universe = universe
        self._adc: _GoogleCredentials | None = None
        self._adc_lookup: asyncio.Future[_GoogleCredentials] | None = None
        self._session: requests.Session | None = None
        self._token_cache: tuple[str, str] | None = None  # (token, header) of the last call

    def effective(self, credentials: CredentialsLike) -> CredentialsLike:
        """The credentials a call with ``credentials`` uses (the default, or ADC once found)."""
        if credentials is not None:
            return credentials
        return self._default if self._default is not None else self._adc

    def principal_hint(self, credentials: CredentialsLike) -> str | None:
        """Who the credentials act as, when they say so (a service account's email)."""
        creds = credentials if credentials is not None else (self._default or self._adc)
        if isinstance(creds, _CREDENTIALS_TYPES):
            for attribute in ("service_account_email", "signer_email", "account"):
                value = getattr(creds, attribute, None)
                if isinstance(value, str) and value and value != "default":
                    return value
        return None

    # ---- headers ---------------------------------------------------------------------

    def ready(self, credentials: CredentialsLike) -> str | _Pending | None:
        """The ``authorization`` value if it is at hand without I/O, else :data:`PENDING`."""
        creds = self._default if credentials is None else credentials
        if type(creds) is str:
            return self._bearer(creds)
        if creds is None:
            if not self._use_adc:
                return None
            creds = self._adc
            if creds is None:
                return PENDING
        assert isinstance(creds, _CREDENTIALS_TYPES)
        if _UNIVERSES.get(creds) != self._universe:
            return PENDING  # not checked yet (or refused: authorization() raises)
        creds = _scoped(creds, self._scopes)
        token = creds.token
        if token and _valid(creds):
            return self._bearer(token)
        return PENDING

    async def authorization(self, credentials: CredentialsLike, deadline: float) -> str | None:
        """The ``authorization`` value for a call, refreshing first if needed."""
        creds = self._default if credentials is None else credentials
        if type(creds) is str:
            return self._bearer(creds)
        if creds is None:
            if not self._use_adc:
                return None
            creds = self._adc or await self._lookup_adc(deadline)
        assert isinstance(creds, _CREDENTIALS_TYPES)
        await self._check_universe(creds, deadline)
        creds = _scoped(creds, self._scopes)
        if not _valid(creds):
            await self._refresh(creds, deadline)
        token = creds.token
        if not token:
            raise Unauthenticated("the credentials have no access token after a refresh")
        return self._bearer(token)

    def quota_project(self, credentials: CredentialsLike) -> str | None:
        """The quota project that the credentials carry, if any."""
        creds = self._default if credentials is None else credentials
        if creds is None:
            creds = self._adc
        if isinstance(creds, _CREDENTIALS_TYPES):
            value = getattr(creds, "quota_project_id", None)
            if isinstance(value, str) and value:
                return value
        return None

    def _bearer(self, token: str) -> str:
        cached = self._token_cache
        if cached is not None and cached[0] is token:
            return cached[1]
        header = "Bearer " + token
        self._token_cache = (token, header)
        return header

    async def refresh_rejected(
        self, credentials: CredentialsLike, rejected: str | None, deadline: float
    ) -> bool:
        """After UNAUTHENTICATED: refresh once if that can help; True if a retry makes sense.

        Concurrent rejections of the same token share one refresh; if the token changed since
        the rejected call was made, no refresh is needed.
        """
        creds = self._default if credentials is None else credentials
        if creds is None:
            creds = self._adc
        if not isinstance(creds, _CREDENTIALS_TYPES) or isinstance(creds, _UNREFRESHABLE):
            return False
        creds = _scoped(creds, self._scopes)
        current = creds.token
        if current and rejected is not None and rejected != "Bearer " + current:
            return True
        await self._refresh(creds, deadline)
        return True

    # ---- universe --------------------------------------------------------------------

    async def _check_universe(self, creds: _Credentials, deadline: float) -> None:
        """Refuse credentials of another universe before their token is sent anywhere."""
        universe = _UNIVERSES.get(creds)
        if universe is None:
            loop = asyncio.get_running_loop()
            pending = _UNIVERSE_READS.get(creds)
            if pending is None or pending.get_loop() is not loop:
                pending = loop.create_task(_read_universe(creds))
                pending.add_done_callback(_retrieve)
                _UNIVERSE_READS[creds] = pending
            universe = await _within(
                pending, deadline, "the universe domain of the credentials was read"
            )
        if universe != self._universe:
            raise UsageError(
                f"the credentials belong to the universe domain {universe!r}, but the client "
                f"uses {self._universe!r} (set by universe_domain=, client_options or "
                "GOOGLE_CLOUD_UNIVERSE_DOMAIN; googleapis.com by default): their token is "
                "not sent"
            )

    # ---- refresh ---------------------------------------------------------------------

    async def _refresh(self, creds: _Credentials, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        pending = _REFRESHES.get(creds)
        if pending is None or pending.done() or pending.get_loop() is not loop:
            pending = loop.create_task(self._run_refresh(creds))
            _REFRESHES[creds] = pending
            pending.add_done_callback(_forget_refresh(creds))
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the credentials were refreshed")
        try:
            async with asyncio.timeout(remaining):
                # Shielded: one caller's deadline or cancellation never stops the shared
                # refresh that others wait for.
                await asyncio.shield(pending)
        except TimeoutError:
            raise DeadlineExceeded(
                "the deadline passed while the credentials were being refreshed"
            ) from None

    async def _run_refresh(self, creds: _Credentials) -> None:
        # google-auth's exceptions can hold the token endpoint's answer (tokens) or the request
        # (refresh token, client secret): ours are raised after the except blocks, so that
        # none stays attached, not even as __context__.
        failure: Unavailable | Unauthenticated | None = None
        try:
            if isinstance(creds, _AioCredentials):
                # Natively on the loop, over a session of its own (a refresh is rare).
                async with aiohttp.ClientSession(trust_env=False) as session:
                    await creds.refresh(_AioRequest(session))  # type: ignore[no-untyped-call]
            else:
                request = google.auth.transport.requests.Request(session=self._requests_session())
                await asyncio.to_thread(creds.refresh, request)
        except (google.auth.exceptions.TransportError, google.auth.exceptions.TimeoutError) as exc:
            failure = Unavailable(
                f"could not reach the credentials' token endpoint: {_describe(exc)}"
            )
        except google.auth.exceptions.GoogleAuthError as exc:
            failure = Unauthenticated(f"the credentials could not be refreshed: {_describe(exc)}")
        if failure is not None:
            raise failure

    def _requests_session(self) -> requests.Session:
        if self._session is None:
            self._session = _Session()
        return self._session

    async def _lookup_adc(self, deadline: float) -> _GoogleCredentials:
        loop = asyncio.get_running_loop()
        lookup = self._adc_lookup
        if (
            lookup is None
            or lookup.get_loop() is not loop
            or (lookup.done() and lookup.exception())
        ):
            lookup = loop.create_task(self._run_adc())
            self._adc_lookup = lookup
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                creds = await asyncio.shield(lookup)
        except TimeoutError:
            raise DeadlineExceeded(
                "the deadline passed while Application Default Credentials were looked up"
            ) from None
        self._adc = creds
        return creds

    async def _run_adc(self) -> _GoogleCredentials:
        try:
            creds, _ = await asyncio.to_thread(google.auth.default, scopes=list(self._scopes))
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise Unauthenticated(
                "no credentials were given and Application Default Credentials are not set up: "
                f"{_describe(exc)}"
            ) from exc
        return creds

    def close(self) -> None:
        """Close the HTTP session used for refreshes."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        return "<Authorizer>"


def _valid(creds: _Credentials) -> bool:
    """Whether the credentials' token can be sent as it is."""
    if not isinstance(creds, _AioCredentials):
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


def _scoped(creds: _Credentials, scopes: tuple[str, ...]) -> _Credentials:
    """The scoped version of credentials that require scopes (cached)."""
    requires = getattr(creds, "requires_scopes", False)
    if not requires:
        return creds
    copies = _SCOPED.get(creds)
    if copies is None:
        copies = _SCOPED[creds] = {}
    scoped = copies.get(scopes)
    if scoped is None:
        scoped = copies[scopes] = cast(
            _Credentials,
            google.auth.credentials.with_scopes_if_required(  # type: ignore[no-untyped-call]
                creds, list(scopes)
            ),
        )
    return scoped


async def _read_universe(creds: _Credentials) -> str:
    """The credentials' universe domain, read in a thread (it may ask the metadata server).

    google.auth.aio credentials have no lookup behind it: theirs is read on the loop.
    """
    failure: Unavailable | Unauthenticated | None = None
    try:
        if isinstance(creds, _AioCredentials):
            universe = getattr(creds, "universe_domain", DEFAULT_UNIVERSE)
        else:
            universe = await asyncio.to_thread(getattr, creds, "universe_domain", DEFAULT_UNIVERSE)
    except google.auth.exceptions.TransportError as exc:
        failure = Unavailable(
            f"could not read the universe domain of the credentials: {_describe(exc)}"
        )
    except google.auth.exceptions.GoogleAuthError as exc:
        failure = Unauthenticated(
            f"could not read the universe domain of the credentials: {_describe(exc)}"
        )
    finally:
        _UNIVERSE_READS.pop(creds, None)
    if failure is not None:
        raise failure
    universe = universe or DEFAULT_UNIVERSE
    _UNIVERSES[creds] = universe
    return str(universe)


async def _within(pending: asyncio.Future[_T], deadline: float, what: str) -> _T:
    """Wait for a shared task until the caller's deadline, without cancelling it for others."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(max(remaining, 0)):
            return await asyncio.shield(pending)
    except TimeoutError:
        raise DeadlineExceeded(f"the deadline passed before {what}") from None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: waiters may all have left


def _forget_refresh(creds: _Credentials) -> _Forget:
    return _Forget(weakref.ref(creds))


class _Forget:
    """Done-callback that drops a finished refresh from the in-flight table."""

    __slots__ = ("_ref",)

    def __init__(self, ref: weakref.ref[_Credentials]) -> None:
        self._ref = ref

    def __call__(self, future: asyncio.Future[None]) -> None:
        creds = self._ref()
        if creds is not None and _REFRESHES.get(creds) is future:
            del _REFRESHES[creds]
        if not future.cancelled():
            future.exception()  # retrieved: waiters may all have left


class _Session(requests.Session):
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
