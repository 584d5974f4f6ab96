"""Shared tools of the reliability suite (``tests/test_reliability_*.py``).

- :class:`Resources` / :func:`assert_released`: the open file descriptors and asyncio tasks of
  this process, before and after a scenario (a leaked socket or task fails the test, naming it).
- :class:`Outcome` / :func:`timed`: a call's result or exception with its start and end times,
  so a test can check every call against its own deadline.
- :class:`LogCapture`: every log record of every library at DEBUG, formatted with tracebacks
  and extra attributes, for secret searches.
- :func:`write_config`: a TOML configuration for an emulator process.
- :func:`rss_bytes`: memory figures.

Scenarios use the servers of :mod:`tests._servers` and :mod:`tests._raw` and the helpers of
:mod:`tests._emulator_helpers`; nothing here reaches into private state of the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from agentspace_grpc import DataConnectorError

T = TypeVar("T")

#: Loggers set to DEBUG explicitly (the root logger catches the rest through propagation).
DEBUG_LOGGERS = (
    "agentspace_grpc",
    "grpc",
    "grpc._cython.cygrpc",
    "grpc.aio",
    "aiohttp",
    "aiohttp.client",
    "aiohttp.server",
    "aiohttp.access",
    "aiohttp.web",
    "google",
    "google.auth",
    "google.auth.transport.requests",
    "google.oauth2",
    "urllib3",
    "asyncio",
)


# ---- resources -------------------------------------------------------------------------------


def _fd_targets() -> dict[int, str]:
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Resources:
    """Open file descriptors (with what they point at) and live asyncio tasks."""

    fds: Mapping[int, str]
    tasks: frozenset[asyncio.Task[Any]]

    @classmethod
    def now(cls) -> Resources:
        """A snapshot from the event loop thread (the calling task itself is left out)."""
        gc.collect()
        return cls(_fd_targets(), frozenset(asyncio.all_tasks() - {asyncio.current_task()}))

    def leaks_since(self, baseline: Resources) -> list[str]:
        """What is open now and was not at ``baseline`` (empty: nothing leaked)."""
        leaks = [
            f"fd {fd} -> {target}"
            for fd, target in sorted(self.fds.items())
            if baseline.fds.get(fd) != target
        ]
        leaks += [f"task {task!r}" for task in self.tasks - baseline.tasks if not task.done()]
        return leaks


async def assert_released(baseline: Resources, *, within: float = 3.0) -> Resources:
    """Wait (up to ``within`` seconds, a wide bound) until no fd or task is left beyond
    ``baseline``; fails naming what leaked. Closing sockets may take a few loop turns."""
    deadline = time.monotonic() + within
    while True:
        now = Resources.now()
        leaks = now.leaks_since(baseline)
        if not leaks:
            return now
        if time.monotonic() > deadline:
            raise AssertionError("left behind: " + "; ".join(leaks))
        await asyncio.sleep(0.05)


# ---- outcomes --------------------------------------------------------------------------------


@dataclass
class Outcome(Generic[T]):
    """One call: when it started and ended (monotonic seconds) and what it gave."""

    started: float
    ended: float
    value: T | None = None
    error: BaseException | None = None
    budget: float | None = None
    tag: str = ""

    @property
    def ok(self) -> bool:
        """True when the call returned."""
        return self.error is None

    @property
    def elapsed(self) -> float:
        """Seconds the call took."""
        return self.ended - self.started

    def kind(self) -> str:
        """ "ok", or the exception's class name."""
        return "ok" if self.error is None else type(self.error).__name__


async def timed(call: Awaitable[T], *, budget: float | None = None, tag: str = "") -> Outcome[T]:
    """Await ``call`` and record its outcome; any exception (but cancellation) is kept."""
    started = time.monotonic()
    try:
        value = await call
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Outcome(started, time.monotonic(), error=exc, budget=budget, tag=tag)
    return Outcome(started, time.monotonic(), value=value, budget=budget, tag=tag)


def tally(outcomes: Iterable[Outcome[Any]]) -> dict[str, int]:
    """How many outcomes of each kind ("ok", "Unavailable", ...)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind()] = counts.get(outcome.kind(), 0) + 1
    return dict(sorted(counts.items()))


def unexpected(
    outcomes: Iterable[Outcome[Any]], allowed: Sequence[type[BaseException]]
) -> list[str]:
    """Descriptions of the failures whose exception is not one of ``allowed``."""
    return [
        f"{o.tag}: {type(o.error).__name__}: {o.error}"
        for o in outcomes
        if o.error is not None and not isinstance(o.error, tuple(allowed))
    ]


# ---- logs and texts --------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Every record, formatted with its traceback, plus its attributes as a structured
    handler (JSON, Cloud Logging) would ship them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts: list[str] = []
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(vars(record)))
        self.names.add(record.name)


@contextlib.contextmanager
def debug_logging() -> Iterator[LogCapture]:
    """The root logger and every library's logger at DEBUG, captured."""
    capture = LogCapture()
    root = logging.getLogger()
    saved = [(root, root.level)]
    root.setLevel(logging.DEBUG)
    for name in DEBUG_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for logger, level in saved:
            logger.setLevel(level)


def exception_texts(error: BaseException) -> list[str]:
    """What an application could print of an exception: str, repr and the full traceback
    with its chained causes."""
    return [str(error), repr(error), "".join(traceback.format_exception(error))]


def find_secrets(texts: Iterable[str | bytes], secrets: Iterable[str]) -> list[str]:
    """Which secrets occur in which text (as "secret[:12]... in: text excerpt")."""
    wanted = [s for s in secrets if s]
    found = []
    for text in texts:
        blob = text.decode("latin-1") if isinstance(text, bytes) else text
        for secret in wanted:
            at = blob.find(secret)
            if at >= 0:
                found.append(f"{secret[:12]}... in: {blob[max(0, at - 80) : at + 40]!r}")
    return found


def files_bytes(directory: Path) -> list[bytes]:
    """The raw bytes of every file under ``directory`` (SQLite, WAL and key files)."""
    return [p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()]


# ---- emulator --------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(value)


def write_config(
    path: Path,
    *,
    connectors: Sequence[Mapping[str, Any]] = (),
    provider: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> Path:
    """Write an emulator TOML configuration (the documented schema) and return its path."""
    lines: list[str] = []
    for table, values in (("provider", provider), ("identity", identity)):
        if values:
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for connector in connectors:
        lines.append("[[connectors]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in connector.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Figures:
    """Numbers a test prints (``pytest -s``) for RELIABILITY.md."""

    title: str
    values: dict[str, Any] = field(default_factory=dict)

    def show(self) -> None:
        """Print one line: ``[reliability] title: key=value ...``."""
        text = " ".join(f"{k}={v}" for k, v in self.values.items())
        print(f"\n[reliability] {self.title}: {text}")


def failures_allowed(error: BaseException | None, allowed: Sequence[type[Exception]]) -> bool:
    """True when ``error`` is None or an allowed DataConnectorError subclass."""
    return error is None or (
        isinstance(error, DataConnectorError) and isinstance(error, tuple(allowed))
    )
