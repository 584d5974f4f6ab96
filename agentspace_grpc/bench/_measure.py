"""Timing loops and the statistics the report is made of.

A sample is one run of one stack in one mode: ``calls`` calls made back to back (sequential)
or by ``inflight`` workers sharing the count (concurrent). Client CPU is the whole process's
CPU time (``time.process_time``: every thread, gRPC's own included) over the sample, divided by
the calls. A sample ends after ``size`` calls or ``max_seconds``, whichever comes first, which
keeps the run's time bounded whatever the host does.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement of one stack in one mode."""

    calls: int
    wall_s: float
    cpu_s: float
    p50_ms: float
    p99_ms: float

    @property
    def calls_per_s(self) -> float:
        """Completed calls per wall-clock second."""
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        """Client process CPU microseconds per call."""
        return self.cpu_s * 1e6 / self.calls if self.calls else 0.0

    def figure(self, metric: str) -> float:
        """One of ``calls_per_s``, ``cpu_us_per_call``, ``p50_ms``, ``p99_ms``."""
        value: float = getattr(self, metric)
        return value


METRICS = ("calls_per_s", "cpu_us_per_call", "p50_ms", "p99_ms")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _sample(latencies: list[float], wall: float, cpu: float) -> Sample:
    latencies.sort()
    return Sample(
        calls=len(latencies),
        wall_s=wall,
        cpu_s=cpu,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
    )


async def sequential(call: Call, size: int, max_seconds: float) -> Sample:
    """``size`` calls one after the other (fewer if ``max_seconds`` runs out)."""
    gc.collect()
    clock = time.perf_counter
    latencies: list[float] = []
    append = latencies.append
    cpu0 = time.process_time()
    start = clock()
    stop_at = start + max_seconds
    for _ in range(size):
        began = clock()
        await call()
        ended = clock()
        append(ended - began)
        if ended > stop_at:
            break
    wall = clock() - start
    return _sample(latencies, wall, time.process_time() - cpu0)


async def concurrent(call: Call, size: int, inflight: int, max_seconds: float) -> Sample:
    """``size`` calls made by ``inflight`` workers (fewer if ``max_seconds`` runs out)."""
    gc.collect()
    clock = time.perf_counter
    latencies: list[float] = []
    append = latencies.append
    left = size
    stop_at = 0.0

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = clock()
            await call()
            ended = clock()
            append(ended - began)
            if ended > stop_at:
                left = 0

    cpu0 = time.process_time()
    start = clock()
    stop_at = start + max_seconds
    async with asyncio.TaskGroup() as group:
        for _ in range(min(inflight, size)):
            group.create_task(worker())
    wall = clock() - start
    return _sample(latencies, wall, time.process_time() - cpu0)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated figures (and the figures themselves)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "values": list(values)}
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "values": [round(v, 4) for v in values],
    }
