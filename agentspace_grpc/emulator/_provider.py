"""The built-in third-party OAuth 2.0 provider, strict like the real ones.

Served over HTTP on the emulator's HTTP port:

- ``GET /provider/authorize``: auto-consent for the user that the emulator's consent ``state``
  names (a ``login_hint`` naming someone else is refused); redirects to ``redirect_uri`` with
  ``code`` and ``state`` (RFC 6749 4.1). PKCE (RFC 7636, S256 only) is required from clients
  registered with it, and a code issued with a challenge is redeemed only with its verifier.
- ``POST /provider/token``: ``authorization_code`` and ``refresh_token`` grants, client
  authentication by HTTP Basic or form fields.
- ``GET /provider/userinfo``: the third party's "API": who an access token belongs to (401 if
  it is unknown, expired or its grant was revoked).
- ``GET /provider/stats``: counters (refreshes, ``invalid_grant`` answers, revoked families,
  grace-window acceptances, injected faults), for tests and operators.

Refresh tokens are single use and rotate. Presenting the immediately previous token of a
family within ``grace_seconds`` of its rotation is accepted (the answer to the rotation may
have been lost); presenting any older token is reuse, and revokes the whole family with its
access tokens. State lives in ``provider.sqlite3`` in the data directory, so all emulator
processes on that directory are one provider; tokens are stored only as SHA-256 hashes.
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
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode

from aiohttp import web

from agentspace_grpc.emulator._config import ProviderConfig
from agentspace_grpc.emulator._db import Database, write_transaction
from agentspace_grpc.emulator._identity import ConsentStates, pkce_challenge, same_text

DB_FILE_NAME: Final = "provider.sqlite3"
log = logging.getLogger("agentspace_grpc.emulator.provider")

_MIGRATIONS: Final = (
    (
        """CREATE TABLE codes (
            code_hash TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            user TEXT NOT NULL,
            scopes TEXT NOT NULL,
            redirect_uri TEXT NOT NULL,
            expires_at REAL NOT NULL,
            used INTEGER NOT NULL DEFAULT 0,
            family_id INTEGER
        ) WITHOUT ROWID""",
        """CREATE TABLE families (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            client_id TEXT NOT NULL,
            user TEXT NOT NULL,
            scopes TEXT NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            current_seq INTEGER NOT NULL,
            current_at REAL NOT NULL
        )""",
        """CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            family_id INTEGER NOT NULL,
            seq INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE access_tokens (
            token_hash TEXT PRIMARY KEY,
            family_id INTEGER NOT NULL,
            scopes TEXT NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ),
    ("ALTER TABLE codes ADD COLUMN code_challenge TEXT",),
)
_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")

#: Every counter that /provider/stats reports (zero until it first happens).
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


class OAuthError(Exception):
    """An OAuth error answer: ``error`` code, HTTP status, description, extra headers."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON answer of RFC 6749 section 5.2."""
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers={"Cache-Control": "no-store", **self.headers},
        )


def token_hash(token: str) -> str:
    """How the provider keeps a token: its SHA-256 (of any text a request can carry)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


async def read_form(request: web.Request) -> dict[str, str]:
    """The fields of an OAuth token request (RFC 6749: UTF-8 form encoding, each field once).

    Raises:
        OAuthError: ``invalid_request`` naming what is wrong with the body.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.read()).decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not valid UTF-8") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise OAuthError("invalid_request", "a form field is given more than once")
    return fields


def _bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


class Provider:
    """The provider's logic and its HTTP handlers."""

    def __init__(
        self,
        data_dir: Path,
        config: ProviderConfig,
        clients: Mapping[str, Client],
        states: ConsentStates,
    ) -> None:
        self._db = Database(data_dir / DB_FILE_NAME, _MIGRATIONS, "provider")
        self.config = config
        self.clients = dict(clients)
        self._states = states
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"Provider(clients={sorted(self.clients)})"

    async def open(self) -> None:
        """Creates or migrates the provider's database."""
        await self._db.open()

    async def close(self) -> None:
        """Closes the provider's database."""
        await self._db.close()

    def add_routes(self, app: web.Application) -> None:
        """Mounts the provider's endpoints under ``/provider``."""
        app.router.add_get("/provider/authorize", self.handle_authorize)
        app.router.add_post("/provider/token", self.handle_token)
        app.router.add_get("/provider/userinfo", self.handle_userinfo)
        app.router.add_get("/provider/stats", self.handle_stats)

    # ---- authorize -------------------------------------------------------------------------

    async def handle_authorize(self, request: web.Request) -> web.StreamResponse:
        """Auto-consent for the user the consent state names; redirect back with a code."""
        query = request.query
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            return web.json_response(
                {"error": "invalid_client", "error_description": "unknown client_id"}, status=400
            )
        redirect_uri = query.get("redirect_uri", client.redirect_uri)
        if redirect_uri != client.redirect_uri:
            return web.json_response(
                {
                    "error": "invalid_request",
                    "error_description": "redirect_uri is not registered for this client",
                },
                status=400,
            )
        state = query.get("state")
        if query.get("response_type") != "code":
            return _redirect(redirect_uri, error="unsupported_response_type", state=state)
        try:
            user = self._states.read(state or "").user
        except ValueError as exc:
            return _redirect(
                redirect_uri, error="access_denied", error_description=f"the state {exc}"
            )
        hint = query.get("login_hint")
        if hint is not None and hint != user:
            return _redirect(
                redirect_uri,
                error="access_denied",
                error_description="login_hint names another user than the consent",
                state=state,
            )
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method", "plain")
        if challenge is None and client.pkce:
            return _redirect(
                redirect_uri,
                error="invalid_request",
                error_description="code_challenge is required (PKCE, S256)",
                state=state,
            )
        if challenge is not None and (method != "S256" or not _CHALLENGE.fullmatch(challenge)):
            return _redirect(
                redirect_uri,
                error="invalid_request",
                error_description="code_challenge must be an S256 challenge",
                state=state,
            )
        scopes = tuple(query.get("scope", "").split()) or client.default_scopes
        code = "emuac_" + secrets.token_urlsafe(24)
        now = time.time()

        def work(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                conn.execute(
                    "INSERT INTO codes (code_hash, client_id, user, scopes, redirect_uri, "
                    "expires_at, code_challenge) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        token_hash(code),
                        client.client_id,
                        user,
                        " ".join(scopes),
                        redirect_uri,
                        now + self.config.code_lifetime,
                        challenge,
                    ),
                )
                _bump(conn, "authorizations")

        await self._db.run(work)
        return _redirect(redirect_uri, code=code, state=state)

    # ---- token -----------------------------------------------------------------------------

    async def handle_token(self, request: web.Request) -> web.Response:
        """The token endpoint (``application/x-www-form-urlencoded``)."""
        try:
            fields = await read_form(request)
            client = self._authenticate(request.headers.get("Authorization"), fields)
            grant_type = fields.get("grant_type", "")
            await self._inject_faults(grant_type)
            if grant_type == "authorization_code":
                answer = await self._exchange_code(client, fields)
            elif grant_type == "refresh_token":
                answer = await self._refresh(client, fields)
            else:
                raise OAuthError(
                    "unsupported_grant_type",
                    "grant_type must be authorization_code or refresh_token",
                )
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                await self._count("invalid_grant")
            return exc.response()
        return web.json_response(
            answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )

    def _authenticate(self, header: str | None, fields: dict[str, str]) -> Client:
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

    async def _exchange_code(self, client: Client, fields: dict[str, str]) -> dict[str, Any]:
        code = fields.get("code", "")
        redirect_uri = fields.get("redirect_uri", "")
        verifier = fields.get("code_verifier")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        if verifier is not None and not _VERIFIER.fullmatch(verifier):
            raise OAuthError("invalid_request", "code_verifier is malformed (RFC 7636)")
        now = time.time()
        access, refresh = _new_access(self.config, now), _new_refresh()
        life = self.config.access_token_lifetime

        def work(conn: sqlite3.Connection) -> tuple[str, str] | OAuthError:
            with write_transaction(conn):
                row = conn.execute(
                    "SELECT * FROM codes WHERE code_hash = ?", (token_hash(code),)
                ).fetchone()
                if row is None or row["client_id"] != client.client_id:
                    return OAuthError("invalid_grant", "unknown authorization code")
                if row["used"]:
                    if row["family_id"] is not None:
                        _revoke_family(conn, row["family_id"])
                    return OAuthError("invalid_grant", "authorization code already used")
                if row["expires_at"] < now:
                    return OAuthError("invalid_grant", "authorization code expired")
                if redirect_uri != row["redirect_uri"]:
                    return OAuthError("invalid_grant", "redirect_uri does not match the request")
                # Checked before the code is spent: someone else's wrong verifier must not
                # burn the code of the user it was issued to.
                expected = row["code_challenge"]
                if (verifier is None) != (expected is None) or (
                    verifier is not None and not same_text(pkce_challenge(verifier), expected)
                ):
                    return OAuthError(
                        "invalid_grant", "code_verifier does not match the code's challenge"
                    )
                cursor = conn.execute(
                    "INSERT INTO families (client_id, user, scopes, current_seq, current_at) "
                    "VALUES (?, ?, ?, 1, ?)",
                    (client.client_id, row["user"], row["scopes"], now),
                )
                family = cursor.lastrowid
                conn.execute(
                    "UPDATE codes SET used = 1, family_id = ? WHERE code_hash = ?",
                    (family, token_hash(code)),
                )
                conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, family_id, seq) VALUES (?, ?, 1)",
                    (token_hash(refresh), family),
                )
                conn.execute(
                    "INSERT INTO access_tokens (token_hash, family_id, scopes, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (token_hash(access), family, row["scopes"], now + life),
                )
                _bump(conn, "code_exchanges")
                return row["user"], row["scopes"]

        result = await self._db.run(work)
        if isinstance(result, OAuthError):
            raise result
        user, scopes = result
        answer = self._token_answer(access, refresh, scopes)
        answer["account_id"] = "acct-" + hashlib.sha256(user.encode()).hexdigest()[:12]
        answer["issued_at"] = int(now)
        answer["consented"] = True
        return answer

    async def _refresh(self, client: Client, fields: dict[str, str]) -> dict[str, Any]:
        presented = fields.get("refresh_token", "")
        if not presented:
            raise OAuthError("invalid_request", "refresh_token is required")
        wanted = tuple(fields.get("scope", "").split())
        now = time.time()
        access, refresh = _new_access(self.config, now), _new_refresh()
        life = self.config.access_token_lifetime
        grace = self.config.grace_seconds

        def work(conn: sqlite3.Connection) -> str | OAuthError:
            with write_transaction(conn):
                _bump(conn, "refresh_requests")
                row = conn.execute(
                    "SELECT family_id, seq FROM refresh_tokens WHERE token_hash = ?",
                    (token_hash(presented),),
                ).fetchone()
                if row is None:
                    return OAuthError("invalid_grant", "unknown refresh token")
                family = conn.execute(
                    "SELECT * FROM families WHERE id = ?", (row["family_id"],)
                ).fetchone()
                if family["client_id"] != client.client_id:
                    return OAuthError("invalid_grant", "refresh token of another client")
                if family["revoked"]:
                    return OAuthError("invalid_grant", "the grant was revoked")
                seq, current = row["seq"], family["current_seq"]
                if seq == current:
                    pass
                elif seq == current - 1 and now - family["current_at"] <= grace:
                    _bump(conn, "grace_accepts")
                else:
                    _revoke_family(conn, family["id"])
                    return OAuthError(
                        "invalid_grant", "refresh token reuse detected: the grant was revoked"
                    )
                granted = family["scopes"].split()
                missing = [s for s in wanted if s not in granted]
                if missing:
                    return OAuthError("invalid_scope", "scope exceeds the grant")
                scopes = " ".join(wanted) if wanted else family["scopes"]
                conn.execute(
                    "UPDATE families SET current_seq = ?, current_at = ? WHERE id = ?",
                    (current + 1, now, family["id"]),
                )
                conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, family_id, seq) VALUES (?, ?, ?)",
                    (token_hash(refresh), family["id"], current + 1),
                )
                conn.execute(
                    "INSERT INTO access_tokens (token_hash, family_id, scopes, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (token_hash(access), family["id"], scopes, now + life),
                )
                _bump(conn, "refreshes")
                return scopes

        outcome = await self._db.run(work)
        if isinstance(outcome, OAuthError):
            raise outcome
        return self._token_answer(access, refresh, outcome)

    def _token_answer(self, access: str, refresh: str, scopes: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if self.config.send_expires_in:
            answer["expires_in"] = max(1, round(self.config.access_token_lifetime))
        answer["refresh_token"] = refresh
        answer["scope"] = scopes
        return answer

    # ---- the "API", stats ------------------------------------------------------------------

    async def handle_userinfo(self, request: web.Request) -> web.Response:
        """Who an access token belongs to; 401 when it is not valid."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("a Bearer access token is required")
        now = time.time()

        def work(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT a.scopes, a.expires_at, f.user, f.client_id, f.revoked "
                "FROM access_tokens a JOIN families f ON f.id = a.family_id "
                "WHERE a.token_hash = ?",
                (token_hash(token.strip()),),
            ).fetchone()
            if row is None or row["revoked"] or row["expires_at"] <= now:
                return None
            return {
                "sub": row["user"],
                "email": row["user"],
                "client_id": row["client_id"],
                "scope": row["scopes"],
                "exp": int(row["expires_at"]),
            }

        info = await self._db.run(work)
        if info is None:
            return _unauthorized("the access token is unknown, expired or revoked")
        return web.json_response(info)

    async def stats(self) -> dict[str, int]:
        """Every counter (see :data:`COUNTERS`), across all processes on the data dir."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            found = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            return {name: int(found.get(name, 0)) for name in COUNTERS}

        return await self._db.run(work)

    async def handle_stats(self, request: web.Request) -> web.Response:
        """``GET /provider/stats``."""
        return web.json_response(await self.stats())

    async def _count(self, name: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                _bump(conn, name)

        await self._db.run(work)


def _revoke_family(conn: sqlite3.Connection, family_id: int) -> None:
    cursor = conn.execute(
        "UPDATE families SET revoked = 1 WHERE id = ? AND revoked = 0", (family_id,)
    )
    if cursor.rowcount:
        _bump(conn, "families_revoked")
        log.info("provider: refresh token reuse; grant family %d revoked", family_id)


def _new_access(config: ProviderConfig, now: float) -> str:
    """An opaque access token, or with ``jwt_access_tokens`` a JWT whose ``exp`` is its expiry.

    The JWT's signature is random bytes: the provider knows its tokens by their hash, and
    clients only read the claims (as they may with a real provider's JWTs).
    """
    if not config.jwt_access_tokens:
        return "emuat_" + secrets.token_urlsafe(32)
    claims = {"iat": int(now), "exp": int(now + config.access_token_lifetime)}
    parts = (b'{"alg":"HS256","typ":"JWT"}', json.dumps(claims).encode(), secrets.token_bytes(32))
    return ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in parts)


def _new_refresh() -> str:
    return "emurt_" + secrets.token_urlsafe(32)


def _redirect(uri: str, **params: str | None) -> web.Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in uri else "?"
    return web.Response(status=302, headers={"Location": f"{uri}{separator}{query}"})


def _unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_token", "error_description": message},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
