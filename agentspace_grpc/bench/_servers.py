"""Constant-answer servers for the transport-cost runs, each in its own process.

``python -m agentspace_grpc.bench._servers grpc|http`` binds 127.0.0.1 on port 0, prints one
JSON line ``{"port": N}`` on stdout when it is ready, then reads commands from stdin: ``count``
prints ``{"calls": N}`` (the AcquireAccessToken calls answered so far, which is how the harness
counts the RPCs that reached the server); end of input stops the server, exit status 0.

Both servers are the emulator's own gRPC and REST fronts with a constant handler: it answers
AcquireAccessToken with the same fixed response, after checking that the request is well formed
and carries the headers every stack must send (authorization, routing header, api-client
header), so a stack that skipped one fails instead of looking cheap; any other RPC is
UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Callable, Sequence

import grpc
from aiohttp import web
from google.protobuf import message
from google.rpc import code_pb2

from agentspace_grpc import _proto
from agentspace_grpc._wire import ROWS
from agentspace_grpc.bench._common import (
    ANSWER_SCOPES,
    ANSWER_TOKEN,
    CONNECTOR,
    REQUIRED_HEADERS,
)
from agentspace_grpc.bench._procs import pin_from_environment
from agentspace_grpc.emulator._call import Call
from agentspace_grpc.emulator._errors import ServiceError, invalid_argument
from agentspace_grpc.emulator._grpc import add_api
from agentspace_grpc.emulator._rest import api_application

_ANSWER = _proto.AcquireAccessTokenResponse(
    access_token=ANSWER_TOKEN,
    refresh_token_info=_proto.RefreshTokenInfo(name=CONNECTOR, scopes=ANSWER_SCOPES),
)
_ROW = ROWS["AcquireAccessToken"]


class _Constant:
    """The handler behind both fronts: AcquireAccessToken calls answered, counted."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, call: Call) -> message.Message:
        if call.row is not _ROW:
            raise ServiceError(code_pb2.UNIMPLEMENTED, f"bench server answers only {_ROW.name}")
        self.calls += 1
        request = call.request
        missing = [h for h in REQUIRED_HEADERS if h not in call.headers]
        if missing or not getattr(request, "name", ""):
            raise invalid_argument(f"bench server: missing {', '.join(missing) or 'name'}")
        return _ANSWER


async def _serve_grpc(handler: _Constant) -> tuple[int, grpc.aio.Server]:
    server = grpc.aio.server()
    add_api(server, handler)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port, server


async def _serve_http(handler: _Constant) -> tuple[int, web.AppRunner]:
    runner = web.AppRunner(api_application(handler), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return port, runner


async def serve_commands(count: Callable[[], int] | None = None) -> None:
    """Answer ``count`` on stdin until end of input (the parent's stop signal)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"count" and count is not None:
            print(json.dumps({"calls": count()}), flush=True)


async def _main(wire: str) -> None:
    counter = _Constant()
    if wire == "grpc":
        port, server = await _serve_grpc(counter)
        print(json.dumps({"port": port}), flush=True)
        try:
            await serve_commands(lambda: counter.calls)
        finally:
            await server.stop(None)
    else:
        port, runner = await _serve_http(counter)
        print(json.dumps({"port": port}), flush=True)
        try:
            await serve_commands(lambda: counter.calls)
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one constant-answer server until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m agentspace_grpc.bench._servers")
    parser.add_argument("wire", choices=("grpc", "http"))
    args = parser.parse_args(argv)
    pin_from_environment()
    asyncio.run(_main(args.wire))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
