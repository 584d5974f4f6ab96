"""Memory under cancellation: 50,000 acquires per wire, 30% of them cancelled mid-flight,
against an emulator process (docs/failure-modes.md 3; grpc/grpc#43360, #36117).

Each acquire is its own RPC (client single-flight off), up to 100 in flight. A seeded 30% of
the calls get cancelled 0-4 ms after they start, which lands while the RPC is on the wire (a
cancel that comes after the answer does nothing and is not counted). After two warm-up
batches of 5,000, the resident memory of this process may grow by at most 16 MiB over the
eight later batches (a leak of one object per cancelled call shows as steady growth; RSS
also moves with the allocator, hence the wide bound; over gRPC see ``RSS_BOUND``), and after
every batch the asyncio tasks are back to their starting count; after ``aclose()`` so are
the open file descriptors. The figures are printed (``pytest -s``) for RELIABILITY.md.

``AGENTSPACE_RELIABILITY_CALLS`` lowers the number of calls while developing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentspace_grpc import DataConnectorClient
from tests._emulator_helpers import CONNECTOR, connect_user, start_emulator
from tests._reliability import (
    Figures,
    Resources,
    assert_released,
    fd_count,
    rss_bytes,
)

CALLS = int(os.environ.get("AGENTSPACE_RELIABILITY_CALLS", "50000"))
BATCH = max(CALLS // 10, 100)
WARM_UP_BATCHES = 2
IN_FLIGHT = 100
CANCEL_SHARE = 0.3
MIB = 1024 * 1024
# grpcio 1.85 leaks native memory for every RPC cancelled while in flight (grpc/grpc#43360,
# fix proposed in grpc/grpc#43361; about 1.5 KiB per cancelled call here) and the client
# cancels the RPC when its caller cancels, so over gRPC the resident memory grows without
# bound: that bound is left out until the client avoids it or grpcio is fixed (see
# RELIABILITY.md, "Known gaps"); tasks, descriptors and outcomes are still checked.
RSS_BOUND = {"rest": 16 * MIB, "grpc": None}


@dataclass
class Counts:
    calls: int = 0
    ok: int = 0
    cancelled_mid_flight: int = 0


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_cancelled_calls_leave_memory_tasks_and_fds_flat(
    tmp_path: Path, transport: str
) -> None:
    emulator = await start_emulator(tmp_path / "data", log_dir=tmp_path)
    try:
        token = await connect_user(emulator.http, "memory@example.com")
        kwargs: dict[str, Any] = {
            "transport": transport,
            "endpoint": emulator.grpc,
            "rest_endpoint": emulator.http,
            "credentials": token,
            "single_flight": False,
        }
        async with DataConnectorClient(**kwargs) as warm:
            await warm.acquire_access_token(CONNECTOR)  # the libraries' one-time setup
        baseline = await assert_released(Resources.now())
        rng = random.Random(43360)
        loop = asyncio.get_running_loop()
        counts = Counts()
        failures: list[BaseException] = []
        rss: list[int] = []
        client = DataConnectorClient(**kwargs)
        slots = asyncio.Semaphore(IN_FLIGHT)

        def cancel(task: asyncio.Future[Any]) -> None:
            if task.cancel():  # False: the call had already finished
                counts.cancelled_mid_flight += 1

        async def one() -> None:
            async with slots:
                task = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
                if rng.random() < CANCEL_SHARE:
                    loop.call_later(rng.uniform(0, 0.004), cancel, task)
                try:
                    await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
                except Exception as exc:
                    failures.append(exc)
                else:
                    counts.ok += 1

        tasks_at_start = len(asyncio.all_tasks())
        for _ in range(CALLS // BATCH):
            await asyncio.gather(*(one() for _ in range(BATCH)))
            counts.calls += BATCH
            await asyncio.sleep(0.05)  # the last cancellation callbacks run
            gc.collect()
            rss.append(rss_bytes())
            assert not failures, failures[:3]
            assert len(asyncio.all_tasks()) == tasks_at_start
        fds_while_open = fd_count()
        await client.aclose()
        await assert_released(baseline)
    finally:
        assert await emulator.stop() == 0
    later = rss[WARM_UP_BATCHES - 1 :]
    growth = max(later) - later[0]
    Figures(
        f"memory, {transport}, {CALLS} acquires, 30% cancelled",
        {
            **vars(counts),
            "rss_after_warm_up_mib": round(later[0] / MIB, 1),
            "rss_growth_later_batches_kib": round(growth / 1024),
            "rss_per_batch_mib": [round(value / MIB, 1) for value in rss],
            "fds_at_start": len(baseline.fds),
            "fds_while_open": fds_while_open,
        },
    ).show()
    assert counts.calls == CALLS
    assert counts.cancelled_mid_flight >= 0.2 * CALLS  # most of the 30% hit calls in flight
    assert counts.ok + counts.cancelled_mid_flight == CALLS
    bound = RSS_BOUND[transport]
    if bound is not None:
        assert growth <= bound, [round(value / MIB, 1) for value in rss]
