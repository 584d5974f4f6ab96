"""The DataConnectorService and AuthorizationService logic, independent of the wire.

Both fronts hand each call to :meth:`Service.handle` (a :class:`~._call.Handler`); it answers
a response message or raises :class:`ServiceError`. The fronts log any other exception under an
incident id and answer INTERNAL: never a client error, and never a message with a secret in it.

Data connectors and authorizations are the same thing underneath, OAuth resources (a
:class:`Connector` of either ``kind``): one store, one refresh protocol, one consent. Only the
answers differ: where a connector's acquire fails with NOT_FOUND or FAILED_PRECONDITION because
the user must (re)authorize, an authorization's succeeds with an ``authorization_uri``.

Acquiring, in order: the process's memory cache (short-lived, see
``store.memory_cache_seconds``), the shared store's cache, then one refresh per
(resource, user, scope) flight in this process, serialized across processes by the store's
lease (see :mod:`._store`).

Consent: a state (:class:`ConsentStates`) signed by the emulator, expiring, bound to the user and
the resource, starts it at ``GET /emulator/v1/consent?state=...`` (:meth:`Service.consent_uri`,
a URL a browser opens without credentials: the state is the credential) or with the user's
bearer token; the provider is sent the state and a PKCE challenge derived from it, and the store
RPCs accept the redirect only from the user the state names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from google.protobuf import message
from google.rpc import code_pb2

from agentspace_grpc import _proto
from agentspace_grpc.emulator._call import Call
from agentspace_grpc.emulator._clock import Clock
from agentspace_grpc.emulator._config import (
    AUTHORIZATION,
    AUTHORIZATION_PATTERN,
    CONNECTOR,
    INSTANCE_PLACEHOLDER,
    RESOURCE_SHAPES,
    Config,
    Connector,
)
from agentspace_grpc.emulator._errors import (
    AUTHORIZATION_NOT_FOUND,
    CONNECTOR_NOT_FOUND,
    REFRESH_TOKEN_NOT_FOUND,
    REFRESH_TOKEN_REVOKED,
    SCOPES_MISSING,
    ServiceError,
    invalid_argument,
    unauthenticated,
)
from agentspace_grpc.emulator._identity import (
    Consent,
    ConsentStates,
    Identity,
    IdentityError,
    pkce_challenge,
)
from agentspace_grpc.emulator._store import (
    Busy,
    CachedToken,
    Grant,
    Leased,
    NewAccessToken,
    Store,
    scope_key,
)
from agentspace_grpc.emulator._upstream import InvalidGrant, TokenAnswer, token_request

log = logging.getLogger("agentspace_grpc.emulator")

_STANDARD_FIELDS: Final = frozenset(
    {"access_token", "refresh_token", "id_token", "token_type", "expires_in", "scope"}
)
_INT64: Final = (-(2**63), 2**63 - 1)
# kind -> (name pattern, the pattern as the docs write it, the kind with its article, its RPCs)
_SHAPES: Final = {
    CONNECTOR: (
        *RESOURCE_SHAPES[CONNECTOR],
        "a data connector",
        "AcquireAccessToken and AcquireAndStoreRefreshToken",
    ),
    AUTHORIZATION: (
        *RESOURCE_SHAPES[AUTHORIZATION],
        "an authorization",
        "AcquireUserAuthorization and StoreUserAuthorization",
    ),
}
#: The errors that mean "the user must (re)authorize": an authorization answers them with a URI.
_CONSENT_NEEDED: Final = frozenset({REFRESH_TOKEN_NOT_FOUND, REFRESH_TOKEN_REVOKED, SCOPES_MISSING})
CONSENT_PATH: Final = "/emulator/v1/consent"


@dataclass(frozen=True, slots=True)
class _Memory:
    grant: Grant
    good_until: float
    # Built once and handed out on every hit (the fronts only read it).
    answer: message.Message = field(repr=False)


class Service:
    """Acquire, store and check, over a store, a set of OAuth resources and an HTTP session.

    Args:
        resources: the data connectors and authorizations, by name.
        http_url: the emulator's HTTP port, where consent URIs point.
    """

    def __init__(
        self,
        config: Config,
        resources: Mapping[str, Connector],
        store: Store,
        identity: Identity,
        states: ConsentStates,
        session: aiohttp.ClientSession,
        owner: str,
        *,
        http_url: str,
        clock: Clock,
    ) -> None:
        self.config = config
        self.resources = dict(resources)
        self._http_url = http_url
        self.store = store
        self.identity = identity
        self._session = session
        self._owner = owner
        self.states = states
        self._clock = clock
        self._memory: dict[tuple[str, str, str], _Memory] = {}
        self._flights: dict[tuple[str, str, str], asyncio.Task[CachedToken]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._handlers = {
            "AcquireAccessToken": self.acquire_access_token,
            "AcquireAndStoreRefreshToken": self.acquire_and_store_refresh_token,
            "CheckRefreshToken": self.check_refresh_token,
            "AcquireUserAuthorization": self.acquire_user_authorization,
            "StoreUserAuthorization": self.store_user_authorization,
        }

    def __repr__(self) -> str:
        return f"Service(resources={sorted(self.resources)})"

    async def handle(self, call: Call) -> message.Message:
        """Authenticates the caller, then runs one RPC (a :class:`Handler` of both fronts)."""
        try:
            user = self.identity.user_from_authorization(call.authorization)
        except IdentityError as exc:
            raise unauthenticated(str(exc)) from None
        handler = self._handlers.get(call.row.name)
        if handler is None:
            raise ServiceError(code_pb2.UNIMPLEMENTED, f"method {call.row.name} is not implemented")
        answer: message.Message = await handler(user, call.request)  # type: ignore[operator]
        return answer

    async def close(self) -> None:
        """Cancels refresh flights still running (at shutdown)."""
        for task in list(self._flights.values()):
            task.cancel()
        for task in list(self._flights.values()):
            with contextlib.suppress(BaseException):
                await task

    # ---- resources and scopes --------------------------------------------------------------

    def resource(self, name: str, kind: str | None = None) -> Connector:
        """The configured resource ``name`` of ``kind`` (None: either, by the name's shape), or
        INVALID_ARGUMENT / NOT_FOUND."""
        if kind is None:
            kind = AUTHORIZATION if AUTHORIZATION_PATTERN.fullmatch(name) else CONNECTOR
        if not name:
            raise invalid_argument(f"name is required (the {kind}'s resource name)")
        pattern, shape, what, _ = _SHAPES[kind]
        if not pattern.fullmatch(name):
            hint = ""
            for other, (other_pattern, _, other_what, methods) in _SHAPES.items():
                if other != kind and other_pattern.fullmatch(name):
                    hint = f" ({other_what} is served by {methods})"
            raise invalid_argument(f"name {name!r} is not {what}: expected {shape}{hint}")
        found = self.resources.get(name)
        if found is not None:
            return found
        if kind == CONNECTOR:
            reason, label = CONNECTOR_NOT_FOUND, "connector"
        else:
            reason, label = AUTHORIZATION_NOT_FOUND, "authorization"
        raise ServiceError(
            code_pb2.NOT_FOUND,
            f"{kind} {name} does not exist in this emulator (configure it)",
            reason=reason,
            metadata={label: name},
        )

    @staticmethod
    def _check_scopes(
        connector: Connector,
        granted: Sequence[str],
        wanted: Sequence[str],
        action: str,
    ) -> None:
        missing = [s for s in wanted if s not in granted]
        if connector.kind == AUTHORIZATION:  # every token of an authorization needs its scopes
            missing += [s for s in connector.default_scopes if s not in granted]
        if action:
            required = connector.actions.get(action)
            if required is None:
                known = ", ".join(sorted(connector.actions)) or "none"
                raise invalid_argument(
                    f"action {action!r} is not configured for {connector.name} (known: {known})"
                )
            missing += [s for s in required if s not in granted and s not in missing]
        if missing:
            why = f"action {action!r} needs" if action else "the request asks for"
            raise ServiceError(
                code_pb2.FAILED_PRECONDITION,
                f"{why} scopes the user did not grant for {connector.name}: "
                f"{' '.join(missing)}; re-authorize with them",
                reason=SCOPES_MISSING,
                metadata={
                    "connector": connector.name,
                    "missing_scopes": " ".join(missing),
                    **({"action": action} if action else {}),
                },
            )

    @staticmethod
    def _not_found(connector: str, user: str) -> ServiceError:
        return ServiceError(
            code_pb2.NOT_FOUND,
            f"no refresh token is stored for user {user} on {connector}: the user must "
            "authorize (AcquireAndStoreRefreshToken)",
            reason=REFRESH_TOKEN_NOT_FOUND,
            metadata={"connector": connector, "user": user},
        )

    @staticmethod
    def _revoked(connector: str, user: str) -> ServiceError:
        return ServiceError(
            code_pb2.FAILED_PRECONDITION,
            f"the third party revoked the grant of user {user} on {connector}: the user must "
            "authorize again",
            reason=REFRESH_TOKEN_REVOKED,
            metadata={"connector": connector, "user": user},
        )

    # ---- AcquireAccessToken, AcquireUserAuthorization ------------------------------------------

    async def acquire_access_token(
        self, user: str, request: _proto.AcquireAccessTokenRequest
    ) -> message.Message:
        """A valid access token for (connector, user), refreshing at most once at a time."""
        connector = self.resource(request.name, CONNECTOR)
        wanted = tuple(dict.fromkeys(request.scope.split()))
        return await self._acquire(connector, user, wanted, request.action)

    async def acquire_user_authorization(
        self, user: str, request: _proto.AcquireUserAuthorizationRequest
    ) -> message.Message:
        """The user's token for an authorization, or, when they must (re)authorize, a success
        with the ``authorization_uri`` to send them to."""
        authorization = self.resource(request.name, AUTHORIZATION)
        try:
            return await self._acquire(authorization, user, (), "")
        except ServiceError as exc:
            if exc.reason not in _CONSENT_NEEDED:
                raise
        return _proto.AcquireUserAuthorizationResponse(
            authorization_uri=self.consent_uri(user, authorization)
        )

    async def _acquire(
        self, connector: Connector, user: str, wanted: tuple[str, ...], action: str
    ) -> message.Message:
        """The answer for (resource, user, scopes): memory, store, else one refresh flight."""
        key = scope_key(wanted)
        memory_key = (connector.name, user, key)
        now = self._clock()
        remembered = self._memory.get(memory_key)
        if remembered is not None and now < remembered.good_until:
            self._check_scopes(connector, remembered.grant.scopes, wanted, action)
            return remembered.answer
        seen = await self.store.cached(connector.name, user, key)
        if seen == "missing":
            raise self._not_found(connector.name, user)
        grant = seen.grant if isinstance(seen, CachedToken) else seen
        if grant.revoked:
            raise self._revoked(connector.name, user)
        self._check_scopes(connector, grant.scopes, wanted, action)
        if isinstance(seen, CachedToken) and seen.usable(now, connector.expiry_margin_seconds):
            token = seen
        else:
            flight = self._flights.get(memory_key)
            if flight is None:
                flight = asyncio.ensure_future(self._obtain(connector, user, key, wanted))
                self._flights[memory_key] = flight
                flight.add_done_callback(lambda done: self._end_flight(memory_key, done))
            token = await asyncio.shield(flight)
            self._check_scopes(connector, token.grant.scopes, wanted, action)
        answer = self._answer(connector, token.token, token.grant.scopes)
        self._remember(memory_key, token, connector, answer)
        return answer

    def _end_flight(self, key: tuple[str, str, str], done: asyncio.Task[CachedToken]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved: the waiters got it

    def _remember(
        self,
        key: tuple[str, str, str],
        token: CachedToken,
        connector: Connector,
        answer: message.Message,
    ) -> None:
        if self.config.memory_cache_seconds <= 0 or token.expires_at <= token.issued_at:
            return
        good_until = min(
            token.good_until(connector.expiry_margin_seconds),
            self._clock() + self.config.memory_cache_seconds,
        )
        self._memory[key] = _Memory(token.grant, good_until, answer)

    def _forget(self, connector: str, user: str) -> None:
        for key in [k for k in self._memory if k[0] == connector and k[1] == user]:
            del self._memory[key]

    @staticmethod
    def _answer(connector: Connector, token: str, scopes: Sequence[str]) -> message.Message:
        if connector.kind == AUTHORIZATION:
            return _proto.AcquireUserAuthorizationResponse(
                refresh_token_info=_proto.AcquireUserAuthorizationResponse.RefreshTokenInfo(
                    scopes=list(scopes)
                ),
                access_token=token,
            )
        return _proto.AcquireAccessTokenResponse(
            refresh_token_info=_proto.RefreshTokenInfo(name=connector.name, scopes=list(scopes)),
            access_token=token,
        )

    async def _obtain(
        self, connector: Connector, user: str, key: str, wanted: tuple[str, ...]
    ) -> CachedToken:
        """One refresh flight: cache, else lease and refresh, else wait for the holder."""
        lock = self._locks.get((connector.name, user))
        if lock is None:
            lock = self._locks[connector.name, user] = asyncio.Lock()
        async with lock:
            delay = 0.005
            while True:
                now = self._clock()
                outcome = await self.store.try_lease(
                    connector.name,
                    user,
                    key,
                    owner=self._owner,
                    now=now,
                    lease_seconds=self.config.lease_seconds,
                    margin_cap=connector.expiry_margin_seconds,
                )
                if outcome == "missing":
                    raise self._not_found(connector.name, user)
                if isinstance(outcome, Grant):
                    raise self._revoked(connector.name, user)
                if isinstance(outcome, CachedToken):
                    return outcome
                if isinstance(outcome, Busy):
                    # Someone else refreshes: re-read the store when it is done.
                    await asyncio.sleep(min(delay, max(0.001, outcome.until - now)))
                    delay = min(delay * 2, 0.1)
                    continue
                refreshed = await self._refresh(connector, user, key, wanted, outcome)
                if refreshed is not None:
                    return refreshed
                delay = 0.005  # a lost race: read the store again

    async def _refresh(
        self,
        connector: Connector,
        user: str,
        key: str,
        wanted: tuple[str, ...],
        leased: Leased,
    ) -> CachedToken | None:
        """Refreshes upstream under our lease; None when the invalid_grant was a race or a new
        consent replaced the grant meanwhile (the store is read again)."""
        grant = leased.grant
        form = {"grant_type": "refresh_token", "refresh_token": leased.refresh_token}
        if wanted:
            form["scope"] = " ".join(wanted)
        try:
            self._check_scopes(connector, grant.scopes, wanted, "")
            answer = await token_request(self._session, connector, form, grant.instance_uri)
        except InvalidGrant:
            verdict = await self.store.resolve_invalid_grant(
                connector.name, user, owner=self._owner, used_version=grant.version
            )
            self._forget(connector.name, user)
            if verdict == "race":
                log.info(
                    "invalid_grant after a lost refresh race on %s; re-reading", connector.name
                )
                return None
            log.warning("the third party revoked a grant on %s", connector.name)
            raise self._revoked(connector.name, user) from None
        except BaseException:
            await asyncio.shield(self.store.release_lease(connector.name, user, self._owner))
            raise
        now = self._clock()
        access = self._cacheable(connector, answer, wanted or grant.scopes, now)
        version = await asyncio.shield(
            self.store.commit_refresh(
                connector.name,
                user,
                key,
                owner=self._owner,
                used_version=grant.version,
                new_refresh_token=answer.refresh_token,
                access=access,
                now=now,
            )
        )
        if version is None:  # a new consent landed meanwhile: serve from it instead
            log.info("a new consent replaced the grant refreshed on %s; re-reading", connector.name)
            self._forget(connector.name, user)
            return None
        fresh_grant = Grant(grant.resource, user, version, grant.scopes, False, grant.instance_uri)
        expires = access.expires_at if access is not None else now
        return CachedToken(
            answer.access_token, access_scopes(answer, wanted, grant), now, expires, fresh_grant
        )

    @staticmethod
    def _cacheable(
        connector: Connector, answer: TokenAnswer, scopes: Sequence[str], now: float
    ) -> NewAccessToken | None:
        lifetime = answer.expires_in
        if lifetime is None:
            lifetime = connector.default_expires_in or None
        if lifetime is None or lifetime <= 0:
            return None
        return NewAccessToken(answer.access_token, tuple(scopes), now, now + lifetime)

    # ---- consent -------------------------------------------------------------------------------

    def consent_uri(self, user: str, connector: Connector) -> str:
        """A URL on the HTTP port that starts ``user``'s consent to ``connector`` in a browser
        with no credentials: its signed, expiring state names both, and is the credential."""
        if connector.uses_instance:
            raise invalid_argument(
                f"{connector.name} takes an instance_uri, which a consent URI does not carry: "
                f"start its consent at GET {CONSENT_PATH}?connector=...&instance_uri=HOST with "
                "the user's bearer token"
            )
        state = self.states.issue(connector.name, user, connector.default_scopes)
        return f"{self._http_url}{CONSENT_PATH}?{urlencode({'state': state})}"

    def start_consent(
        self, user: str, connector: Connector, scopes: Sequence[str], instance_uri: str = ""
    ) -> str:
        """The third party's authorize URL for ``user``'s consent, with a new state."""
        state = self.states.issue(connector.name, user, tuple(scopes) or connector.default_scopes)
        return self.authorize_url(state, instance_uri)

    def authorize_url(self, state: str, instance_uri: str = "") -> str:
        """The third party's authorize URL for the consent a state names (PKCE when the
        resource uses it); INVALID_ARGUMENT for a state that is not valid."""
        try:
            consent = self.states.read(state)
        except ValueError as exc:
            raise invalid_argument(f"the state {exc}") from None
        connector = self.resource(consent.connector)
        base = ""
        if INSTANCE_PLACEHOLDER in connector.authorize_url:
            try:
                base = connector.instance_base(instance_uri)
            except ValueError as exc:
                raise invalid_argument(str(exc)) from None
        params = {
            "response_type": "code",
            "client_id": connector.client_id,
            "redirect_uri": connector.redirect_uri,
            "scope": " ".join(consent.scopes),
            "state": state,
            "login_hint": consent.user,
            "access_type": "offline",
            "prompt": "consent",
        }
        if connector.pkce:
            params["code_challenge"] = pkce_challenge(self.states.verifier(state))
            params["code_challenge_method"] = "S256"
        url = connector.authorize_url.replace(INSTANCE_PLACEHOLDER, base)
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}{urlencode(params)}"

    def _check_state(self, state: str | None, connector: Connector, user: str) -> Consent:
        if not state:
            raise invalid_argument(
                "full_redirect_uri has no state parameter: start the consent from the "
                "emulator's consent endpoint"
            )
        try:
            consent = self.states.read(state)
        except ValueError as exc:
            raise invalid_argument(f"the state in full_redirect_uri {exc}") from None
        if consent.connector != connector.name:
            raise invalid_argument(
                f"the consent in full_redirect_uri was started for {consent.connector}, not "
                f"{connector.name}"
            )
        if consent.user != user:
            raise invalid_argument(
                f"the consent in full_redirect_uri was started by {consent.user}, but the "
                f"caller is {user}: store the token with that end user's credentials"
            )
        return consent

    # ---- AcquireAndStoreRefreshToken, StoreUserAuthorization -------------------------------------

    async def acquire_and_store_refresh_token(
        self, user: str, request: _proto.AcquireAndStoreRefreshTokenRequest
    ) -> _proto.AcquireAndStoreRefreshTokenResponse:
        """Exchanges the code in ``full_redirect_uri`` and stores the refresh token."""
        connector = self.resource(request.name, CONNECTOR)
        answer = await self._store(
            connector, user, request.full_redirect_uri, request.scopes, request.instance_uri
        )
        return _proto.AcquireAndStoreRefreshTokenResponse(
            additional_oauth_responses=_additional(answer.extra)
        )

    async def store_user_authorization(
        self, user: str, request: _proto.StoreUserAuthorizationRequest
    ) -> _proto.StoreUserAuthorizationResponse:
        """Exchanges the code in ``full_redirect_uri`` and stores the grant (empty answer)."""
        authorization = self.resource(request.name, AUTHORIZATION)
        await self._store(authorization, user, request.full_redirect_uri, (), "")
        return _proto.StoreUserAuthorizationResponse()

    async def _store(
        self,
        connector: Connector,
        user: str,
        full_redirect_uri: str,
        asked_scopes: Sequence[str],
        instance_uri: str,
    ) -> TokenAnswer:
        """Checks the redirect, exchanges its code and commits the grant; the provider's answer."""
        if not full_redirect_uri:
            raise invalid_argument("full_redirect_uri is required (the redirect with code=...)")
        parts = urlsplit(full_redirect_uri)
        params = parse_qs(parts.query)
        if "error" in params:
            raise invalid_argument(
                f"full_redirect_uri carries error={params['error'][0]!r} instead of a code: the "
                "user did not consent"
            )
        codes = params.get("code")
        if not codes or not codes[0]:
            raise invalid_argument("full_redirect_uri has no code parameter")
        try:
            instance = connector.instance_base(instance_uri)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        base = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if base != connector.redirect_uri:
            raise invalid_argument(
                f"full_redirect_uri does not start with the redirect URI of {connector.name} "
                f"({connector.redirect_uri})"
            )
        state = params.get("state", [None])[0]
        consent = self._check_state(state, connector, user)
        form = {
            "grant_type": "authorization_code",
            "code": codes[0],
            "redirect_uri": connector.redirect_uri,
        }
        if connector.pkce and state:
            form["code_verifier"] = self.states.verifier(state)
        try:
            answer = await token_request(self._session, connector, form, instance)
        except InvalidGrant:
            raise invalid_argument(
                "the third party rejected the authorization code in full_redirect_uri "
                "(invalid_grant: used already, expired or unknown); run the consent again"
            ) from None
        if answer.refresh_token is None:
            raise ServiceError(
                code_pb2.FAILED_PRECONDITION,
                f"the third party returned no refresh token for {connector.name} (offline "
                "access not granted?)",
            )
        scopes = answer.scopes or tuple(asked_scopes) or consent.scopes or connector.default_scopes
        now = self._clock()
        access = self._cacheable(connector, answer, scopes, now)
        await asyncio.shield(
            self.store.store_grant(
                connector.name,
                user,
                scopes=scopes,
                refresh_token=answer.refresh_token,
                instance_uri=instance,
                access=access,
                now=now,
            )
        )
        self._forget(connector.name, user)
        log.info("stored a refresh token for a user on %s", connector.name)
        return answer

    # ---- CheckRefreshToken -----------------------------------------------------------------

    async def check_refresh_token(
        self, user: str, request: _proto.CheckRefreshTokenRequest
    ) -> _proto.CheckRefreshTokenResponse:
        """What the store holds for (connector, user)."""
        connector = self.resource(request.name, CONNECTOR)
        grant = await self.store.get_grant(connector.name, user)
        if grant is None:
            raise self._not_found(connector.name, user)
        if grant.revoked:
            raise self._revoked(connector.name, user)
        return _proto.CheckRefreshTokenResponse(
            refresh_token_info=_proto.RefreshTokenInfo(name=connector.name, scopes=grant.scopes)
        )


def access_scopes(answer: TokenAnswer, wanted: Sequence[str], grant: Grant) -> tuple[str, ...]:
    """The scopes an access token carries: the provider's word, else what was asked."""
    return answer.scopes or tuple(wanted) or grant.scopes


def _additional(extra: Mapping[str, Any]) -> list[_proto.AdditionalOAuthResponse]:
    out = []
    for key in sorted(extra):
        if key in _STANDARD_FIELDS:
            continue
        value = extra[key]
        item = _proto.AdditionalOAuthResponse(key=key)
        if isinstance(value, bool):
            item.bool_value = value
        elif isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            item.int_value = value
        elif isinstance(value, str):
            item.string_value = value
        else:
            item.string_value = json.dumps(value, separators=(",", ":"))
        out.append(item)
    return out
