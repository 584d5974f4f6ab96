"""Start the servers in their own processes and talk to them over stdin/stdout.

On Linux with two or more CPUs the server processes keep to one CPU (:func:`server_cpus`):
on a small host, a server that wanders between the cores keeps meeting the client on them,
and the client's CPU per call swings by tens of percent between samples. The client is left
free, as it is in a real deployment (a threaded client such as google-api-python-client
depends on having every core).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

_READY_TIMEOUT = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: The CPUs a server process keeps to (comma-separated), set by the harness for its children.
CPUS_ENV = "AGENTSPACE_BENCH_CPUS"


def server_cpus() -> set[int] | None:
    """The CPU for the server processes: the last this process may use, or None when there
    is only one or the platform cannot pin."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return {allowed[-1]} if len(allowed) >= 2 else None


def _pin_process(cpus: set[int]) -> None:
    """Keep every thread of this process, and the threads they start, on ``cpus`` (Linux)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(tid, cpus)


def pin_from_environment() -> None:
    """In a server process: keep to the CPUs the harness chose, if it chose any."""
    value = os.environ.get(CPUS_ENV)
    if value and hasattr(os, "sched_setaffinity"):
        _pin_process({int(cpu) for cpu in value.split(",")})


class ServerProcessError(RuntimeError):
    """A server process failed to start or to answer; the text carries its stderr's tail."""


class ServerProcess:
    """A child process that prints one JSON line when ready and stops at end of stdin.

    ``ready`` is that first line, decoded. :meth:`count` asks the process for its call
    counter (the constant-answer servers answer ``count``).
    """

    def __init__(self, *args: str, name: str, cpus: set[int] | None = None) -> None:
        self._args = args
        self.name = name
        self._cpus = cpus
        self.ready: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())

    @classmethod
    def module(
        cls, module: str, *args: str, name: str, cpus: set[int] | None = None
    ) -> ServerProcess:
        """A process running ``python -m module args`` with this interpreter; ``cpus``: the
        CPUs it keeps to (it pins itself with :func:`pin_from_environment`)."""
        return cls(sys.executable, "-m", module, *args, name=name, cpus=cpus)

    async def start(self) -> Self:
        """Start the process and wait for its ready line."""
        env = dict(os.environ)
        env.pop(CPUS_ENV, None)
        if self._cpus:
            env[CPUS_ENV] = ",".join(str(cpu) for cpu in sorted(self._cpus))
        self._proc = await asyncio.create_subprocess_exec(
            *self._args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self.ready = await asyncio.wait_for(self._read_line(), _READY_TIMEOUT)
        except TimeoutError:
            message = (
                f"{self.name} printed no ready line within {_READY_TIMEOUT:.0f} s"
                f"{self._stderr_tail()}"
            )
            await self.stop()
            raise ServerProcessError(message) from None
        except ServerProcessError:
            await self.stop()
            raise
        return self

    async def _read_line(self) -> dict[str, Any]:
        if self._proc is None or self._proc.stdout is None:
            raise ServerProcessError(f"{self.name} is not running")
        line = await self._proc.stdout.readline()
        if not line:
            code = await self._proc.wait()
            raise ServerProcessError(
                f"{self.name} exited with status {code} before it was ready{self._stderr_tail()}"
            )
        try:
            data = json.loads(line)
        except ValueError:
            raise ServerProcessError(f"{self.name} printed a line that is not JSON") from None
        if not isinstance(data, dict):
            raise ServerProcessError(f"{self.name} printed JSON that is not an object")
        return data

    async def count(self) -> int:
        """The number of calls the server has answered so far."""
        if self._proc is None or self._proc.stdin is None:
            raise ServerProcessError(f"{self.name} is not running")
        self._proc.stdin.write(b"count\n")
        await self._proc.stdin.drain()
        data = await asyncio.wait_for(self._read_line(), 10.0)
        return int(data["calls"])

    def cpu_seconds(self) -> float | None:
        """CPU time the process has used so far (Linux ``/proc``; None elsewhere)."""
        if self._proc is None:
            return None
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name (which may contain spaces): utime is the 12th, stime
        # the 13th of what follows the closing parenthesis.
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        return f"; its stderr ends with:\n{tail}" if tail else ""

    async def stop(self) -> None:
        """Close stdin (the stop signal), wait a little, then kill."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.wait_closed()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._stderr.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
