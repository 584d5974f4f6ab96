"""Turning the caller's credentials into an ``authorization`` header, without blocking the loop.

Four kinds are accepted: a google-auth ``Credentials``, a ``google.auth.aio`` ``Credentials``
(both refreshed by ``_refresh``, one refresh at a time per object in the process, and refused
when their universe domain is not the client's), a plain access-token string (sent as is), or
None (the client's default; Application Default Credentials with the client's scopes, looked up
once in a thread, unless an emulator is configured).

The header is sent as call metadata on every wire and channel kind: grpc drops *call
credentials* on plaintext channels (grpc/grpc#8142), so they are never used.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Final

import google.auth
import google.auth.aio.credentials
import google.auth.credentials
import google.auth.exceptions
import requests

from agentspace_grpc import _refresh
from agentspace_grpc._errors import Unauthenticated, UsageError
from agentspace_grpc._refresh import DEFAULT_UNIVERSE, UNIVERSES, Credentials, scoped, valid

__all__ = ["CLOUD_PLATFORM_SCOPE", "DEFAULT_UNIVERSE", "Authorizer", "CredentialsLike"]

CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"

CredentialsLike = Credentials | str | None

_GoogleCredentials = google.auth.credentials.Credentials
# Credentials that cannot refresh: refreshing after a rejection cannot help.
_UNREFRESHABLE: Final = (
    google.auth.credentials.AnonymousCredentials,
    google.auth.aio.credentials.AnonymousCredentials,
    google.auth.aio.credentials.StaticCredentials,
)


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


def check_credentials(credentials: object) -> None:
    """Reject anything but google-auth credentials, a token string or None (no I/O)."""
    if isinstance(credentials, str):  # first: the credentials types are ABCs, slow to test
        _check_token(credentials)
        return
    if credentials is None or isinstance(credentials, Credentials):
        return
    raise UsageError(
        "credentials must be google.auth.credentials.Credentials, "
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
        self._adc_lookup: asyncio.Task[_GoogleCredentials] | None = None
        self._session: requests.Session | None = None
        self._last: tuple[str, str] | None = None  # (token, header) of the last call
        self._closed = False

    def effective(self, credentials: CredentialsLike) -> CredentialsLike:
        """The credentials a call with ``credentials`` uses (the default, or ADC once found)."""
        if credentials is not None:
            return credentials
        return self._default if self._default is not None else self._adc

    # ---- the header ------------------------------------------------------------------

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
        assert isinstance(creds, Credentials)
        if UNIVERSES.get(creds) != self._universe:
            return PENDING  # not checked yet (or refused: authorization() raises)
        creds = scoped(creds, self._scopes)
        token = creds.token
        return self._bearer(token) if token and valid(creds) else PENDING

    async def authorization(self, credentials: CredentialsLike, deadline: float) -> str | None:
        """The ``authorization`` value for a call, refreshing first if needed."""
        creds = self._default if credentials is None else credentials
        if type(creds) is str:
            return self._bearer(creds)
        if creds is None:
            if not self._use_adc:
                return None
            creds = self._adc or await self._lookup_adc(deadline)
        assert isinstance(creds, Credentials)
        await _refresh.check_universe(creds, self._universe, deadline)
        creds = scoped(creds, self._scopes)
        if not valid(creds):
            await _refresh.refresh(creds, deadline, self._token_session())
        if not creds.token:
            raise Unauthenticated("the credentials have no access token after a refresh")
        return self._bearer(creds.token)

    def _bearer(self, token: str) -> str:
        last = self._last
        if last is not None and last[0] == token:
            return last[1]
        header = "Bearer " + token
        if not self._closed:  # a closed client remembers no header
            self._last = (token, header)
        return header

    # ---- after a rejection -----------------------------------------------------------

    def refreshable(self, credentials: CredentialsLike) -> bool:
        """Whether refreshing the credentials can help after UNAUTHENTICATED (not a token
        string, nor anonymous or static credentials)."""
        creds = self.effective(credentials)
        return isinstance(creds, Credentials) and not isinstance(creds, _UNREFRESHABLE)

    async def refresh_rejected(
        self, credentials: CredentialsLike, rejected: str | None, deadline: float
    ) -> None:
        """After UNAUTHENTICATED: refresh :meth:`refreshable` credentials, unless their token
        changed since ``rejected`` was sent; concurrent rejections share one refresh."""
        creds = self.effective(credentials)
        assert isinstance(creds, Credentials)
        creds = scoped(creds, self._scopes)
        current = creds.token
        if not (current and rejected is not None and rejected != "Bearer " + current):
            await _refresh.refresh(creds, deadline, self._token_session())

    # ---- what the credentials say about themselves -----------------------------------

    def quota_project(self, credentials: CredentialsLike) -> str | None:
        """The quota project that the credentials carry, if any."""
        value = getattr(self.effective(credentials), "quota_project_id", None)
        return value if isinstance(value, str) and value else None

    def principal_hint(self, credentials: CredentialsLike) -> str | None:
        """Who the credentials act as, when they say so (a service account's email)."""
        creds = self.effective(credentials)
        if isinstance(creds, Credentials):
            for attribute in ("service_account_email", "signer_email", "account"):
                value = getattr(creds, attribute, None)
                if isinstance(value, str) and value and value != "default":
                    return value
        return None

    # ---- Application Default Credentials ---------------------------------------------

    async def _lookup_adc(self, deadline: float) -> _GoogleCredentials:
        loop = asyncio.get_running_loop()
        lookup = self._adc_lookup
        if (
            lookup is None
            or lookup.get_loop() is not loop
            or (lookup.done() and lookup.exception())
        ):
            lookup = self._adc_lookup = loop.create_task(self._run_adc())
        self._adc = await _refresh.within(
            lookup, deadline, "Application Default Credentials were looked up"
        )
        return self._adc

    async def _run_adc(self) -> _GoogleCredentials:
        # Raised after the except block: google-auth's error may chain the key file's parse
        # error, which holds the whole file (a private key among it).
        failure = None
        try:
            creds, _ = await asyncio.to_thread(google.auth.default, scopes=list(self._scopes))
        except google.auth.exceptions.DefaultCredentialsError as exc:
            failure = Unauthenticated(
                "no credentials were given and Application Default Credentials are not set up: "
                f"{_refresh.describe(exc)}"
            )
        if failure is not None:
            raise failure
        return creds

    def _token_session(self) -> requests.Session:
        if self._session is None:
            self._session = _refresh.TokenSession()
        return self._session

    def close(self) -> None:
        """Close the HTTP session used for refreshes and forget the last header."""
        self._closed = True
        self._last = None
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        return "<Authorizer>"
