"""The built-in third-party OAuth 2.0 provider's logic, strict like the real ones.

Its HTTP front is :class:`~._provider_front.ProviderFront` (``/provider/...`` on the emulator's
HTTP port) and its storage :class:`~._provider_store.ProviderStore`; this module decides.

- Authorize: auto-consent for the user that the emulator's consent ``state`` names (a
  ``login_hint`` naming someone else is refused); the answer is a redirect to ``redirect_uri``
  with ``code`` and ``state`` (RFC 6749 4.1). PKCE (RFC 7636, S256 only) is required from
  clients registered with it, and a code issued with a challenge is redeemed only with its
  verifier.
- Token: ``authorization_code`` and ``refresh_token`` grants, client authentication by HTTP
  Basic or form fields; injected faults (latency, 429, 5xx, ``invalid_grant``) first.
- Userinfo: the third party's "API": who an access token belongs to.
- Stats: counters (:data:`COUNTERS`), for tests and operators.

Refresh tokens are single use and rotate. Presenting the immediately previous token of a
family within ``grace_seconds`` of its rotation is accepted (the answer to the rotation may
have been lost); presenting any older token is reuse, and revokes the whole family with its
access tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import random
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlencode

from agentspace_grpc.emulator._clock import Clock
from agentspace_grpc.emulator._config import ProviderConfig
from agentspace_grpc.emulator._errors import OAuthError
from agentspace_grpc.emulator._identity import (
    ConsentStates,
    b64url,
    pkce_challenge,
    same_text,
)
from agentspace_grpc.emulator._provider_store import Code, ProviderStore, Tables

log = logging.getLogger("agentspace_grpc.emulator.provider")

_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")

#: Every counter that the provider's stats report (zero until it first happens).
COUNTERS: Final = (
    "authorizations",
    "code_exchanges",
    "refresh_requests",
    "refreshes",
    "grace_accepts",
    "invalid_grant",
    "families_revoked",
    "faults_429",
    "faults_5xx",
    "faults_invalid_grant",
)


@dataclass(frozen=True, slots=True)
class Client:
    """An OAuth client registered with the built-in provider (one per built-in connector)."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    default_scopes: tuple[str, ...]
    pkce: bool = True


def token_hash(token: str) -> str:
    """How the provider keeps a token: its SHA-256 (of any text a request can carry)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def redirect(uri: str, **params: str | None) -> str:
    """``uri`` with ``params`` (those not None) added to its query."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in uri else "?"
    return f"{uri}{separator}{query}"


class Provider:
    """Authorize, token, userinfo and stats, over a :class:`ProviderStore`."""

    def __init__(
        self,
        store: ProviderStore,
        config: ProviderConfig,
        clients: Mapping[str, Client],
        states: ConsentStates,
        clock: Clock,
    ) -> None:
        self._store = store
        self.config = config
        self.clients = dict(clients)
        self._states = states
        self._clock = clock
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"Provider(clients={sorted(self.clients)})"

    # ---- authorize -------------------------------------------------------------------------

    async def authorize(self, query: Mapping[str, str]) -> str:
        """Where the browser goes next: ``redirect_uri`` with a code, or with an error.

        Raises:
            OAuthError: the client or its redirect URI is unknown (no redirect is safe).
        """
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id")
        redirect_uri = query.get("redirect_uri", client.redirect_uri)
        if redirect_uri != client.redirect_uri:
            raise OAuthError("invalid_request", "redirect_uri is not registered for this client")
        state = query.get("state")
        if query.get("response_type") != "code":
            return redirect(redirect_uri, error="unsupported_response_type", state=state)
        try:
            user = self._states.read(state or "").user
        except ValueError as exc:
            return redirect(
                redirect_uri, error="access_denied", error_description=f"the state {exc}"
            )
        refusal = None
        hint = query.get("login_hint")
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method", "plain")
        if hint is not None and hint != user:
            refusal = ("access_denied", "login_hint names another user than the consent")
        elif challenge is None and client.pkce:
            refusal = ("invalid_request", "code_challenge is required (PKCE, S256)")
        elif challenge is not None and (method != "S256" or not _CHALLENGE.fullmatch(challenge)):
            refusal = ("invalid_request", "code_challenge must be an S256 challenge")
        if refusal is not None:
            error, description = refusal
            return redirect(redirect_uri, error=error, error_description=description, state=state)
        scopes = " ".join(tuple(query.get("scope", "").split()) or client.default_scopes)
        code = "emuac_" + secrets.token_urlsafe(24)
        expires_at = self._clock() + self.config.code_lifetime
        stored = Code(
            client.client_id, user, scopes, redirect_uri, expires_at, False, None, challenge
        )

        def work(tables: Tables) -> None:
            tables.add_code(token_hash(code), stored)
            tables.count("authorizations")

        await self._store.write(work)
        return redirect(redirect_uri, code=code, state=state)

    # ---- token -----------------------------------------------------------------------------

    async def token(self, fields: Mapping[str, str], authorization: str | None) -> dict[str, Any]:
        """The answer of the token endpoint to a form (and its ``authorization`` header).

        Raises:
            OAuthError: the error answer (an ``invalid_grant`` is counted).
        """
        try:
            client = self._authenticate(authorization, fields)
            grant_type = fields.get("grant_type", "")
            await self._inject_faults(grant_type)
            if grant_type == "authorization_code":
                return await self._exchange_code(client, fields)
            if grant_type == "refresh_token":
                return await self._refresh(client, fields)
            raise OAuthError(
                "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
            )
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                await self._count("invalid_grant")
            raise

    def _authenticate(self, header: str | None, fields: Mapping[str, str]) -> Client:
        client_id = fields.get("client_id")
        secret = fields.get("client_secret")
        if header and header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            raw_id, _, raw_secret = decoded.partition(":")
            client_id, secret = unquote(raw_id), unquote(raw_secret)
        client = self.clients.get(client_id or "")
        if (
            client is None
            or secret is None
            or not secrets.compare_digest(secret.encode(), client.client_secret.encode())
        ):
            raise OAuthError(
                "invalid_client",
                "client authentication failed",
                401,
                {"WWW-Authenticate": 'Basic realm="provider"'},
            )
        return client

    async def _inject_faults(self, grant_type: str) -> None:
        faults = self.config.faults
        if grant_type not in faults.grants:
            return
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        headers = {"Retry-After": str(faults.retry_after)} if faults.retry_after >= 0 else {}
        roll = self._random.random
        if faults.rate_429 and roll() < faults.rate_429:
            await self._count("faults_429")
            raise OAuthError("rate_limited", "too many requests (injected)", 429, headers)
        if faults.rate_5xx and roll() < faults.rate_5xx:
            await self._count("faults_5xx")
            raise OAuthError("temporarily_unavailable", "unavailable (injected)", 503, headers)
        if faults.invalid_grant_rate and roll() < faults.invalid_grant_rate:
            await self._count("faults_invalid_grant")
            raise OAuthError("invalid_grant", "the grant was rejected (injected)")

    async def _exchange_code(self, client: Client, fields: Mapping[str, str]) -> dict[str, Any]:
        code = fields.get("code", "")
        redirect_uri = fields.get("redirect_uri", "")
        verifier = fields.get("code_verifier")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        if verifier is not None and not _VERIFIER.fullmatch(verifier):
            raise OAuthError("invalid_request", "code_verifier is malformed (RFC 7636)")
        now = self._clock()
        access, refresh = self._new_access(now), _new_refresh()

        def work(tables: Tables) -> Code | OAuthError:
            found = tables.code(token_hash(code))
            if found is None or found.client_id != client.client_id:
                return OAuthError("invalid_grant", "unknown authorization code")
            if found.used:
                if found.family_id is not None:
                    self._revoke(tables, found.family_id)
                return OAuthError("invalid_grant", "authorization code already used")
            if found.expires_at < now:
                return OAuthError("invalid_grant", "authorization code expired")
            if redirect_uri != found.redirect_uri:
                return OAuthError("invalid_grant", "redirect_uri does not match the request")
            # Checked before the code is spent: someone else's wrong verifier must not burn
            # the code of the user it was issued to.
            expected = found.challenge
            if (verifier is None) != (expected is None) or (
                verifier is not None
                and expected is not None
                and not same_text(pkce_challenge(verifier), expected)
            ):
                return OAuthError(
                    "invalid_grant", "code_verifier does not match the code's challenge"
                )
            family = tables.new_family(client.client_id, found.user, found.scopes, now)
            tables.spend_code(token_hash(code), family)
            self._add_tokens(tables, family, 1, refresh, access, found.scopes, now)
            tables.count("code_exchanges")
            return found

        redeemed = await self._store.write(work)
        if isinstance(redeemed, OAuthError):
            raise redeemed
        answer = self._token_answer(access, refresh, redeemed.scopes)
        answer["account_id"] = "acct-" + hashlib.sha256(redeemed.user.encode()).hexdigest()[:12]
        answer["issued_at"] = int(now)
        answer["consented"] = True
        return answer

    async def _refresh(self, client: Client, fields: Mapping[str, str]) -> dict[str, Any]:
        presented = fields.get("refresh_token", "")
        if not presented:
            raise OAuthError("invalid_request", "refresh_token is required")
        wanted = tuple(fields.get("scope", "").split())
        now = self._clock()
        access, refresh = self._new_access(now), _new_refresh()
        grace = self.config.grace_seconds

        def work(tables: Tables) -> str | OAuthError:
            tables.count("refresh_requests")
            found = tables.refresh_token(token_hash(presented))
            if found is None:
                return OAuthError("invalid_grant", "unknown refresh token")
            family = tables.family(found[0])
            if family.client_id != client.client_id:
                return OAuthError("invalid_grant", "refresh token of another client")
            if family.revoked:
                return OAuthError("invalid_grant", "the grant was revoked")
            seq, current = found[1], family.current_seq
            if seq == current - 1 and now - family.current_at <= grace:
                tables.count("grace_accepts")
            elif seq != current:
                self._revoke(tables, family.id)
                return OAuthError(
                    "invalid_grant", "refresh token reuse detected: the grant was revoked"
                )
            granted = family.scopes.split()
            if any(s not in granted for s in wanted):
                return OAuthError("invalid_scope", "scope exceeds the grant")
            scopes = " ".join(wanted) if wanted else family.scopes
            tables.rotate(family.id, current + 1, now)
            self._add_tokens(tables, family.id, current + 1, refresh, access, scopes, now)
            tables.count("refreshes")
            return scopes

        outcome = await self._store.write(work)
        if isinstance(outcome, OAuthError):
            raise outcome
        return self._token_answer(access, refresh, outcome)

    def _add_tokens(
        self,
        tables: Tables,
        family: int,
        seq: int,
        refresh: str,
        access: str,
        scopes: str,
        now: float,
    ) -> None:
        tables.add_tokens(
            family,
            seq,
            refresh_hash=token_hash(refresh),
            access_hash=token_hash(access),
            scopes=scopes,
            expires_at=now + self.config.access_token_lifetime,
        )

    @staticmethod
    def _revoke(tables: Tables, family: int) -> None:
        if tables.revoke(family):
            tables.count("families_revoked")
            log.info("provider: refresh token reuse; grant family %d revoked", family)

    def _new_access(self, now: float) -> str:
        """An opaque access token, or with ``jwt_access_tokens`` a JWT whose ``exp`` is its
        expiry. The JWT's signature is random bytes: the provider knows its tokens by their
        hash, and clients only read the claims (as they may with a real provider's JWTs)."""
        if not self.config.jwt_access_tokens:
            return "emuat_" + secrets.token_urlsafe(32)
        claims = {"iat": int(now), "exp": int(now + self.config.access_token_lifetime)}
        parts = (
            b'{"alg":"HS256","typ":"JWT"}',
            json.dumps(claims).encode(),
            secrets.token_bytes(32),
        )
        return ".".join(b64url(part) for part in parts)

    def _token_answer(self, access: str, refresh: str, scopes: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if self.config.send_expires_in:
            answer["expires_in"] = max(1, round(self.config.access_token_lifetime))
        answer["refresh_token"] = refresh
        answer["scope"] = scopes
        return answer

    # ---- the "API", stats ------------------------------------------------------------------

    async def userinfo(self, token: str) -> dict[str, Any] | None:
        """Who an access token belongs to; None when it is unknown, expired or revoked."""
        now = self._clock()
        found = await self._store.read(lambda tables: tables.access_token(token_hash(token)))
        if found is None or found.revoked or found.expires_at <= now:
            return None
        return {
            "sub": found.user,
            "email": found.user,
            "client_id": found.client_id,
            "scope": found.scopes,
            "exp": int(found.expires_at),
        }

    async def stats(self) -> dict[str, int]:
        """Every counter (see :data:`COUNTERS`), across all processes on the data dir."""
        found = await self._store.read(lambda tables: tables.counters())
        return {name: found.get(name, 0) for name in COUNTERS}

    async def _count(self, name: str) -> None:
        await self._store.write(lambda tables: tables.count(name))


def _new_refresh() -> str:
    return "emurt_" + secrets.token_urlsafe(32)
