"""The emulator's token store: one SQLite file in the data directory, shared by processes.

Tables (schema version 2; a resource is a data connector or an authorization, both OAuth
resources that the service treats alike; version 1 called the column ``connector``, and a
version-1 file is migrated when opened):

- ``grants``: one row per (resource, user): the encrypted refresh token, granted scopes, a
  ``version`` that grows with every new refresh token, a ``revoked`` flag, and the refresh
  lease (``lease_owner``, ``lease_until``).
- ``access_tokens``: cached access tokens per (resource, user, scope key), encrypted.
- ``counters``: what the emulator did (upstream refreshes started and committed, races, reads
  that found another process's refresh lease and waited), for tests and operators.

Refresh protocol (one refresh at a time per (resource, user), across processes):

1. :meth:`Store.try_lease` takes the lease in a short write transaction and returns the
   refresh token to use, or a usable cached token, or who holds the lease.
2. The caller talks to the provider with no transaction open.
3. :meth:`Store.commit_refresh` writes the rotated refresh token and the access token and
   releases the lease in one transaction, before the answer goes out. On ``invalid_grant``,
   :meth:`Store.resolve_invalid_grant` tells a lost race (the row has moved on) from a
   revocation.

Lease holders are ``host/pid/nonce``; a lease whose holder is a dead process on this host, or
whose time ran out, may be taken over.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from agentspace_grpc.emulator._crypto import Keyring
from agentspace_grpc.emulator._db import (
    COUNTERS_TABLE,
    Database,
    bump,
    counters,
    write_transaction,
)

DB_FILE_NAME: Final = "emulator.sqlite3"

_MIGRATIONS: Final = (
    (
        """CREATE TABLE grants (
            connector TEXT NOT NULL,
            user TEXT NOT NULL,
            version INTEGER NOT NULL,
            scopes TEXT NOT NULL,
            refresh_ct BLOB NOT NULL,
            instance_uri TEXT NOT NULL DEFAULT '',
            revoked INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            lease_owner TEXT,
            lease_until REAL,
            PRIMARY KEY (connector, user)
        ) WITHOUT ROWID""",
        """CREATE TABLE access_tokens (
            connector TEXT NOT NULL,
            user TEXT NOT NULL,
            scope_key TEXT NOT NULL,
            grant_version INTEGER NOT NULL,
            token_ct BLOB NOT NULL,
            scopes TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (connector, user, scope_key)
        ) WITHOUT ROWID""",
        COUNTERS_TABLE,
    ),
    # 2: authorizations are stored like data connectors: the key column names either.
    (
        "ALTER TABLE grants RENAME COLUMN connector TO resource",
        "ALTER TABLE access_tokens RENAME COLUMN connector TO resource",
    ),
)

_REFRESH: Final = "refresh_token"
_ACCESS: Final = "access_token"


def new_owner() -> str:
    """A lease-holder id for this process (host, pid and a random nonce)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"


def owner_is_dead(owner: str) -> bool:
    """True when ``owner`` names a process on this host that no longer exists."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "Z"
    return False


@dataclass(frozen=True, slots=True)
class Grant:
    """What the store knows of a user's grant (never the token itself)."""

    resource: str
    user: str
    version: int
    scopes: tuple[str, ...]
    revoked: bool
    instance_uri: str


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A cached access token; the token is kept out of ``repr``."""

    token: str = field(repr=False)
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    grant: Grant

    def good_until(self, margin_cap: float) -> float:
        """When it stops being served: its expiry less a safety margin (at most
        ``margin_cap``, at most 10% of its life)."""
        return self.expires_at - min(margin_cap, 0.1 * max(0.0, self.expires_at - self.issued_at))

    def usable(self, now: float, margin_cap: float) -> bool:
        """Valid now, with the margin of :meth:`good_until`."""
        return now < self.good_until(margin_cap)


@dataclass(frozen=True, slots=True)
class NewAccessToken:
    """An access token to cache (``expires_at`` is absolute)."""

    token: str = field(repr=False)
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Leased:
    """The lease is ours: refresh with ``refresh_token`` (version ``grant.version``)."""

    grant: Grant
    refresh_token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Busy:
    """Another holder refreshes; re-read the store when ``until`` passes or it finishes."""

    until: float


Missing = Literal["missing"]
LeaseResult = Leased | CachedToken | Busy | Grant | Missing
"""A revoked ``Grant`` comes back as is; ``"missing"`` when the user stored nothing."""


def scope_key(scopes: Sequence[str]) -> str:
    """The cache key of a scope set ('' for the grant's own scopes)."""
    return " ".join(sorted(set(scopes)))


class Store:
    """Encrypted per-(resource, user) refresh tokens and cached access tokens."""

    def __init__(self, data_dir: Path, keyring: Keyring) -> None:
        self._db = Database(data_dir / DB_FILE_NAME, _MIGRATIONS, "store")
        self._keys = keyring

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._db.path

    async def open(self) -> None:
        """Creates or migrates the database."""
        await self._db.open()

    async def close(self) -> None:
        """Closes the database."""
        await self._db.close()

    # ---- reads ---------------------------------------------------------------------------

    async def get_grant(self, resource: str, user: str) -> Grant | None:
        """The user's grant for a resource, if any (revoked ones included)."""
        return await self._db.run(lambda conn: self._grant(conn, resource, user)[0])

    async def cached(self, resource: str, user: str, key: str) -> CachedToken | Grant | Missing:
        """The cached access token for a scope key, else the grant, else ``"missing"``."""

        def work(conn: sqlite3.Connection) -> CachedToken | Grant | Missing:
            grant, _ = self._grant(conn, resource, user)
            if grant is None:
                return "missing"
            return self._cached_token(conn, grant, key) or grant

        return await self._db.run(work)

    async def counters(self) -> dict[str, int]:
        """The emulator's own counters (upstream refreshes, races, ...)."""

        return await self._db.run(counters)

    # ---- the refresh protocol --------------------------------------------------------------

    async def try_lease(
        self,
        resource: str,
        user: str,
        key: str,
        *,
        owner: str,
        now: float,
        lease_seconds: float,
        margin_cap: float,
    ) -> LeaseResult:
        """Serves a usable cached token, or takes the refresh lease, or says who holds it."""

        def work(conn: sqlite3.Connection) -> LeaseResult:
            with write_transaction(conn):
                grant, row = self._grant(conn, resource, user)
                if grant is None or row is None:
                    return "missing"
                if grant.revoked:
                    return grant
                cached = self._cached_token(conn, grant, key)
                if cached is not None and cached.usable(now, margin_cap):
                    return cached
                holder, until = row["lease_owner"], row["lease_until"]
                if holder and holder != owner and until > now and not owner_is_dead(holder):
                    bump(conn, "lease_waits")
                    return Busy(until=until)
                conn.execute(
                    "UPDATE grants SET lease_owner = ?, lease_until = ? "
                    "WHERE resource = ? AND user = ?",
                    (owner, now + lease_seconds, resource, user),
                )
                bump(conn, "upstream_refreshes_started")
                token = self._keys.decrypt(
                    row["refresh_ct"], purpose=_REFRESH, connector=resource, user=user
                )
                return Leased(grant=grant, refresh_token=token)

        return await self._db.run(work)

    async def commit_refresh(
        self,
        resource: str,
        user: str,
        key: str,
        *,
        owner: str,
        used_version: int,
        new_refresh_token: str | None,
        access: NewAccessToken | None,
        now: float,
    ) -> int | None:
        """Saves a refresh's outcome and releases the lease; the grant's version after it, or
        None if the grant moved on (nothing saved).

        The write happens only if the row still holds the version that was refreshed (a new
        consent in the meantime wins); the lease is released either way if it is still ours.
        """

        def work(conn: sqlite3.Connection) -> int | None:
            with write_transaction(conn):
                grant, _ = self._grant(conn, resource, user)
                version: int | None = None
                if grant is not None and grant.version == used_version:
                    version = used_version
                    if new_refresh_token is not None:
                        version += 1
                        blob = self._keys.encrypt(
                            new_refresh_token, purpose=_REFRESH, connector=resource, user=user
                        )
                        conn.execute(
                            "UPDATE grants SET refresh_ct = ?, version = ?, updated_at = ? "
                            "WHERE resource = ? AND user = ?",
                            (blob, version, now, resource, user),
                        )
                        conn.execute(
                            "UPDATE access_tokens SET grant_version = ? "
                            "WHERE resource = ? AND user = ?",
                            (version, resource, user),
                        )
                    if access is not None:
                        self._put_access(conn, resource, user, key, version, access)
                    bump(conn, "upstream_refreshes_committed")
                _release_lease(conn, resource, user, owner)
                return version

        return await self._db.run(work)

    async def release_lease(self, resource: str, user: str, owner: str) -> None:
        """Gives the lease up (after a failed refresh)."""

        def work(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                _release_lease(conn, resource, user, owner)

        await self._db.run(work)

    async def resolve_invalid_grant(
        self, resource: str, user: str, *, owner: str, used_version: int
    ) -> Literal["race", "revoked"]:
        """After ``invalid_grant``: a race if the row moved on, else mark it revoked.

        Either way the lease is released in the same transaction.
        """

        def work(conn: sqlite3.Connection) -> Literal["race", "revoked"]:
            with write_transaction(conn):
                grant, _ = self._grant(conn, resource, user)
                _release_lease(conn, resource, user, owner)
                if grant is None or grant.version != used_version or grant.revoked:
                    bump(conn, "invalid_grant_races")
                    return "race"
                conn.execute(
                    "UPDATE grants SET revoked = 1 WHERE resource = ? AND user = ?",
                    (resource, user),
                )
                _drop_access_tokens(conn, resource, user)
                bump(conn, "grants_revoked")
                return "revoked"

        return await self._db.run(work)

    async def store_grant(
        self,
        resource: str,
        user: str,
        *,
        scopes: Sequence[str],
        refresh_token: str,
        instance_uri: str,
        access: NewAccessToken | None,
        now: float,
    ) -> Grant:
        """Stores a new grant (from a consent), replacing the old one and its cached tokens."""

        def work(conn: sqlite3.Connection) -> Grant:
            blob = self._keys.encrypt(
                refresh_token, purpose=_REFRESH, connector=resource, user=user
            )
            with write_transaction(conn):
                old, _ = self._grant(conn, resource, user)
                version = (old.version if old else 0) + 1
                conn.execute(
                    "INSERT INTO grants (resource, user, version, scopes, refresh_ct, "
                    "instance_uri, revoked, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
                    "ON CONFLICT (resource, user) DO UPDATE SET version = excluded.version, "
                    "scopes = excluded.scopes, refresh_ct = excluded.refresh_ct, "
                    "instance_uri = excluded.instance_uri, revoked = 0, "
                    "updated_at = excluded.updated_at",
                    (resource, user, version, " ".join(scopes), blob, instance_uri, now),
                )
                _drop_access_tokens(conn, resource, user)
                if access is not None:
                    # The token covers exactly the granted scopes: serve it for both keys.
                    for key in {"", scope_key(scopes)}:
                        self._put_access(conn, resource, user, key, version, access)
                bump(conn, "grants_stored")
            return Grant(resource, user, version, tuple(scopes), False, instance_uri)

        return await self._db.run(work)

    # ---- helpers (worker thread) -----------------------------------------------------------

    @staticmethod
    def _grant(
        conn: sqlite3.Connection, resource: str, user: str
    ) -> tuple[Grant | None, sqlite3.Row | None]:
        row = conn.execute(
            "SELECT * FROM grants WHERE resource = ? AND user = ?", (resource, user)
        ).fetchone()
        if row is None:
            return None, None
        grant = Grant(
            resource=resource,
            user=user,
            version=row["version"],
            scopes=tuple(row["scopes"].split()),
            revoked=bool(row["revoked"]),
            instance_uri=row["instance_uri"],
        )
        return grant, row

    def _cached_token(self, conn: sqlite3.Connection, grant: Grant, key: str) -> CachedToken | None:
        row = conn.execute(
            "SELECT token_ct, scopes, issued_at, expires_at FROM access_tokens "
            "WHERE resource = ? AND user = ? AND scope_key = ? AND grant_version = ?",
            (grant.resource, grant.user, key, grant.version),
        ).fetchone()
        if row is None or grant.revoked:
            return None
        token = self._keys.decrypt(
            row["token_ct"], purpose=_ACCESS, connector=grant.resource, user=grant.user
        )
        return CachedToken(
            token=token,
            scopes=tuple(row["scopes"].split()),
            issued_at=row["issued_at"],
            expires_at=row["expires_at"],
            grant=grant,
        )

    def _put_access(
        self,
        conn: sqlite3.Connection,
        resource: str,
        user: str,
        key: str,
        version: int,
        access: NewAccessToken,
    ) -> None:
        blob = self._keys.encrypt(access.token, purpose=_ACCESS, connector=resource, user=user)
        conn.execute(
            "INSERT OR REPLACE INTO access_tokens (resource, user, scope_key, grant_version, "
            "token_ct, scopes, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                resource,
                user,
                key,
                version,
                blob,
                " ".join(access.scopes),
                access.issued_at,
                access.expires_at,
            ),
        )


def _release_lease(conn: sqlite3.Connection, resource: str, user: str, owner: str) -> None:
    """Ends ``owner``'s lease, if it still holds it."""
    conn.execute(
        "UPDATE grants SET lease_owner = NULL, lease_until = NULL "
        "WHERE resource = ? AND user = ? AND lease_owner = ?",
        (resource, user, owner),
    )


def _drop_access_tokens(conn: sqlite3.Connection, resource: str, user: str) -> None:
    """Forgets every cached access token of a grant."""
    conn.execute("DELETE FROM access_tokens WHERE resource = ? AND user = ?", (resource, user))
