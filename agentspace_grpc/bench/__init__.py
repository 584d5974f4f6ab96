"""The benchmark harness behind ``agentspace-grpc bench`` (``make bench``).

One client process measures every stack against servers that run in separate processes on
127.0.0.1 (port 0): a constant-answer ``grpc.aio`` server and a constant-answer aiohttp server,
so that the server is the same for every stack, and the emulator for the end-to-end runs.
The stacks are alternated inside each repetition, because the host steals CPU unpredictably;
the report therefore leans on ratios computed within one repetition.

Modules: :mod:`._servers` (the constant-answer servers, run as ``python -m``),
:mod:`._procs` (starting them and talking to them), :mod:`._stacks` (the clients measured),
:mod:`._measure` (the timing loops and statistics), :mod:`._report` (table, JSON, chart,
targets), :mod:`._run` (the whole run) and :mod:`._cli` (the subcommand).
"""

from __future__ import annotations
