"""The benchmark harness end to end at a tiny size: every stack measured, files written.

No timing assertions: the figures only have to exist and be positive.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import pytest

from agentspace_grpc import cli
from agentspace_grpc.bench import _run
from agentspace_grpc.bench._common import BENCH_TOKEN, CONNECTOR
from agentspace_grpc.bench._procs import ServerProcess
from tests._servers import serve

STACKS = {
    "grpc_stub",
    "agentspace_grpc",
    "gapic",
    "aiohttp_raw",
    "agentspace_rest",
    "discovery",
    "agentspace_grpc_cache_hit",
    "agentspace_rest_cache_hit",
    "emulator_cache_hit_grpc",
    "emulator_cache_hit_rest",
    "emulator_refresh_grpc",
    "emulator_refresh_rest",
    "emulator_authorization_cache_hit_grpc",
    "emulator_authorization_cache_hit_rest",
    *(
        f"{stack}_{workload}"
        for stack in ("grpc_stub", "agentspace_grpc", "aiohttp_raw", "agentspace_rest")
        for workload in ("many_users", "many_connectors")
    ),
}


def thread_cpus(pid: int | str = "self") -> dict[int, str]:
    """Each thread of a process and the CPUs it may run on (Linux /proc)."""
    cpus = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    cpus[int(task.name)] = line.split(":", 1)[1].strip()
    return cpus


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(
            [
                "bench",
                "--quick",
                "--size",
                "24",
                "--repeats",
                "2",
                "--budget",
                "4",
                "--out",
                str(out),
            ]
        )
    return code, stdout.getvalue(), out


def test_exit_status_and_files(bench_run: tuple[int, str, Path]) -> None:
    code, _, out = bench_run
    assert code == 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "bench.json").read_text())
    for name in ("python", "grpcio", "protobuf", "protobuf_backend", "aiohttp"):
        assert results["versions"][name]
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["cpu_model"]


def test_every_stack_has_figures(bench_run: tuple[int, str, Path]) -> None:
    _, _, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    assert set(results["stacks"]) == STACKS
    for key, stack in results["stacks"].items():
        assert stack["status"] == "ok", f"{key}: {stack['reason']}"
        for mode in ("sequential", "concurrent"):
            figures = stack["modes"][mode]
            for metric in ("calls_per_s", "cpu_us_per_call", "p50_ms", "p99_ms"):
                values = figures[metric]["values"]
                assert len(values) == 2, (key, mode, metric)
                assert all(v is not None and v > 0 and math.isfinite(v) for v in values)
            assert all(calls > 0 for calls in figures["calls"])
            if stack["baseline"]:
                assert figures["ratio_to_baseline"]["cpu_us_per_call"]["median"] > 0
            if key.startswith("emulator") and "cache_hit" in key:  # served by the emulator cache
                assert figures["upstream_refreshes_per_call"] == 0, key


def test_extras_and_targets(bench_run: tuple[int, str, Path]) -> None:
    _, _, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    for key in ("grpc_on", "grpc_off", "rest_on", "rest_off"):
        entry = results["single_flight"][key]
        assert entry["status"] == "ok", entry
        assert entry["rpcs"] >= 1
    # Without single-flight every caller's RPC reaches the server.
    assert results["single_flight"]["grpc_off"]["rpcs"] == 1000
    assert results["single_flight"]["rest_off"]["rpcs"] == 1000
    assert results["fallback"]["status"] == "ok", results["fallback"]
    assert results["fallback"]["auto_first_call_ms"]["median"] > 0
    assert all(t["result"] in ("pass", "miss") for t in results["targets"]), results["targets"]


def test_the_token_cache_hit_and_miss_paths_are_reported(
    bench_run: tuple[int, str, Path],
) -> None:
    _, table, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    for wire in ("grpc", "rest"):
        for figures in results["stacks"][f"agentspace_{wire}_cache_hit"]["modes"].values():
            assert figures["rpcs_per_call"] == 0.0  # counted at the server
        cost = results["cache_miss_cost"][wire]
        assert cost["status"] == "ok", cost
        assert cost["on_vs_off"]["median"] > 0
        # Every call missed: the server answered each one.
        assert results["stacks"][f"agentspace_{wire}"]["modes"]["sequential"]["rpcs_per_call"] == 1
    names = [t["target"] for t in results["targets"] if "token cache" in t["target"]]
    assert len(names) == 8, names
    assert "## Token cache, miss path" in table
    assert "token cache hit (sequential) 0.000" in table


def test_tracing_on_and_off_are_reported(bench_run: tuple[int, str, Path]) -> None:
    _, table, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    for wire in ("grpc", "rest"):
        cost = results["tracing_cost"][wire]
        assert cost["status"] == "ok", cost
        for figure in ("off_cpu_us_per_call", "on_cpu_us_per_call", "on_vs_off"):
            assert cost[figure]["median"] > 0, figure
    assert "## Tracing (sequential calls" in table
    assert "| client, no provider (no span made) | client, SDK providers |" in table


def test_many_users_and_many_connectors_run_and_report(
    bench_run: tuple[int, str, Path],
) -> None:
    _, table, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    workloads = results["workloads"]
    assert workloads["many_users"]["users"] >= 1000
    assert workloads["many_connectors"]["connectors"] >= 100
    assert "## Many users, many connectors" in table
    for workload, about in workloads.items():
        assert about["single_flight"] is True
        assert f"- {about['title']}: {about['what']}." in table
        for wire, base in (("grpc", "grpc_stub"), ("rest", "aiohttp_raw")):
            stack = results["stacks"][f"agentspace_{wire}_{workload}"]
            assert stack["workload"] == workload
            assert stack["baseline"] == f"{base}_{workload}"
            for key in (f"agentspace_{wire}_{workload}", f"{base}_{workload}"):
                for figures in results["stacks"][key]["modes"].values():
                    # The constant servers took every user and connector, and nothing was shared.
                    assert figures["rpcs_per_call"] == 1.0, key
        targets = [t for t in results["targets"] if f"({about['title']}, " in t["target"]]
        assert len(targets) == 4, targets
        assert all(t["result"] in ("pass", "miss") for t in targets), targets
    assert "Every call of every stack above reached the server as an RPC of its own." in table


async def test_every_workload_stack_sends_each_user_and_connector() -> None:
    """The floors do the client's work: the same distinct bearer tokens and connector names."""
    async with serve() as servers:
        stacks = _run.workload_stacks(servers.grpc_target, servers.rest_url)
        assert len(stacks) == 4 * len(_run.WORKLOADS)
        for workload, stack in stacks:
            users = workload.users or (BENCH_TOKEN,)
            names = workload.names or (CONNECTOR,)
            first = len(servers.service.seen)
            await stack.start()
            try:
                for _ in range(workload.distinct):
                    await stack.call()
            finally:
                await stack.aclose()
            seen = servers.service.seen[first:]
            sent = {(call.headers["authorization"], call.request.name) for call in seen}
            assert len(seen) == len(sent) == workload.distinct, stack.title
            assert sent == {(f"Bearer {user}", name) for user in users for name in names}


def test_table_names_every_stack_and_target(bench_run: tuple[int, str, Path]) -> None:
    _, table, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    for stack in results["stacks"].values():
        assert f"| {stack['title']} |" in table
    for target in results["targets"]:
        assert target["target"] in table
    assert str(out / "bench.json") in table
    assert (out / "bench.md").read_text() in table


def test_bad_arguments_fail_before_any_server_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--repeats", "0"])
    assert exc.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_the_servers_keep_to_one_cpu(bench_run: tuple[int, str, Path]) -> None:
    _, table, out = bench_run
    results = json.loads((out / "bench.json").read_text())
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        assert results["server_cpus"] is None
        assert "shared every CPU" in table
        return
    assert results["server_cpus"] == [max(allowed)]
    assert f"The servers kept to CPU {max(allowed)}; the client could use every CPU." in table


async def test_a_server_process_keeps_to_the_cpus_it_is_given() -> None:
    last = max(os.sched_getaffinity(0))
    server = ServerProcess.module("agentspace_grpc.bench._servers", "grpc", name="t", cpus={last})
    async with server:
        assert server._proc is not None
        cpus = thread_cpus(server._proc.pid)
    # Every thread, grpc's own included (they start after the process pinned itself).
    assert len(cpus) > 1
    assert set(cpus.values()) == {str(last)}
