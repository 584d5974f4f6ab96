"""A SQLite database owned by one worker thread, so that no query runs on the event loop.

Each :class:`Database` has one connection, created and used only on its own single-thread
executor; coroutines hand it functions with :meth:`Database.run`. Files are in WAL mode with
``synchronous=FULL`` (a committed rotation survives a crash of the process or the machine) and
a busy timeout, so several emulator processes can share one data directory. The schema is
versioned with ``PRAGMA user_version`` and migrated forward inside one write transaction.
A new database file is created with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

Migration = Sequence[str]

# How long a connection waits for another to let go of the file.
_BUSY_SECONDS = 30.0


#: The counters table both databases have: what happened, for tests and operators.
COUNTERS_TABLE = (
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
)


def bump(conn: sqlite3.Connection, name: str) -> None:
    """Adds one to a counter (inside the caller's write transaction)."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = value + 1",
        (name,),
    )


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    """Every counter that has happened at least once."""
    return {name: int(value) for name, value in conn.execute("SELECT name, value FROM counters")}


class SchemaError(RuntimeError):
    """The database was written by a newer emulator, or cannot be migrated."""


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error): one short write."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _use_wal(conn: sqlite3.Connection, *, patience: float = _BUSY_SECONDS) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the file.

    Switching a new database to WAL needs the file to itself, and SQLite answers "database is
    locked" at once instead of waiting (the busy timeout does not cover it): emulator
    processes that open a fresh data directory together would fail at random.
    """
    give_up = time.monotonic() + patience
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= give_up:
                raise
        time.sleep(random.uniform(0, delay))  # on the database's own thread
        delay = min(delay * 2, 0.1)


class Database:
    """One SQLite file and the thread that owns its connection."""

    def __init__(self, path: Path, migrations: Sequence[Migration], label: str) -> None:
        self.path = path
        self._migrations = migrations
        self._label = label
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"emulator-{label}")
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"Database({self._label}, {self.path})"

    async def open(self) -> None:
        """Connects, sets the pragmas and migrates the schema (on the worker thread)."""
        await self.run(lambda _conn: None)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``fn(connection)`` on the worker thread and returns its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        return fn(self._conn)

    def _connect(self) -> sqlite3.Connection:
        # Created private: SQLite gives its -wal and -shm files the database's permissions.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_SECONDS * 1000)}")
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with write_transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(self._migrations):
                raise SchemaError(
                    f"{self.path} has schema version {version}, newer than this emulator "
                    f"understands ({len(self._migrations)}): upgrade agentspace-grpc"
                )
            for number in range(version, len(self._migrations)):
                for statement in self._migrations[number]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(self._migrations)}")

    async def close(self) -> None:
        """Closes the connection on its thread and stops the thread."""

        def _close(_conn: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            if self._conn is not None:
                await self.run(_close)
        finally:
            self._executor.shutdown(wait=True)
