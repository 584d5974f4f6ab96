"""Turning the caller's credentials into an ``authorization`` header, without blocking the loop.

Three kinds are accepted: a google-auth ``Credentials`` (refreshed with ``asyncio.to_thread``,
one refresh at a time per credentials object across every caller in the process), a plain
access-token string (sent as is), or None (Application Default Credentials with the
cloud-platform scope, looked up once in a thread; skipped when an emulator is configured).

The header is sent as call metadata on every wire and channel kind: grpc drops *call
credentials* on plaintext channels (grpc/grpc#8142), so they are never used.
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from typing import Any, Final, cast
from urllib.parse import urlsplit

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests

from agentspace_grpc._errors import DeadlineExceeded, Unauthenticated, Unavailable, UsageError
from agentspace_grpc._transports.base import is_loopback

__all__ = ["CLOUD_PLATFORM_SCOPE", "Authorizer", "CredentialsLike"]

CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"

CredentialsLike = google.auth.credentials.Credentials | str | None

_GoogleCredentials = google.auth.credentials.Credentials

# In-flight refreshes, one per credentials object (shared by every client in the process).
_REFRESHES: weakref.WeakKeyDictionary[_GoogleCredentials, asyncio.Future[None]] = (
    weakref.WeakKeyDictionary()
)
# Scoped copies of credentials that need scopes, so that the copy (and its token) is reused.
_SCOPED: weakref.WeakKeyDictionary[_GoogleCredentials, _GoogleCredentials] = (
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
    """Reject anything but a google-auth Credentials, a token string or None (no I/O)."""
    if credentials is None or isinstance(credentials, _GoogleCredentials):
        return
    if isinstance(credentials, str):
        _check_token(credentials)
        return
    raise UsageError(
        f"{what} must be google.auth.credentials.Credentials, an access-token string or None, "
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
    """

    def __init__(self, default: CredentialsLike, *, use_adc: bool) -> None:
        check_credentials(default)
        self._default = default
        self._use_adc = use_adc and default is None
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
        if isinstance(creds, _GoogleCredentials):
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
        assert isinstance(creds, _GoogleCredentials)
        creds = _scoped(creds)
        token = creds.token
        if token and creds.valid:
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
        assert isinstance(creds, _GoogleCredentials)
        creds = _scoped(creds)
        if not creds.valid:
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
        if isinstance(creds, _GoogleCredentials):
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
        if not isinstance(creds, _GoogleCredentials) or isinstance(
            creds, google.auth.credentials.AnonymousCredentials
        ):
            return False
        creds = _scoped(creds)
        current = creds.token
        if current and rejected is not None and rejected != "Bearer " + current:
            return True
        await self._refresh(creds, deadline)
        return True

    # ---- refresh ---------------------------------------------------------------------

    async def _refresh(self, creds: _GoogleCredentials, deadline: float) -> None:
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

    async def _run_refresh(self, creds: _GoogleCredentials) -> None:
        request = google.auth.transport.requests.Request(session=self._requests_session())
        # google-auth's exceptions can hold the token endpoint's answer (tokens) or the request
        # (refresh token, client secret): ours are raised after the except blocks, so that
        # none stays attached, not even as __context__.
        failure: Unavailable | Unauthenticated | None = None
        try:
            await asyncio.to_thread(creds.refresh, request)
        except google.auth.exceptions.TransportError as exc:
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
            creds, _ = await asyncio.to_thread(google.auth.default, scopes=[CLOUD_PLATFORM_SCOPE])
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


def _scoped(creds: _GoogleCredentials) -> _GoogleCredentials:
    """The cloud-platform-scoped version of credentials that require scopes (cached)."""
    requires = getattr(creds, "requires_scopes", False)
    if not requires:
        return creds
    scoped = _SCOPED.get(creds)
    if scoped is None:
        scoped = cast(
            _GoogleCredentials,
            google.auth.credentials.with_scopes_if_required(  # type: ignore[no-untyped-call]
                creds, [CLOUD_PLATFORM_SCOPE]
            ),
        )
        _SCOPED[creds] = scoped
    return scoped


def _forget_refresh(creds: _GoogleCredentials) -> _Forget:
    return _Forget(weakref.ref(creds))


class _Forget:
    """Done-callback that drops a finished refresh from the in-flight table."""

    __slots__ = ("_ref",)

    def __init__(self, ref: weakref.ref[_GoogleCredentials]) -> None:
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
