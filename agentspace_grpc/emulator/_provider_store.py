"""The built-in provider's storage: ``provider.sqlite3`` in the data directory.

All emulator processes on a data directory share it, so they are one provider. Tokens and codes
are kept only as SHA-256 hashes. Tables (schema version 2):

- ``codes``: authorization codes (client, user, scopes, redirect URI, expiry, PKCE challenge),
  and the family a redeemed code started;
- ``families``: one per redeemed code: the grant (client, user, scopes), a ``revoked`` flag and
  the sequence number of its current refresh token with the time it was issued;
- ``refresh_tokens`` / ``access_tokens``: the tokens of each family;
- ``counters``: what the provider did (see ``COUNTERS`` in :mod:`._provider`).

:class:`Tables` holds every SQL statement, each written once; the provider's logic runs inside
one transaction through :meth:`ProviderStore.write` / :meth:`ProviderStore.read`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from agentspace_grpc.emulator._db import (
    COUNTERS_TABLE,
    Database,
    bump,
    counters,
    write_transaction,
)

DB_FILE_NAME: Final = "provider.sqlite3"
T = TypeVar("T")

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
        COUNTERS_TABLE,
    ),
    ("ALTER TABLE codes ADD COLUMN code_challenge TEXT",),
)


@dataclass(frozen=True, slots=True)
class Code:
    """An authorization code as stored (by its hash)."""

    client_id: str
    user: str
    scopes: str
    redirect_uri: str
    expires_at: float
    used: bool
    family_id: int | None
    challenge: str | None


@dataclass(frozen=True, slots=True)
class Family:
    """A grant: the tokens descended from one redeemed code."""

    id: int
    client_id: str
    user: str
    scopes: str
    revoked: bool
    current_seq: int
    current_at: float


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What an access token is good for, with its family's state."""

    user: str
    client_id: str
    scopes: str
    expires_at: float
    revoked: bool


class Tables:
    """The provider's tables inside one transaction (on the database's thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def code(self, code_hash: str) -> Code | None:
        """The code with this hash."""
        row = self._conn.execute("SELECT * FROM codes WHERE code_hash = ?", (code_hash,)).fetchone()
        if row is None:
            return None
        return Code(
            row["client_id"],
            row["user"],
            row["scopes"],
            row["redirect_uri"],
            row["expires_at"],
            bool(row["used"]),
            row["family_id"],
            row["code_challenge"],
        )

    def add_code(self, code_hash: str, code: Code) -> None:
        """Stores a new (unused) code."""
        self._conn.execute(
            "INSERT INTO codes (code_hash, client_id, user, scopes, redirect_uri, expires_at, "
            "code_challenge) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                code_hash,
                code.client_id,
                code.user,
                code.scopes,
                code.redirect_uri,
                code.expires_at,
                code.challenge,
            ),
        )

    def spend_code(self, code_hash: str, family_id: int) -> None:
        """Marks a code used, remembering the family it started."""
        self._conn.execute(
            "UPDATE codes SET used = 1, family_id = ? WHERE code_hash = ?", (family_id, code_hash)
        )

    def new_family(self, client_id: str, user: str, scopes: str, now: float) -> int:
        """A new family whose current refresh token is number 1; its id."""
        cursor = self._conn.execute(
            "INSERT INTO families (client_id, user, scopes, current_seq, current_at) "
            "VALUES (?, ?, ?, 1, ?)",
            (client_id, user, scopes, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def family(self, family_id: int) -> Family:
        """The family with this id."""
        row = self._conn.execute("SELECT * FROM families WHERE id = ?", (family_id,)).fetchone()
        return Family(
            row["id"],
            row["client_id"],
            row["user"],
            row["scopes"],
            bool(row["revoked"]),
            row["current_seq"],
            row["current_at"],
        )

    def rotate(self, family_id: int, seq: int, now: float) -> None:
        """Makes refresh token number ``seq`` the family's current one."""
        self._conn.execute(
            "UPDATE families SET current_seq = ?, current_at = ? WHERE id = ?",
            (seq, now, family_id),
        )

    def revoke(self, family_id: int) -> bool:
        """Revokes a family (and so its tokens); False if it was revoked already."""
        cursor = self._conn.execute(
            "UPDATE families SET revoked = 1 WHERE id = ? AND revoked = 0", (family_id,)
        )
        return cursor.rowcount > 0

    def refresh_token(self, token_hash: str) -> tuple[int, int] | None:
        """The (family id, sequence number) of the refresh token with this hash."""
        row = self._conn.execute(
            "SELECT family_id, seq FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else (row["family_id"], row["seq"])

    def add_tokens(
        self,
        family_id: int,
        seq: int,
        *,
        refresh_hash: str,
        access_hash: str,
        scopes: str,
        expires_at: float,
    ) -> None:
        """Stores a family's refresh token number ``seq`` and the access token issued with it."""
        self._conn.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, seq) VALUES (?, ?, ?)",
            (refresh_hash, family_id, seq),
        )
        self._conn.execute(
            "INSERT INTO access_tokens (token_hash, family_id, scopes, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (access_hash, family_id, scopes, expires_at),
        )

    def access_token(self, token_hash: str) -> AccessGrant | None:
        """What the access token with this hash is good for."""
        row = self._conn.execute(
            "SELECT a.scopes, a.expires_at, f.user, f.client_id, f.revoked "
            "FROM access_tokens a JOIN families f ON f.id = a.family_id "
            "WHERE a.token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return AccessGrant(
            row["user"], row["client_id"], row["scopes"], row["expires_at"], bool(row["revoked"])
        )

    def count(self, name: str) -> None:
        """Adds one to a counter."""
        bump(self._conn, name)

    def counters(self) -> dict[str, int]:
        """Every counter that has happened."""
        return counters(self._conn)


class ProviderStore:
    """The provider's database."""

    def __init__(self, data_dir: Path) -> None:
        self._db = Database(data_dir / DB_FILE_NAME, _MIGRATIONS, "provider")

    def __repr__(self) -> str:
        return f"ProviderStore({self._db.path})"

    async def open(self) -> None:
        """Creates or migrates the database."""
        await self._db.open()

    async def close(self) -> None:
        """Closes the database."""
        await self._db.close()

    async def write(self, work: Callable[[Tables], T]) -> T:
        """``work(tables)`` in one write transaction (all of it, or none of it on an error)."""

        def run(conn: sqlite3.Connection) -> T:
            with write_transaction(conn):
                return work(Tables(conn))

        return await self._db.run(run)

    async def read(self, work: Callable[[Tables], T]) -> T:
        """``work(tables)`` outside a write transaction."""
        return await self._db.run(lambda conn: work(Tables(conn)))
