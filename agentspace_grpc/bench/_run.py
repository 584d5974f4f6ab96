"""One whole benchmark run: servers up, stacks alternated, extras, servers down.

The figures are gathered here; :mod:`._report` turns them into the table, JSON and chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import itertools
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from agentspace_grpc.bench import _measure, _stacks
from agentspace_grpc.bench._common import (
    BENCH_TOKEN,
    CONNECTOR,
    CONNECTORS,
    USERS,
    connector_names,
    user_tokens,
)
from agentspace_grpc.bench._procs import ServerProcess, ServerProcessError, server_cpus
from agentspace_grpc.bench._progress import Progress

MODES: Final = ("sequential", "concurrent")
SINGLE_FLIGHT_CALLS: Final = 1000
ONE_USER: Final = "one_user"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Workload:
    """What a service sees beyond one user and one connector: every call a different one.

    The floors and agentspace-grpc cycle through ``users`` (bearer tokens; the client gets
    each as the call's ``credentials=``, as a service passes on its caller's token) or
    ``names`` (connectors), so every stack sends the same distinct headers and names.
    """

    key: str
    label: str
    what: str
    users: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def distinct(self) -> int:
        """Calls that visit every user or connector once (the warm-up makes at least these)."""
        return max(len(self.users), len(self.names), 1)


WORKLOADS: Final = (
    Workload(
        "many_users",
        f"{USERS:,} users",
        f"one client and connector; each call passes the next of {USERS:,} users' bearer "
        "tokens (distinct strings of about 200 characters) as its credentials=",
        users=user_tokens(USERS),
    ),
    Workload(
        "many_connectors",
        f"{CONNECTORS} connectors",
        f"one client and user (its default credentials); each call names the next of "
        f"{CONNECTORS} connectors",
        names=connector_names(CONNECTORS),
    ),
)


def workload_stacks(grpc_target: str, http_url: str) -> list[tuple[Workload, _stacks.Stack]]:
    """Per workload and wire: the floor and the client in its default configuration.

    Single-flight is on (the default): with a different user or connector on every call,
    nothing is shared, and the run counts the RPCs served to show it.
    """
    g, h, t, n = grpc_target, http_url, BENCH_TOKEN, CONNECTOR
    out: list[tuple[Workload, _stacks.Stack]] = []
    for w in WORKLOADS:
        grpc_floor = f"{_stacks.GRPC_FLOOR}_{w.key}"
        rest_floor = f"{_stacks.REST_FLOOR}_{w.key}"
        stacks: list[_stacks.Stack] = [
            _stacks.RawStub(
                g,
                t,
                n,
                users=w.users,
                names=w.names,
                key=grpc_floor,
                title=f"raw grpc.aio stub, {w.label}",
            ),
            _stacks.RawAiohttp(
                h,
                t,
                n,
                users=w.users,
                names=w.names,
                key=rest_floor,
                title=f"raw aiohttp + json.loads, {w.label}",
            ),
        ]
        wires: tuple[tuple[_stacks.Wire, str, str], ...] = (
            ("grpc", "gRPC", grpc_floor),
            ("rest", "REST", rest_floor),
        )
        for wire, label, floor in wires:
            stacks.append(
                _stacks.Agentspace(
                    key=f"agentspace_{wire}_{w.key}",
                    title=f"agentspace-grpc {label}, {w.label}",
                    wire=wire,
                    baseline=floor,
                    grpc_target=g,
                    http_url=h,
                    token=t,
                    name=n,
                    users=w.users,
                    names=w.names,
                    single_flight=True,
                )
            )
        out += [(w, stack) for stack in stacks]
    return out


def _cache_hit_stack(wire: _stacks.Wire, grpc_target: str, http_url: str) -> _stacks.Stack:
    """The client with a token cache that the warm-up filled: every measured call is a hit
    (served for an hour, longer than any run), so the server should count no RPC."""
    floor = _stacks.GRPC_FLOOR if wire == "grpc" else _stacks.REST_FLOOR
    return _stacks.Agentspace(
        key=f"agentspace_{wire}_cache_hit",
        title=f"agentspace-grpc {'gRPC' if wire == 'grpc' else 'REST'}, token cache hit",
        wire=wire,
        baseline=floor,
        grpc_target=grpc_target,
        http_url=http_url,
        token=BENCH_TOKEN,
        name=CONNECTOR,
        token_cache={"max_age": 3600.0},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """What to run and for how long.

    ``size`` is the most calls in one sample and ``budget_s`` the time shared by all the
    alternated samples; each sample stops at whichever limit comes first.
    """

    size: int = 4000
    repeats: int = 9
    inflight: int = 64
    budget_s: float = 170.0
    quick: bool = False
    emulator: bool = True
    pin: bool = True
    out: Path = Path("bench-results")


QUICK: Final = Settings(size=400, repeats=3, budget_s=12.0, quick=True)


@dataclass(slots=True)
class StackRun:
    """A stack's outcome: ``status`` is ok, skipped or failed, with the reason."""

    stack: _stacks.Stack
    group: str
    workload: Workload | None = None  # None: one user, one connector
    status: str = "ok"
    reason: str = ""
    samples: dict[str, list[_measure.Sample | None]] = field(default_factory=dict)
    # Emulator stacks, per mode: the built-in provider's refreshes during the samples and
    # the calls made in them.
    upstream: dict[str, list[int]] = field(default_factory=dict)
    # Per mode and sample: the server process's CPU time over the sample's wall time (1.0 is
    # one core kept busy: the server, not the client, set the pace).
    server_busy: dict[str, list[float]] = field(default_factory=dict)
    # Stacks on the constant servers, per mode: the RPCs the server answered during the
    # samples and the calls made in them (equal unless single-flight or a cache saved some).
    served: dict[str, list[int]] = field(default_factory=dict)

    @property
    def workload_key(self) -> str:
        """The workload's key (``one_user`` for the one-user stacks)."""
        return ONE_USER if self.workload is None else self.workload.key

    def fail(self, status: str, reason: str) -> None:
        """Stop measuring this stack."""
        if self.status == "ok":
            self.status, self.reason = status, reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and the machine, for the JSON file and the table's heading."""
    from google.protobuf.internal import api_implementation

    cpu_model = platform.processor() or platform.machine()
    memory_gb: float | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "versions": {
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "grpcio": _version("grpcio"),
            "protobuf": _version("protobuf"),
            "protobuf_backend": api_implementation.Type(),
            "aiohttp": _version("aiohttp"),
            "google-api-core": _version("google-api-core"),
            "google-api-python-client": _version("google-api-python-client"),
            "httplib2": _version("httplib2"),
            "matplotlib": _version("matplotlib"),
            "agentspace-grpc": _version("agentspace-grpc"),
        },
        "machine": {
            "cpu_model": cpu_model,
            "cores": os.cpu_count(),
            "memory_gb": memory_gb,
            "platform": platform.platform(),
        },
    }


class _Notices(logging.Handler):
    """Counts the warnings the client logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings += 1


async def _bounded(awaitable: Awaitable[_T], seconds: float) -> _T:
    async with asyncio.timeout(seconds):
        return await awaitable


class Bench:
    """Holds the servers and stacks of one run."""

    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.runs: list[StackRun] = []
        # The server processes keep to one CPU when there are two or more (see _procs).
        self.server_cpus = server_cpus() if settings.pin else None
        servers = self.server_cpus
        self.grpc_server = ServerProcess.module(
            "agentspace_grpc.bench._servers", "grpc", name="constant gRPC server", cpus=servers
        )
        self.http_server = ServerProcess.module(
            "agentspace_grpc.bench._servers", "http", name="constant HTTP server", cpus=servers
        )
        self.emulator = ServerProcess.module(
            "agentspace_grpc.bench._emulator_proc",
            f"--users={settings.inflight + 16}",
            name="emulator",
            cpus=servers,
        )
        self.emulator_status = "not run"
        self.extras: dict[str, Any] = {}

    def _step(self, label: str, count: int = 1) -> None:
        if self.progress is not None:
            self.progress.step(label, count)

    # ---- servers and stacks ---------------------------------------------------------

    async def start_servers(self) -> None:
        """Start the constant-answer servers (required) and the emulator (optional)."""
        starts = [self.grpc_server.start(), self.http_server.start()]
        if self.settings.emulator:
            starts.append(self.emulator.start())
        outcomes = await asyncio.gather(*starts, return_exceptions=True)
        for outcome in outcomes[:2]:
            if isinstance(outcome, BaseException):
                raise outcome
        if self.settings.emulator:
            emulator_outcome = outcomes[2]
            if isinstance(emulator_outcome, ServerProcessError):
                lines = str(emulator_outcome).strip().splitlines()
                self.emulator_status = f"emulator unavailable: {lines[-1]}"
                self.extras["emulator_error"] = str(emulator_outcome)
            elif isinstance(emulator_outcome, BaseException):
                raise emulator_outcome
            else:
                self.emulator_status = "ok"
        else:
            self.emulator_status = "skipped (--no-emulator)"

    @property
    def grpc_target(self) -> str:
        """The constant gRPC server's ``host:port``."""
        return f"127.0.0.1:{self.grpc_server.ready['port']}"

    @property
    def http_url(self) -> str:
        """The constant HTTP server's base URL."""
        return f"http://127.0.0.1:{self.http_server.ready['port']}"

    def build_stacks(self) -> None:
        """The transport stacks on the constant servers, the emulator stacks on the emulator."""
        g, h, t, n = self.grpc_target, self.http_url, BENCH_TOKEN, CONNECTOR
        transport: list[_stacks.Stack] = [
            _stacks.RawStub(g, t, n),
            _stacks.Agentspace(
                key="agentspace_grpc",
                title="agentspace-grpc gRPC",
                wire="grpc",
                baseline=_stacks.GRPC_FLOOR,
                grpc_target=g,
                http_url=h,
                token=t,
                name=n,
            ),
            _cache_hit_stack("grpc", g, h),
            _stacks.GapicStyle(g, t, n),
            _stacks.RawAiohttp(h, t, n),
            _stacks.Agentspace(
                key="agentspace_rest",
                title="agentspace-grpc REST",
                wire="rest",
                baseline=_stacks.REST_FLOOR,
                grpc_target=g,
                http_url=h,
                token=t,
                name=n,
            ),
            _cache_hit_stack("rest", g, h),
            _stacks.Discovery(h, t, n),
        ]
        self.runs = [StackRun(stack, "transport") for stack in transport]
        if not self.settings.emulator:
            return
        emulated: list[_stacks.Stack] = []
        ready = self.emulator.ready
        for path, connector_key in (
            ("cache-hit", "cached"),
            ("refresh", "uncached"),
            ("authorization cache-hit", "authorization"),
        ):
            for wire in ("grpc", "rest"):
                label = "gRPC" if wire == "grpc" else "REST"
                emulated.append(
                    _stacks.Agentspace(
                        key=f"emulator_{path.replace('-', '_').replace(' ', '_')}_{wire}",
                        title=f"emulator {path}, {label}",
                        wire=wire,
                        baseline=f"agentspace_{wire}",
                        grpc_target=str(ready.get("grpc", "")),
                        http_url=str(ready.get("http", "")),
                        token=str(ready.get("token", "")),
                        name=str(ready.get(connector_key, "")),
                        users=[str(t) for t in ready.get("tokens", ())]
                        if path == "refresh"
                        else (),
                    )
                )
        for stack in emulated:
            run = StackRun(stack, "emulator")
            if self.emulator_status != "ok":
                run.fail("skipped", self.emulator_status)
            self.runs.append(run)

    def build_workload_stacks(self) -> None:
        """The workloads' stacks, on the constant-answer servers."""
        self.runs += [
            StackRun(stack, "workload", workload)
            for workload, stack in workload_stacks(self.grpc_target, self.http_url)
        ]

    async def start_stacks(self) -> None:
        """Open every stack and warm it up; a stack that cannot run is marked, not fatal."""
        warm = max(1, min(50, self.settings.size // 4))
        for run in self.runs:
            if run.status != "ok":
                self._step(f"{run.stack.title}: {run.status}")
                continue
            self._step(f"warming up {run.stack.title}")
            # Every user or connector of a workload once, so that every cache is warm.
            calls = max(warm, run.workload.distinct if run.workload else 1)
            try:
                await _bounded(run.stack.start(), 30.0)
                for _ in range(calls):
                    await _bounded(run.stack.call(), 30.0)
                inflight = self.settings.inflight
                await _bounded(
                    _measure.concurrent(run.stack.call_concurrent, 2 * inflight, inflight, 10.0),
                    60.0,
                )
            except _stacks.StackUnavailable as exc:
                run.fail("skipped", str(exc))
            except Exception as exc:
                run.fail("failed", f"warm-up: {_describe(exc)}")

    async def close_stacks(self) -> None:
        """Close every stack (errors ignored: the run is over)."""
        for run in self.runs:
            with contextlib.suppress(Exception):
                await _bounded(run.stack.aclose(), 10.0)

    async def stop_servers(self) -> None:
        """Stop every server process."""
        await asyncio.gather(
            self.grpc_server.stop(),
            self.http_server.stop(),
            self.emulator.stop(),
            return_exceptions=True,
        )

    # ---- the alternated measurements -------------------------------------------------

    def measurement_steps(self) -> int:
        """Samples the alternated loop takes (for the progress bar)."""
        return self.settings.repeats * len(MODES) * len(self.runs)

    def order(self, rep: int) -> list[StackRun]:
        """The stacks in the order of repetition ``rep``.

        The stacks of one wire and workload run back to back (so a stack and its base are
        seconds apart, and see the same host), rotated within their group from one
        repetition to the next, and the groups rotated within the wire; the wires take
        turns going first.
        """
        wires: list[list[StackRun]] = []
        for wire in ("grpc", "rest"):
            groups: list[list[StackRun]] = []
            for workload in (ONE_USER, *(w.key for w in WORKLOADS)):
                group = [
                    run
                    for run in self.runs
                    if run.stack.wire == wire and run.workload_key == workload
                ]
                if group:
                    shift = rep % len(group)
                    groups.append(group[shift:] + group[:shift])
            shift = rep % max(1, len(groups))
            wires.append([run for group in groups[shift:] + groups[:shift] for run in group])
        if rep % 2:
            wires.reverse()
        return [run for group in wires for run in group]

    async def measure(self) -> None:
        """Every repetition runs every stack in every mode, in the order of :meth:`order`."""
        s = self.settings
        for run in self.runs:
            run.samples = {mode: [] for mode in MODES}
        active = [run for run in self.runs if run.status == "ok"]
        cap = s.budget_s / max(1, s.repeats * len(MODES) * len(active))
        for rep in range(s.repeats):
            for mode in MODES:
                for run in self.order(rep):
                    sample: _measure.Sample | None = None
                    if run.status == "ok":
                        self._step(f"{rep + 1}/{s.repeats} {mode} {run.stack.title}")
                        sample = await self._sample(run, mode, cap)
                    else:
                        self._step(f"{run.stack.title}: {run.status}")
                    run.samples[mode].append(sample)

    async def _sample(self, run: StackRun, mode: str, cap: float) -> _measure.Sample | None:
        s = self.settings
        try:
            if run.group == "emulator":
                refreshes = await self._provider_refreshes()
            server = self._server_of(run)
            counted = run.group != "emulator"  # the constant servers count their RPCs
            if counted:
                served = await server.count()
            server_cpu = server.cpu_seconds()
            if mode == "sequential":
                coro = _measure.sequential(run.stack.call, s.size, cap)
            else:
                coro = _measure.concurrent(run.stack.call_concurrent, s.size, s.inflight, cap)
            sample = await _bounded(coro, cap * 3 + 30.0)
            server_cpu_after = server.cpu_seconds()
            if server_cpu is not None and server_cpu_after is not None and sample.wall_s > 0:
                busy = (server_cpu_after - server_cpu) / sample.wall_s
                run.server_busy.setdefault(mode, []).append(busy)
            if run.group == "emulator":
                counts = run.upstream.setdefault(mode, [0, 0])
                counts[0] += await self._provider_refreshes() - refreshes
                counts[1] += sample.calls
            if counted:
                counts = run.served.setdefault(mode, [0, 0])
                counts[0] += await server.count() - served
                counts[1] += sample.calls
        except Exception as exc:
            run.fail("failed", f"{mode}: {_describe(exc)}")
            return None
        return sample

    def _server_of(self, run: StackRun) -> ServerProcess:
        if run.group == "emulator":
            return self.emulator
        return self.grpc_server if run.stack.wire == "grpc" else self.http_server

    async def _provider_refreshes(self) -> int:
        """The emulator's built-in provider's refresh count (``GET /provider/stats``)."""
        import aiohttp

        url = f"{self.emulator.ready['http']}/provider/stats"
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(url) as response,
        ):
            response.raise_for_status()
            stats = await response.json()
        return int(stats["refreshes"])

    # ---- extras ------------------------------------------------------------------------

    async def single_flight(self) -> None:
        """1000 concurrent identical acquires through one client: RPCs counted at the server."""
        results: dict[str, Any] = {}
        for wire, server in (("grpc", self.grpc_server), ("rest", self.http_server)):
            for enabled in (True, False):
                key = f"{wire}_{'on' if enabled else 'off'}"
                self._step(f"single-flight {key}")
                try:
                    results[key] = await _bounded(self._single_flight(wire, server, enabled), 60.0)
                except _stacks.StackUnavailable as exc:
                    results[key] = {"status": "skipped", "reason": str(exc)}
                except Exception as exc:
                    results[key] = {"status": "failed", "reason": _describe(exc)}
        self.extras["single_flight"] = results

    def _run_of(self, key: str) -> StackRun | None:
        for run in self.runs:
            if run.stack.key == key:
                return run
        return None

    def cost_steps(self) -> int:
        """Samples :meth:`single_flight_cost`, :meth:`cache_miss_cost` and
        :meth:`tracing_cost` take (progress bar)."""
        return 3 * 2 * 3 * self.settings.repeats

    async def single_flight_cost(self) -> None:
        """Single-flight's bookkeeping when nothing is shared (sequential calls).

        Per wire, alternated within each repetition: the floor, the client with single-flight
        off (the transport runs' setting) and with it on (the default).
        """
        self.extras["single_flight_cost"] = await self._cost_against_off(
            "single-flight", {"single_flight": True}
        )

    async def cache_miss_cost(self) -> None:
        """A token cache's cost when it never helps: every lookup finds its entry expired (a
        clock that jumps 10,000 s per reading), so each call also stores its answer.

        Compared as :meth:`single_flight_cost` is, with the cache in place of single-flight.
        """
        clock = itertools.count(0.0, 10_000.0).__next__
        self.extras["cache_miss_cost"] = await self._cost_against_off(
            "cache miss", {"token_cache": {"clock": clock}}
        )

    async def tracing_cost(self) -> None:
        """OpenTelemetry's cost: the transport runs' client (no provider configured: no span
        is made) against the same client with SDK providers (:func:`_stacks.sdk_providers`).

        Compared as :meth:`single_flight_cost` is, with the providers in place of single-flight.
        """
        self.extras["tracing_cost"] = await self._cost_against_off("tracing", {"telemetry": True})

    async def _cost_against_off(self, what: str, variant: dict[str, Any]) -> dict[str, Any]:
        """Sequential CPU per call, per wire, alternated within each repetition: the floor, the
        transport runs' client (``off``) and the same client with ``variant``'s settings
        (``on``)."""
        s = self.settings
        active = sum(1 for run in self.runs if run.status == "ok")
        # The transport runs' sample length: the costs compared are a few percent, and
        # shorter samples would drown them in this host's noise.
        cap = s.budget_s / max(1, s.repeats * len(MODES) * active)
        results: dict[str, Any] = {}
        for wire, floor_key in (("grpc", _stacks.GRPC_FLOOR), ("rest", _stacks.REST_FLOOR)):
            floor, off = self._run_of(floor_key), self._run_of(f"agentspace_{wire}")
            if floor is None or off is None or floor.status != "ok" or off.status != "ok":
                results[wire] = {"status": "skipped", "reason": "a stack it needs did not run"}
                self._step(f"{what} cost {wire}: skipped", 3 * s.repeats)
                continue
            on = _stacks.Agentspace(
                key=f"agentspace_{wire}_{what.replace(' ', '_').replace('-', '_')}",
                title=f"{off.stack.title} ({what})",
                wire=off.stack.wire,
                baseline=floor_key,
                grpc_target=self.grpc_target,
                http_url=self.http_url,
                token=BENCH_TOKEN,
                name=CONNECTOR,
                **variant,
            )
            cpu: dict[str, list[float]] = {"floor": [], "off": [], "on": []}
            try:
                await on.start()
                for _ in range(max(1, min(50, s.size // 4))):
                    await on.call()
                stacks = [("floor", floor.stack), ("off", off.stack), ("on", on)]
                for rep in range(s.repeats):
                    shift = rep % len(stacks)
                    for label, stack in stacks[shift:] + stacks[:shift]:
                        self._step(f"{what} cost {wire} {label}")
                        sample = await _bounded(
                            _measure.sequential(stack.call, s.size, cap), cap * 3 + 30.0
                        )
                        cpu[label].append(sample.cpu_us_per_call)
            except Exception as exc:
                results[wire] = {"status": "failed", "reason": _describe(exc)}
                continue
            finally:
                with contextlib.suppress(Exception):
                    await on.aclose()
            results[wire] = {
                "status": "ok",
                "floor": floor.stack.title,
                "floor_cpu_us_per_call": _measure.spread(cpu["floor"]),
                "off_cpu_us_per_call": _measure.spread(cpu["off"]),
                "on_cpu_us_per_call": _measure.spread(cpu["on"]),
                "on_minus_off_us": _measure.spread(
                    [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
                ),
                "on_vs_off": _measure.spread(
                    [a / b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
                ),
                "off_vs_floor": _measure.spread(
                    [a / b for a, b in zip(cpu["off"], cpu["floor"], strict=True)]
                ),
                "on_vs_floor": _measure.spread(
                    [a / b for a, b in zip(cpu["on"], cpu["floor"], strict=True)]
                ),
            }
        return results

    async def _single_flight(
        self, wire: str, server: ServerProcess, enabled: bool
    ) -> dict[str, Any]:
        client = _stacks.new_client(
            transport=wire,
            credentials=BENCH_TOKEN,
            endpoint=self.grpc_target,
            rest_endpoint=self.http_url,
            insecure=True,
            single_flight=enabled,
        )
        async with client:
            await client.acquire_access_token(CONNECTOR)  # connect first
            before = await server.count()
            began = time.perf_counter()
            tokens = await asyncio.gather(
                *(client.acquire_access_token(CONNECTOR) for _ in range(SINGLE_FLIGHT_CALLS))
            )
            elapsed = time.perf_counter() - began
            rpcs = await server.count() - before
        if any(not token.access_token for token in tokens):
            raise _stacks.CallFailed("a caller got no access token")
        return {
            "status": "ok",
            "single_flight": enabled,
            "callers": SINGLE_FLIGHT_CALLS,
            "rpcs": rpcs,
            "elapsed_ms": round(elapsed * 1e3, 2),
        }

    async def fallback(self) -> None:
        """First call in ``auto`` mode with the gRPC port closed, against a REST-only first call."""
        repeats = max(3, self.settings.repeats)
        auto_first: list[float] = []
        auto_second: list[float] = []
        rest_first: list[float] = []
        result: dict[str, Any] = {"status": "ok", "repeats": repeats}
        # The client logs a warning when it falls back; collect those instead of printing
        # them through the progress bar (one is expected per fresh client).
        notices = _Notices()
        logger = logging.getLogger("agentspace_grpc")
        logger.addHandler(notices)
        try:
            for _ in range(repeats):
                self._step("fallback cost")
                port = _closed_port()
                before = await self.http_server.count()
                first, second = await _bounded(self._timed_calls("auto", f"127.0.0.1:{port}"), 60.0)
                served = await self.http_server.count() - before
                if served != 2:
                    raise _stacks.CallFailed(f"REST served {served} of the 2 calls after fallback")
                auto_first.append(first)
                auto_second.append(second)
                rest_only, _ = await _bounded(self._timed_calls("rest", self.grpc_target), 60.0)
                rest_first.append(rest_only)
        except _stacks.StackUnavailable as exc:
            result = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:
            result = {"status": "failed", "reason": _describe(exc)}
        else:
            result["fallback_warnings_logged"] = notices.warnings
            overhead = [a - r for a, r in zip(auto_first, rest_first, strict=True)]
            result.update(
                {
                    "auto_first_call_ms": _measure.spread(auto_first),
                    "auto_second_call_ms": _measure.spread(auto_second),
                    "rest_first_call_ms": _measure.spread(rest_first),
                    "fallback_overhead_ms": _measure.spread(overhead),
                }
            )
        finally:
            logger.removeHandler(notices)
        self.extras["fallback"] = result

    async def _timed_calls(self, transport: str, endpoint: str) -> tuple[float, float]:
        """Milliseconds of a fresh client's first and second calls."""
        client = _stacks.new_client(
            transport=transport,
            credentials=BENCH_TOKEN,
            endpoint=endpoint,
            rest_endpoint=self.http_url,
            insecure=True,
        )
        async with client:
            began = time.perf_counter()
            await client.acquire_access_token(CONNECTOR)
            first = time.perf_counter() - began
            began = time.perf_counter()
            await client.acquire_access_token(CONNECTOR)
            second = time.perf_counter() - began
        return first * 1e3, second * 1e3

    # ---- results ------------------------------------------------------------------------

    def stack_results(self) -> dict[str, Any]:
        """Per stack: status and, per mode, every metric's median, spread and values."""
        out: dict[str, Any] = {}
        for run in self.runs:
            modes: dict[str, Any] = {}
            for mode, samples in run.samples.items():
                if run.status != "ok":
                    continue
                modes[mode] = {
                    metric: _measure.spread(
                        [float("nan") if x is None else x.figure(metric) for x in samples]
                    )
                    for metric in _measure.METRICS
                }
                modes[mode]["calls"] = [0 if x is None else x.calls for x in samples]
                if run.server_busy.get(mode):
                    modes[mode]["server_busy"] = _measure.spread(run.server_busy[mode])
                refreshes, calls = run.upstream.get(mode, (0, 0))
                if calls:
                    modes[mode]["upstream_refreshes_per_call"] = round(refreshes / calls, 3)
                rpcs, calls = run.served.get(mode, (0, 0))
                if calls:
                    modes[mode]["rpcs_per_call"] = rpcs / calls
            out[run.stack.key] = {
                "title": run.stack.title,
                "group": run.group,
                "workload": run.workload_key,
                "wire": run.stack.wire,
                "baseline": run.stack.baseline,
                "status": run.status,
                "reason": run.reason,
                "modes": modes,
            }
        return out


async def run(settings: Settings, progress_stream: Any = None) -> dict[str, Any]:
    """Run the benchmark and return every figure (see :mod:`._report` for the layout)."""
    started = time.time()
    load_before = os.getloadavg()
    bench = Bench(settings)
    extras_steps = 4 + max(3, settings.repeats)
    # The number of runs is known once the stacks are built; start with an estimate.
    progress = Progress(
        2 + 10 * (1 + len(MODES) * settings.repeats) + extras_steps, stream=progress_stream
    )
    bench.progress = progress
    try:
        progress.show("starting servers")
        await bench.start_servers()
        bench.build_stacks()
        bench.build_workload_stacks()
        progress.total = (
            1 + len(bench.runs) + bench.measurement_steps() + bench.cost_steps() + extras_steps
        )
        progress.step("servers up")
        await bench.start_stacks()
        await bench.measure()
        await bench.single_flight()
        await bench.single_flight_cost()
        await bench.cache_miss_cost()
        await bench.tracing_cost()
        await bench.fallback()
    finally:
        progress.show("closing")
        await bench.close_stacks()
        await bench.stop_servers()
        progress.close()
    return {
        "schema": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        **environment(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "server_cpus": None if bench.server_cpus is None else sorted(bench.server_cpus),
        "argv": sys.argv,
        "emulator": bench.emulator_status,
        "workloads": {
            w.key: {
                "title": w.label,
                "what": w.what,
                "users": len(w.users) or 1,
                "connectors": len(w.names) or 1,
                "single_flight": True,
            }
            for w in WORKLOADS
        },
        "stacks": bench.stack_results(),
        **bench.extras,
    }


def run_sync(settings: Settings, progress_stream: Any = None) -> dict[str, Any]:
    """:func:`run` on a fresh event loop."""
    return asyncio.run(run(settings, progress_stream))
